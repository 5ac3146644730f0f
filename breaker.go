package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/sony/gobreaker/v2"
)

// BreakerState is the state of a Connector's circuit breaker.
type BreakerState int32

// The breaker's states. Closed lets everything through; Open holds every call
// until the background prober's next probe says whether the server serves
// (a call whose deadline cannot cover that wait, or that would wait long,
// fails at once); HalfOpen is Open while one of those probes is under way (a
// user's call is never the probe).
const (
	BreakerClosed BreakerState = iota
	BreakerHalfOpen
	BreakerOpen
	BreakerDisabled // breaker=off
)

// String returns the state's name: "closed", "half-open", "open" or "disabled".
func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerHalfOpen:
		return "half-open"
	case BreakerOpen:
		return "open"
	case BreakerDisabled:
		return "disabled"
	}
	return "BreakerState(" + strconv.Itoa(int(s)) + ")"
}

func fromGobreaker(s gobreaker.State) BreakerState {
	switch s {
	case gobreaker.StateHalfOpen:
		return BreakerHalfOpen
	case gobreaker.StateOpen:
		return BreakerOpen
	}
	return BreakerClosed
}

// CircuitOpenError is returned, without anything being dialled or sent, while
// the breaker is open. It matches ErrCircuitOpen, never driver.ErrBadConn. A
// connection retry loop stopped by the breaker opening also wraps its last
// connect error (a *ConnectError).
type CircuitOpenError struct {
	Addr      string    // the server address(es) the breaker guards, host:port, comma-separated; "" with WithDriver
	OpenedAt  time.Time // when the breaker opened
	NextProbe time.Time // when the background prober next starts a probe (sooner while calls wait); zero if unknown
	// Last is the failure that last counted against the server: the one
	// that opened the breaker, or a failed probe's since. It says why, for
	// the message and for logs; it is not wrapped (errors.Is and errors.As
	// do not see it): the caller's call did not meet it.
	Last error

	cause error // the last connect error of a retry loop the breaker stopped; nil for a rejection
}

// Error says the circuit is open, for which server, since when, why, and when
// the next probe is due:
//
//	pgresilient: circuit open for 127.0.0.1:5432 since 1.2s (last failure: dial tcp 127.0.0.1:5432: connect: connection refused); next probe in 40ms
func (e *CircuitOpenError) Error() string {
	var b strings.Builder
	b.WriteString("pgresilient: circuit open")
	if e.Addr != "" {
		b.WriteString(" for ")
		b.WriteString(e.Addr)
	}
	if !e.OpenedAt.IsZero() {
		b.WriteString(" since ")
		b.WriteString(max(time.Since(e.OpenedAt), 0).Round(time.Millisecond).String())
	}
	if e.Last != nil && e.cause == nil {
		b.WriteString(" (last failure: ")
		b.WriteString(logCause(e.Last))
		b.WriteString(")")
	}
	if e.NextProbe.IsZero() {
		b.WriteString("; a probe is under way")
	} else {
		b.WriteString("; next probe in ")
		b.WriteString(max(time.Until(e.NextProbe), 0).Round(time.Millisecond).String())
	}
	if e.cause != nil {
		b.WriteString(": ")
		b.WriteString(e.cause.Error())
	}
	return b.String()
}

// onlyCircuitOpen is Unwrap's answer without a cause: shared, so that a
// rejection allocates nothing more than the error itself.
var onlyCircuitOpen = []error{ErrCircuitOpen}

// Unwrap returns ErrCircuitOpen and, for a retry loop the breaker stopped,
// its last connect error.
func (e *CircuitOpenError) Unwrap() []error {
	if e.cause == nil {
		return onlyCircuitOpen
	}
	return []error{ErrCircuitOpen, e.cause}
}

var (
	errExcluded = errors.New("pgresilient: excluded from breaker counts")
	errFailure  = errors.New("pgresilient: connectivity failure")
)

// breakerMinSpan is how long the breaker_failures counted failures must span
// before they open the breaker, once the Connector has had a working
// connection: a fast restart ends every session and refuses connections for a
// moment, and must open nothing. The failures a restart causes span from the
// sessions' termination to the last refused attempt, so at most the
// restart's length; 500 ms is above every restart measured
// (TestBreakerRestartUnderLoad; docs/resilience.md has the numbers), and a
// server that stays down still opens the breaker ~0.5 s after its first
// failure (connect shortens its backoff to make the attempt that opens it on
// time: tripDue). A timeout opens it at once, whatever the span.
const breakerMinSpan = 500 * time.Millisecond

// How the failure being recorded may open the breaker.
type tripRule uint8

const (
	tripSpan tripRule = iota // breaker_failures failures spanning breakerMinSpan
	tripCall                 // breaker_failures failures (whole calls, before the first working connection)
	tripNow                  // at once (a timeout)
)

// breaker is the Connector's circuit breaker. Its own atomic state is the
// authority for rejecting calls: closed, a call costs one atomic load
// before and, after a success, one more. gobreaker counts the failures and
// decides the trip (ReadyToTrip), and moves open -> half-open -> closed or
// open for the background prober, the only caller of Allow while not closed.
// Every call into gobreaker is made under mu, so a late outcome of a call
// that started before the breaker opened cannot reach it while not closed.
type breaker struct {
	cb       *gobreaker.TwoStepCircuitBreaker[struct{}]
	state    atomic.Int32 // BreakerState
	dirty    atomic.Bool  // a failure was recorded since the last recorded success
	silent   atomic.Bool  // the server went silent (wait.go's silentFailure), and no probe answered since: calls do not wait for probes
	openedAt atomic.Int64 // unix nanoseconds of the last transition to open
	next     atomic.Int64 // unix nanoseconds of the next probe; 0 while one runs
	openCh   atomic.Pointer[chan struct{}]
	last     atomic.Pointer[lastFailure] // the failure that last counted
	addr     string                      // what CircuitOpenError.Addr says
	cooldown time.Duration
	failures uint32
	minSpan  time.Duration // breakerMinSpan; tests of the counting set 0

	mu        sync.Mutex // serializes every call into cb; guards what follows
	firstFail time.Time  // when the current run of consecutive failures began
	rule      tripRule   // of the failure being recorded
	shut      bool       // Close was called: no prober starts
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	probeFn func(context.Context) error // a real connection, closed again
	// interval is the unattended wait before the next probe, by how long
	// the breaker has been open: probeInterval (tests set their own).
	interval func(elapsed time.Duration) time.Duration
	onClose  func() // the Connector bumps the pool generation
	// refused holds a statement PgBouncer refused before forwarding it
	// until PgBouncer serves again (the Connector's awaitServing), and
	// reports whether it did.
	refused func(context.Context) bool

	// The waits of calls while open: probed is closed, and replaced, when
	// a probe's outcome is in; demand tells the prober a call waits
	// (waiters counts them), so the next probe comes within
	// probeDemandMax of the last one's start, lastStart (unix
	// nanoseconds).
	probed    atomic.Pointer[chan struct{}]
	published atomic.Int64 // openedAt of the period whose outcome was published last
	// moving: the last probe found the server in transition
	// (notYet), not down: calls waiting go on waiting for the next
	// probe, within their deadline (awaitProbe).
	moving atomic.Bool
	// held: the last probe's connection was accepted and then held until
	// it timed out (heldConnect: a proxy with no server UP yet). A call
	// with a deadline waits on through it (awaitProbe).
	held      atomic.Bool
	demand    chan struct{}
	waiters   atomic.Int32
	lastStart atomic.Int64

	logger      *slog.Logger
	onChange    func(from, to BreakerState)
	transitions atomic.Int64
	rejected    atomic.Int64
	probes      atomic.Int64
	probeFails  atomic.Int64
	openNanos   atomic.Int64 // time spent open, in finished open periods
}

// lastFailure boxes an error for an atomic.Pointer.
type lastFailure struct{ err error }

// errIdleClosed stands for a failure seen only as a pooled connection found
// closed by its server: no error came with it.
var errIdleClosed = errors.New("the server closed an idle connection")

func newBreaker(addr string, failures int, cooldown time.Duration, logger *slog.Logger, onChange func(from, to BreakerState)) *breaker {
	b := &breaker{addr: addr, cooldown: cooldown, logger: logger, onChange: onChange, failures: uint32(failures), minSpan: breakerMinSpan}
	ch := make(chan struct{})
	b.openCh.Store(&ch)
	pch := make(chan struct{})
	b.probed.Store(&pch)
	b.demand = make(chan struct{}, 1)
	b.interval = func(elapsed time.Duration) time.Duration { return probeInterval(elapsed, cooldown) }
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "pgresilient",
		MaxRequests: 1,
		// Open -> half-open at the prober's next Allow: the prober, not a
		// timer, decides when to look.
		Timeout: time.Nanosecond,
		// Runs under mu (held by whoever called into cb).
		ReadyToTrip: func(c gobreaker.Counts) bool {
			switch b.rule {
			case tripNow:
				return true
			case tripCall:
				return c.ConsecutiveFailures >= b.failures
			}
			return c.ConsecutiveFailures >= b.failures && time.Since(b.firstFail) >= b.minSpan
		},
		IsExcluded: func(err error) bool { return err == errExcluded }, //nolint:errorlint // our own sentinel
		// Runs under gobreaker's lock and mu: record, log and notify, never
		// block and never call the breaker.
		OnStateChange: func(_ string, from, to gobreaker.State) { b.changed(fromGobreaker(from), fromGobreaker(to)) },
	})
	return b
}

// changed mirrors a gobreaker transition. Only closed -> open and -> closed
// are transitions to the outside world (counted, logged at Warn and Info,
// passed to WithStateChange); the prober's open <-> half-open moves are
// logged at Debug only.
func (b *breaker) changed(from, to BreakerState) {
	now := time.Now()
	if from == BreakerClosed && to == BreakerOpen {
		b.openedAt.Store(now.UnixNano()) // before the state: a call that sees open reads its period
		b.moving.Store(false)
		b.held.Store(false)
	}
	b.state.Store(int32(to))
	b.dirty.Store(false)
	switch {
	case from == BreakerClosed && to == BreakerOpen:
		b.lastStart.Store(now.UnixNano())
		close(*b.openCh.Load())
		b.transitions.Add(1)
		b.logger.LogAttrs(context.Background(), slog.LevelWarn, "pgresilient: circuit breaker open",
			slog.String("from", from.String()), slog.String("to", to.String()),
			slog.Duration("cooldown", b.cooldown))
		if b.onChange != nil {
			b.onChange(from, to)
		}
		if !b.shut {
			b.wg.Add(1)
			go b.run(now)
		}
	case to == BreakerClosed:
		b.silent.Store(false)
		openFor := now.Sub(time.Unix(0, b.openedAt.Load()))
		b.openNanos.Add(int64(openFor))
		ch := make(chan struct{})
		b.openCh.Store(&ch)
		b.transitions.Add(1)
		b.logger.LogAttrs(context.Background(), slog.LevelInfo, "pgresilient: circuit breaker closed",
			slog.String("from", BreakerOpen.String()), slog.String("to", to.String()),
			slog.Duration("open_for", openFor))
		if b.onClose != nil {
			b.onClose()
		}
		if b.onChange != nil {
			b.onChange(BreakerOpen, to)
		}
	}
}

// State returns the current state.
func (b *breaker) State() BreakerState { return BreakerState(b.state.Load()) }

// isOpen reports, cheaply, whether calls are being rejected now.
func (b *breaker) isOpen() bool {
	return b != nil && BreakerState(b.state.Load()) != BreakerClosed
}

// opened returns a channel closed when the breaker opens (nil, which never
// fires, with breaker=off).
func (b *breaker) opened() <-chan struct{} {
	if b == nil {
		return nil
	}
	return *b.openCh.Load()
}

// openTime is how long the breaker has been open in all, the current
// period included.
func (b *breaker) openTime() time.Duration {
	d := b.openNanos.Load()
	if b.isOpen() {
		d += time.Now().UnixNano() - b.openedAt.Load()
	}
	return time.Duration(d)
}

// before lets a call through or rejects it, without waiting. A nil breaker
// (breaker=off) lets everything through; closed, it costs one atomic load.
func (b *breaker) before() error {
	if b == nil || BreakerState(b.state.Load()) == BreakerClosed {
		return nil
	}
	return b.openError(nil)
}

// While open, a call waits for the outcome of the prober's next probe, for
// breakerWaitMax at most and within its deadline: probes then come at most
// probeDemandMax apart, so a call waits about that long when the server
// refuses, and fails with ErrCircuitOpen when the probe found it still
// unable to serve. A call whose deadline ends before the next probe starts
// fails at once, and so does every call while the server is silent
// (silentFailure: the host monitor's verdict, a reuse check or a dial that
// timed out) and no probe answered since: in a blackhole no probe outcome
// comes soon, and calls fail in microseconds (TestMonitorBlackholeCalls). A
// connection attempt that something accepted and then held until it timed
// out does not make calls fail at once: HAProxy holds connections that way
// until it routes to the new primary. After a probe that met a server in
// transition, or (for a call with a deadline) one that was held, a call
// waits on for the next probe (waitOn); docs/resilience.md has the
// measurements behind each rule.
const (
	// probeDemandMax: so that a pool serves again within 100 ms of the
	// server (its probe, whose connection then serves a waiting call),
	// however many pools recover at once (TestAvailabilityRecoveryHerd, 8
	// pools of 8 workers), at a tenth of the connection attempts raw pgx
	// makes meanwhile. While calls wait, a Connector probes about 30 times
	// a second. The measurements behind it: docs/resilience.md.
	probeDemandMax = 35 * time.Millisecond
	breakerWaitMax = 250 * time.Millisecond
	// maxProbes bounds the probes under way at once (run's hedges).
	maxProbes = 3
)

// wait lets a call through when closed (one atomic load; a nil breaker lets
// everything through). While open, it lets through a call on a connection c
// that answered its reuse check in this open period (c.openPass; c is nil for
// a new connection), and otherwise waits for the outcome of the prober's
// next probe, if that is expected soon (breakerWaitMax) and before ctx's
// deadline: nil if the probe closed the breaker, else a *CircuitOpenError,
// also when ctx ends or the breaker is closed while waiting. Nothing is sent
// meanwhile.
func (b *breaker) wait(ctx context.Context, c *baseConn) error {
	if b == nil || BreakerState(b.state.Load()) == BreakerClosed {
		return nil
	}
	if c != nil && c.openPass != 0 && c.openPass == b.openedAt.Load() {
		return nil // this connection answered while open: it serves
	}
	if err := b.awaitProbe(ctx); err != nil {
		return b.openError(err)
	}
	return nil
}

// errProbeFailed is awaitProbe's answer when the probe found the server
// still down, or none was waited for.
var errProbeFailed = errors.New("pgresilient: the probe found the server still down")

// awaitProbe waits, as wait does, and returns nil once the breaker is
// closed; else errProbeFailed, or ctx's error if ctx ended meanwhile (to be
// wrapped in a CircuitOpenError: the caller was not told anything else).
func (b *breaker) awaitProbe(ctx context.Context) error {
	ch := *b.probed.Load()
	if BreakerState(b.state.Load()) == BreakerClosed {
		return nil
	}
	if b.silent.Load() {
		// The server went silent, and no probe has answered since: the
		// next probe's outcome is not coming soon.
		// Fail now, as raw pgx cannot: in a blackhole, the median call
		// then takes microseconds (TestMonitorBlackholeCalls), not
		// breakerWaitMax.
		return errProbeFailed
	}
	now := time.Now()
	if dl, ok := ctx.Deadline(); ok && dl.Sub(now) < b.untilProbe(now)+time.Millisecond || b.ctx.Err() != nil {
		return errProbeFailed
	}
	limit := waitLimit(ctx, now)
	_, deadline := ctx.Deadline()
	period := b.openedAt.Load()
	b.waiters.Add(1)
	defer b.waiters.Add(-1)
	b.pullProbe()
	t := time.NewTimer(breakerWaitMax)
	defer t.Stop()
	for {
		select {
		case <-ch:
			if BreakerState(b.state.Load()) == BreakerClosed {
				return nil
			}
			ch = *b.probed.Load()
			if b.published.Load() != period {
				// An earlier period's outcome, published after the
				// breaker closed and opened again: wait for this one's.
				continue
			}
			if (b.moving.Load() || deadline && b.held.Load()) && b.waitOn(limit) {
				t.Reset(breakerWaitMax)
				continue
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-b.ctx.Done():
		case <-t.C:
			if BreakerState(b.state.Load()) == BreakerClosed {
				return nil // closed meanwhile, its outcome not seen
			}
		}
		return errProbeFailed
	}
}

// waitOn reports whether a call waits for the next probe, until limit,
// after a probe that found the server in transition (moving), or, for a
// call with a deadline, one whose connection something accepted and held
// until it timed out (held): yes unless the server is silent or the next
// probe comes too late. Behind HAProxy, probes meet a standby for a while
// after HAProxy routed to it (a Patroni leader killed), or are held by
// HAProxy as it routes (a switchover); failing the waiting calls after one
// such probe failed writes that raw pgx served. A call without a deadline
// fails after the probe: a frozen network holds probes the same way, and
// its limit would be notYetCeiling (TestQueryTimeoutBlackhole).
func (b *breaker) waitOn(limit time.Time) bool {
	if b.silent.Load() || b.ctx.Err() != nil {
		return false
	}
	now := time.Now()
	if now.Add(b.untilProbe(now)).Add(time.Millisecond).After(limit) {
		return false
	}
	b.pullProbe()
	return true
}

// pullProbe asks the prober for its next probe soon (run's demand).
func (b *breaker) pullProbe() {
	select {
	case b.demand <- struct{}{}:
	default:
	}
}

// untilProbe returns how long until the next probe starts, at the latest,
// once a waiting call pulled it forward (pull).
func (b *breaker) untilProbe(now time.Time) time.Duration {
	due := time.Unix(0, b.next.Load())
	if pulled := time.Unix(0, b.lastStart.Load()).Add(probeDemandMax); pulled.Before(due) {
		due = pulled
	}
	return max(due.Sub(now), 0)
}

// publish wakes the calls waiting for a probe's outcome: the outcome of the
// open period that began at openedAt (unix nanoseconds). A call waiting in
// a later period ignores it (awaitProbe): the breaker may close and open
// again between a period's outcome and its publication.
func (b *breaker) publish(openedAt int64) {
	b.published.Store(openedAt)
	ch := make(chan struct{})
	close(*b.probed.Swap(&ch))
}

// openError is the rejection of a call, counted in BreakerRejected; cause is
// what it wraps besides ErrCircuitOpen: a retry loop's last connect error,
// or the caller's context error if it ended while the call waited; nil (or
// errProbeFailed) for none.
func (b *breaker) openError(cause error) error {
	if cause == errProbeFailed { //nolint:errorlint // our own sentinel
		cause = nil
	}
	b.rejected.Add(1)
	e := &CircuitOpenError{Addr: b.addr, OpenedAt: time.Unix(0, b.openedAt.Load()), cause: cause}
	if l := b.last.Load(); l != nil {
		e.Last = l.err
	}
	if n := b.next.Load(); n != 0 {
		e.NextProbe = time.Unix(0, n)
	}
	return e
}

// done records the outcome of a statement that before let through,
// classified by its error. A nil breaker records nothing.
func (b *breaker) done(ctx context.Context, err error) {
	if b == nil {
		return
	}
	if err == nil { // the closed state's success: the common case
		if b.dirty.Load() {
			b.succeed()
		}
		return
	}
	if notYet(err) {
		// "Not yet" (wait.go): the server or the pooler answered; no
		// evidence either way.
		return
	}
	if de := (*DisconnectError)(nil); errors.As(err, &de) && de.known {
		// The failure of a connection to an event already counted: the
		// breaker counts outages, not the connections one outage ends.
		return
	}
	b.after(classify(ctx, err), tripSpan, err)
}

// after records an outcome by its class; err is the failure, if any. A nil
// breaker records nothing.
func (b *breaker) after(class errClass, rule tripRule, err error) {
	if b == nil {
		return
	}
	switch class {
	case classNone, classServer:
		if b.dirty.Load() {
			b.succeed()
		}
	case classGone:
		b.fail(rule, err)
	}
}

// fail records one counted failure, cause, which opens the breaker by rule.
// It is ignored while not closed.
func (b *breaker) fail(rule tripRule, cause error) {
	if rule == tripNow && silentFailure(cause) {
		b.silent.Store(true) // calls fail at once (awaitProbe) until a probe answers
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if BreakerState(b.state.Load()) != BreakerClosed {
		return
	}
	done, err := b.cb.Allow()
	if err != nil {
		return
	}
	b.last.Store(&lastFailure{cause})
	if b.cb.Counts().ConsecutiveFailures == 0 {
		b.firstFail = time.Now()
	}
	b.rule = rule
	b.dirty.Store(true)
	done(errFailure)
	b.rule = tripSpan
}

// tripDue returns how long until the run of failures under way spans
// minSpan, if it already has enough failures to open the breaker then, and 0
// otherwise: a retry loop makes its next attempt no later than that, so an
// outage opens the breaker right at minSpan, not a backoff later.
func (b *breaker) tripDue() time.Duration {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if BreakerState(b.state.Load()) != BreakerClosed || b.cb.Counts().ConsecutiveFailures+1 < b.failures {
		return 0
	}
	return max(time.Until(b.firstFail.Add(b.minSpan)), time.Millisecond)
}

// succeed records a success after failures, ending their run. It is ignored
// while not closed: only the prober closes the breaker.
func (b *breaker) succeed() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if BreakerState(b.state.Load()) != BreakerClosed {
		return
	}
	done, err := b.cb.Allow()
	if err != nil {
		return
	}
	b.dirty.Store(false)
	done(nil)
}

// probeInterval is the wait before the next probe, elapsed after the breaker
// opened: every ~20 ms at first, backing off toward breaker_cooldown in a
// long outage (a 1.5 s outage is still probed every ~70 ms), ±20% jitter so
// that a fleet does not probe in lockstep. While calls wait for a probe,
// pull brings the next one within probeDemandMax of the last.
func probeInterval(elapsed, cooldown time.Duration) time.Duration {
	iv := min(cooldown, 20*time.Millisecond+elapsed/30)
	return time.Duration(float64(iv) * (0.8 + 0.4*rand.Float64()))
}

// pull returns when the next probe is due, due or sooner: while calls wait,
// within probeDemandMax (80 to 100% of it, jittered) of the last probe's
// start, and not before now.
func (b *breaker) pull(due time.Time) time.Time {
	p := time.Unix(0, b.lastStart.Load()).Add(time.Duration(float64(probeDemandMax) * (0.8 + 0.2*rand.Float64())))
	if now := time.Now(); p.Before(now) {
		p = now
	}
	if p.Before(due) {
		return p
	}
	return due
}

// run is the prober: one goroutine per Connector, while the breaker is open.
// It connects (startup included) through the wrapped connector, closes that
// connection again, and closes the breaker the moment one succeeds. Close
// stops it.
//
// A probe still unanswered when the next is due is hedged: another starts
// beside it, up to maxProbes under way. A proxy may hold a connection (HAProxy
// retrying a server that refuses, queueing while none is UP) past the moment
// it routes to a server that serves: measured behind HAProxy in a Patroni
// switchover, a probe begun 0.3 s before that moment waited out its whole
// 1 s timeout, and the breaker closed 0.7 s late; the hedge begun after the
// moment connects in milliseconds. The breaker is half-open while any probe
// is under way, and open again once all of them failed.
func (b *breaker) run(openedAt time.Time) {
	defer b.wg.Done()
	defer b.publish(openedAt.UnixNano()) // Close: calls still waiting return
	type result struct {
		err  error
		took time.Duration
	}
	results := make(chan result, maxProbes)
	var (
		token    func(error) // gobreaker's half-open permit, while probes are under way
		inflight int
	)
	settle := func(outcome error) { // under mu
		if token != nil {
			token(outcome)
			token = nil
		}
	}
	defer func() {
		// Close: back to open (not counted as a probe failure), so the
		// state reads open, not half-open, from now on.
		b.mu.Lock()
		settle(errFailure)
		b.mu.Unlock()
	}()
	due := time.Now().Add(b.interval(time.Since(openedAt)))
	if b.waiters.Load() > 0 {
		due = b.pull(due)
	}
	b.next.Store(due.UnixNano())
	t := time.NewTimer(time.Until(due))
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-b.demand:
			if p := b.pull(due); p.Before(due) {
				due = p
				b.next.Store(due.UnixNano())
				t.Reset(time.Until(due))
			}
			continue
		case r := <-results:
			inflight--
			outcome := error(nil)
			if r.err != nil && connectClass(b.ctx, r.err) == classGone {
				outcome = errFailure
				b.probeFails.Add(1)
				b.last.Store(&lastFailure{r.err})
			}
			if r.err == nil || !isTimeout(r.err) {
				b.silent.Store(false) // the server answered (refused, reset, served)
			}
			b.moving.Store(r.err != nil && notYet(r.err))
			b.held.Store(r.err != nil && heldConnect(r.err))
			b.logger.LogAttrs(context.Background(), slog.LevelDebug, "pgresilient: circuit breaker probe",
				slog.Bool("ok", outcome == nil), slog.Duration("took", r.took), slog.Int("under_way", inflight), slog.String("cause", logCause(r.err)))
			b.mu.Lock()
			if outcome == nil || inflight == 0 {
				settle(outcome)
			}
			closed := BreakerState(b.state.Load()) == BreakerClosed
			b.mu.Unlock()
			b.publish(openedAt.UnixNano())
			if closed {
				return // probes still under way end by themselves (b.wg)
			}
			continue
		case <-t.C:
		}
		if inflight < maxProbes {
			b.mu.Lock()
			if token == nil {
				if done, err := b.cb.Allow(); err == nil { // open -> half-open
					token = done
				}
			}
			ok := token != nil
			b.mu.Unlock()
			if ok {
				began := time.Now()
				b.lastStart.Store(began.UnixNano())
				b.probes.Add(1)
				inflight++
				b.wg.Add(1)
				go func() {
					defer b.wg.Done()
					err := b.probeFn(b.ctx)
					results <- result{err, time.Since(began)}
				}()
			}
		}
		due = time.Now().Add(b.interval(time.Since(openedAt)))
		if b.waiters.Load() > 0 {
			due = b.pull(due)
		}
		b.next.Store(due.UnixNano())
		t.Reset(time.Until(due))
	}
}

// close stops the prober and waits for it.
func (b *breaker) close() {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.shut = true
	b.mu.Unlock()
	b.cancel()
	b.wg.Wait()
}

// The breaker gates every call that may reach the server from here, beneath
// the user's interceptors (they see its rejections) and above the error
// model (it counts what the error model concluded). With breaker=off,
// owner.breaker is nil and its methods do nothing.

// gate runs call, on connection c, behind its Connector's breaker b: while
// b is open it lets through a connection that answered its reuse check in
// this open period, and otherwise waits for the next probe (wait); the
// outcome is counted by its error. A statement PgBouncer refused
// before forwarding it, which database/sql will run again at once on another
// connection (driver.ErrBadConn), is held until PgBouncer serves again,
// within ctx's deadline (wait.go's awaitServing). call does not escape: the
// closure costs no allocation.
func gate[T any](ctx context.Context, c *baseConn, call func() (T, error)) (T, error) {
	b := c.owner.breaker
	if err := b.wait(ctx, c); err != nil {
		var zero T
		return zero, err
	}
	v, err := call()
	if err == nil {
		b.done(ctx, nil)
		return v, nil
	}
	b.done(ctx, err)
	if b != nil && b.refused != nil && bouncerNotForwarded(err) && errors.Is(err, driver.ErrBadConn) && !b.refused(ctx) {
		return v, &refusedError{err}
	}
	return v, err
}

// breakerAddr names the servers a Connector's breaker guards, as
// CircuitOpenError.Addr says them: host:port, then each fallback.
func breakerAddr(cc *pgx.ConnConfig) string {
	if cc == nil {
		return ""
	}
	addrs := []string{net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port)))}
	for _, fb := range cc.Fallbacks {
		if a := net.JoinHostPort(fb.Host, strconv.Itoa(int(fb.Port))); !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	return strings.Join(addrs, ",")
}
