package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"log/slog"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// This file holds the waiting rules in one place that every caller reads:
// which refusals say "not yet" (wait, and never count them for the
// breaker), which say "a proxy with nothing behind it" (retry soon, and
// count them), how long a call may wait for either, and the waits
// themselves. Every wait here happens before anything of the call was sent
// to the server: a statement is never run twice because of them.
//
// The callers:
//   - connect (reconnect.go) retries a refused connection attempt: a "not
//     yet" within the caller's deadline, with backoff and full jitter, and
//     not within connect_retries; a proxy's close with a short backoff;
//   - the breaker (breaker.go) does not count a "not yet", and a call that
//     finds it open waits for its next probe when that is due soon;
//   - gate (breaker.go) holds a statement that PgBouncer refused before
//     forwarding it until PgBouncer serves again (awaitServing), before
//     database/sql's immediate retry.

// refusal is what a failure says about waiting.
type refusal uint8

const (
	refusalNone        refusal = iota // anything else: the usual rules (connect_retries, the breaker)
	refusalNotYet                     // "not yet" or "busy": the server, the pooler or a standby answered; nothing ran
	refusalProxyClosed                // a proxy accepted the connection and closed it before any server spoke
)

// refusalOf sorts err, the error of a connection attempt or of a statement
// PgBouncer refused, by the waiting rules.
func refusalOf(err error) refusal {
	switch {
	case err == nil:
		return refusalNone
	case notYet(err):
		return refusalNotYet
	case proxyClosed(err):
		return refusalProxyClosed
	}
	return refusalNone
}

// proxyClosed reports a connection attempt that reached something that
// accepted the TCP connection and then closed it (EOF or reset) before a
// server sent its first message: HAProxy with no server UP, a fault proxy
// in front of a stopped server. That cannot be told from a long outage, so
// it counts for the breaker, but it is also what a proxy does for the
// moment of a switchover, so a call retries it soon (proxyBackoff).
func proxyClosed(err error) bool {
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) || isTimeout(err) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return false // a server spoke
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// heldConnect reports a connection attempt that something accepted and then
// held until it timed out: not silence (silentFailure), a proxy waiting for
// a server.
func heldConnect(err error) bool { return isTimeout(err) && !silentFailure(err) }

// silentFailure reports a timeout that says the server's path went silent:
// the host monitor's verdict (a HostSilentError), a reuse check's ping that
// went unanswered, a dial (TCP) that timed out. A connection attempt that
// something accepted and then held until it timed out is not one: HAProxy
// holds connections so (retrying a server that refuses, queueing while none
// is UP) until it routes to a new primary. While the server is silent, a
// call finding the breaker open fails at once rather than waiting for a
// probe (breaker.go).
func silentFailure(err error) bool {
	if hse := (*HostSilentError)(nil); errors.As(err, &hse) {
		return true
	}
	if !isTimeout(err) {
		return false
	}
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) {
		return true // a reuse check's ping
	}
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// breakerConnectClass is what a failed connection attempt of class means to
// the breaker: a "not yet" (notYet) is no outage. pgx's target_session_attrs
// rejection is one: counted, five of them opened the breaker while no
// server accepted writes during a change of primary, and it went on
// refusing writes after the new primary did. So are a full server (53300:
// counted, three pools filling max_connections opened the breaker of the
// third, which then refused the calls its one working connection could
// serve) and PgBouncer's refusals. Such attempts are still retried.
func breakerConnectClass(class errClass, err error) errClass {
	if class == classGone && notYet(err) {
		return classOther
	}
	return class
}

// How long a call waits for a refusal to clear.
const (
	// notYetCeiling bounds the waits of a call without a deadline
	// (database/sql opens connections for queued requests with none).
	notYetCeiling = 10 * time.Second
	// headroomMax is the most of a call's time left for its statement
	// after a wait: a tenth of what remained when the wait began, at most
	// this much.
	headroomMax = 100 * time.Millisecond
	// proxyBackoff and proxyBackoffMax pace the retries of a connection a
	// proxy closed: soon, with full jitter, within the call's deadline.
	proxyBackoff    = 10 * time.Millisecond
	proxyBackoffMax = 100 * time.Millisecond
	// proxyRetryFor bounds how long one call retries connections a proxy
	// closes: as long as the breaker needs to open on them (breakerMinSpan;
	// it then stops the retries itself), also before the first working
	// connection and with breaker=off, when nothing else would stop them.
	proxyRetryFor = breakerMinSpan
	// servingBackoffMax caps the pause between two checks of whether
	// PgBouncer serves again (awaitServing).
	servingBackoffMax = 200 * time.Millisecond
	// maxConnecting caps the connection attempts of one Connector under
	// way at once (pgx issue 1780): a recovery is not a connection storm.
	maxConnecting = 8
)

// waitLimit returns the latest moment a wait of a call begun at start may
// end: its deadline less headroom for the statement, or notYetCeiling after
// start without a deadline.
func waitLimit(ctx context.Context, start time.Time) time.Time {
	dl, ok := ctx.Deadline()
	if !ok {
		return start.Add(notYetCeiling)
	}
	return dl.Add(-min(headroomMax, dl.Sub(start)/10))
}

// errConnectorClosed ends a wait when the Connector is closed.
var errConnectorClosed = errors.New("pgresilient: the connector was closed while the call waited")

// sleep waits d, unless ctx ends or the Connector is closed first.
func (c *Connector) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-c.life.Done():
		return errConnectorClosed
	case <-t.C:
		return nil
	}
}

// attemptSlot takes one of the Connector's maxConnecting slots for a
// connection attempt, waiting within ctx; release gives it back.
func (c *Connector) attemptSlot(ctx context.Context) (release func(), err error) {
	select {
	case c.connecting <- struct{}{}:
		return c.releaseSlot, nil
	default:
	}
	c.stats.attemptWaits.Add(1)
	select {
	case c.connecting <- struct{}{}:
		return c.releaseSlot, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.life.Done():
		return nil, errConnectorClosed
	}
}

func (c *Connector) releaseSlot() { <-c.connecting }

// A call waiting out a "not yet" at connect is better served by a pooled
// connection that comes free meanwhile (a full server: the pool's own
// connections work). database/sql cannot hand it one while it is in
// Connect, so the wait ends when one of the Connector's connections goes
// back to the pool, or does not begin when one is there already (it came
// back after database/sql looked), with a ConnectError that matches driver.ErrBadConn
// (nothing was sent): database/sql takes a pooled connection on its next
// try. Each call gets this once per try of database/sql's (idleReleaseMax):
// on its last try, which always dials, the caller gets the refusal then, as
// raw pgx's caller would at once, and tries again while the connection is
// free. With 2 (the last try waiting out its deadline instead), the pool of
// 1 connection in TestAvailabilityServerFull served far fewer calls than raw
// pgx's.
const idleReleaseMax = 3

// broadcast wakes every goroutine waiting on it: its channel is closed,
// and replaced, by fire. While nobody waits, fire is one atomic load.
type broadcast struct {
	waiters atomic.Int32
	ch      atomic.Pointer[chan struct{}]
}

func (s *broadcast) init() {
	ch := make(chan struct{})
	s.ch.Store(&ch)
}

// wait returns the channel to wait on, and counts a waiter until done.
func (s *broadcast) wait() (<-chan struct{}, func()) {
	s.waiters.Add(1)
	return *s.ch.Load(), func() { s.waiters.Add(-1) }
}

// current returns the channel to wait on next, for a waiter counted already.
func (s *broadcast) current() <-chan struct{} { return *s.ch.Load() }

// fire wakes the goroutines waiting.
func (s *broadcast) fire() {
	if s.waiters.Load() == 0 {
		return
	}
	ch := make(chan struct{})
	if old := s.ch.Swap(&ch); old != nil {
		close(*old)
	}
}

// idleSignal fires when a connection goes back to the pool while calls wait
// out a "not yet"; it also counts the connections in the pool (idle), so
// that a call whose refusal comes while one waits there takes it too, not
// only a call already waiting when it came back.
type idleSignal struct {
	broadcast
	idle atomic.Int32 // connections IsValid put back that nothing took out since
	at   atomic.Int64 // when the last one went back (unix nanoseconds)

	mu   sync.Mutex
	ring [32]idleRelease // the calls released lately, by context
	next int
}

type idleRelease struct {
	ctx context.Context
	n   int
}

// pooled is called when a connection goes back to the pool: two atomic
// stores and a load while nobody waits.
func (s *idleSignal) pooled() {
	s.idle.Add(1)
	s.at.Store(time.Now().UnixNano())
	s.fire()
}

// taken is called when a connection pooled leaves the pool: database/sql
// takes it (ResetSession), closes it, or a sweep closes it.
func (s *idleSignal) taken() { s.idle.Add(-1) }

// available reports whether a connection waits in the pool.
func (s *idleSignal) available() bool { return s.idle.Load() > 0 }

// poolSettle is how long after IsValid a call released by it waits before
// database/sql's next try. IsValid runs just before database/sql puts the
// connection in its pool: a call released at once can look there first,
// find nothing, and dial again, spending its try (TestConnectPoolFree under
// the race detector, without a settle). The connection waits unused
// meanwhile unless a call not waiting takes it, so the settle is every
// hand-over's idle time on a full server: it must stay well under the time
// a caller takes to come back (with 3 ms, the pool of 1 connection in
// TestAvailabilityServerFull served fewer calls than raw pgx's, whose
// callers retry at once; with 1 ms, more: docs/resilience.md). A call that
// finds the connection taken by then waits on, its release unspent.
const poolSettle = 1 * time.Millisecond

// settle waits until poolSettle after the last connection went back, within
// ctx.
func (s *idleSignal) settle(ctx context.Context) error {
	d := time.Until(time.Unix(0, s.at.Load()).Add(poolSettle))
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// release reports whether the call of ctx may be released once more.
func (s *idleSignal) release(ctx context.Context) bool {
	if t := reflect.TypeOf(ctx); t == nil || !t.Comparable() {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.ring {
		if r := &s.ring[i]; r.ctx != nil && sameCtx(r.ctx, ctx) {
			if r.n >= idleReleaseMax {
				return false
			}
			r.n++
			return true
		}
	}
	s.ring[s.next] = idleRelease{ctx: ctx, n: 1}
	s.next = (s.next + 1) % len(s.ring)
	return true
}

// awaitServing holds a statement that PgBouncer refused before forwarding it
// (bouncerNotForwarded: its login to PostgreSQL failing, query_wait_timeout),
// before database/sql retries it at once on another connection: until a
// check (a new connection and a ping through PgBouncer, one at a time per
// Connector, shared by every call waiting) is served, within the call's
// deadline less headroom. The statement's connection is gone already;
// nothing of the statement ran, so the retry is safe. Without the wait,
// database/sql's three tries are spent within a millisecond while PgBouncer
// refuses for server_login_retry. It reports whether PgBouncer served a
// check: if not, within the call's time, the caller returns the refusal
// itself (refusedError), not a retry that would only meet it again, or meet
// the deadline in PgBouncer's queue, where the outcome would be unknown.
func (c *Connector) awaitServing(ctx context.Context) bool {
	limit := waitLimit(ctx, time.Now())
	c.stats.notYetWaits.Add(1)
	for n := 0; ; n++ {
		wait := backoff(n, min(c.cfg.ConnectBackoff, proxyBackoffMax), servingBackoffMax)
		if time.Now().Add(wait).After(limit) {
			return false
		}
		if c.sleep(ctx, wait) != nil {
			return false
		}
		cctx, cancel := context.WithDeadline(ctx, limit)
		err := c.serving.check(cctx, c)
		cancel()
		if err == nil {
			c.logger.LogAttrs(ctx, slog.LevelDebug, "pgresilient: PgBouncer serves again", slog.Int("checks", n+1))
			return true
		}
		if refusalOf(err) == refusalNone && !bouncerNotForwarded(err) {
			return false // something else than "not yet": the retry will say what
		}
	}
}

// refusedError is a statement PgBouncer refused before forwarding it, when
// it did not serve again within the call's deadline: the refusal itself,
// classified. Nothing ran; it matches neither ErrConnLost nor
// driver.ErrBadConn (database/sql would only retry it into the deadline),
// and errors.As finds PgBouncer's *pgconn.PgError.
type refusedError struct {
	err error // the DisconnectError of the refused statement
}

func (e *refusedError) Error() string {
	return "pgresilient: PgBouncer refused the statement before forwarding it, nothing ran, and it did not serve again within the call's deadline: " +
		errString(e.cause())
}

// Unwrap returns PgBouncer's error, without the driver.ErrBadConn of the
// DisconnectError that carried it.
func (e *refusedError) Unwrap() error {
	var de *DisconnectError
	if errors.As(e.err, &de) {
		return de.Err
	}
	return e.err
}

func (e *refusedError) cause() error { return e.Unwrap() }

// servingCheck runs one check at a time for every caller of awaitServing.
type servingCheck struct {
	mu   sync.Mutex
	done chan struct{} // closed when the check under way ends; nil when none is
	err  error         // its outcome, once done is closed
}

// check joins the check under way, or starts one, and returns its outcome,
// or ctx's error if ctx ends first.
func (s *servingCheck) check(ctx context.Context, c *Connector) error {
	s.mu.Lock()
	done := s.done
	if done == nil {
		done = make(chan struct{})
		s.done = done
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			err := c.checkServing(c.life)
			s.mu.Lock()
			s.err = err
			s.done = nil
			s.mu.Unlock()
			close(done)
		}()
	}
	s.mu.Unlock()
	select {
	case <-done:
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// checkServing opens a connection through the wrapped connector and pings
// it, bounded like a reuse check: PgBouncer forwards the ping, so it is
// refused as a statement would be until it serves again.
func (c *Connector) checkServing(ctx context.Context) error {
	ctx, cancel := within(ctx, c.verifyTimeout)
	defer cancel()
	dc, err := c.inner.Connect(ctx)
	if err != nil {
		return err
	}
	defer dc.Close()
	if sc, ok := dc.(*stdlib.Conn); ok {
		return sc.Conn().Ping(ctx) // stdlib's Ping would hide the server's error behind driver.ErrBadConn
	}
	if p, ok := dc.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}
