package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"
)

// ErrConnectFailed is matched by the error of a call that could not open a
// connection (a *ConnectError): nothing of the call reached the server.
var ErrConnectFailed = errors.New("pgresilient: connect failed")

// ConnectError is returned when a connection could not be opened. It matches
// ErrConnectFailed and wraps the last attempt's error (a *pgconn.ConnectError
// from pgx, which never holds the password).
type ConnectError struct {
	Attempts  int  // attempts made, 1 + retries
	Permanent bool // a failure no retry fixes: authentication, no such database, TLS
	Err       error

	// poolFree: a "not yet" whose wait ended because a pooled connection
	// came free: the error also matches driver.ErrBadConn, so that
	// database/sql takes that connection. Nothing was sent.
	poolFree bool
}

// Error says how many attempts failed, or that the failure is permanent.
func (e *ConnectError) Error() string {
	if e.Permanent {
		return "pgresilient: connect failed, not retried (permanent failure): " + errString(e.Err)
	}
	return "pgresilient: connect failed after " + strconv.Itoa(e.Attempts) + " attempt(s): " + errString(e.Err)
}

// Unwrap returns ErrConnectFailed and the last attempt's error, and
// driver.ErrBadConn when a pooled connection came free while the attempt
// waited out a "not yet" (database/sql then takes it).
func (e *ConnectError) Unwrap() []error {
	if e.poolFree {
		return []error{ErrConnectFailed, e.Err, driver.ErrBadConn}
	}
	return []error{ErrConnectFailed, e.Err}
}

// backoff returns the wait before retry n (0-based): full jitter, a uniform
// random duration in [0, min(max, base·2ⁿ)].
func backoff(n int, base, max time.Duration) time.Duration {
	ceil := base
	for i := 0; i < n && ceil < max; i++ {
		ceil *= 2
	}
	if ceil > max {
		ceil = max
	}
	if ceil <= 0 {
		return 0
	}
	return rand.N(ceil + 1)
}

// connectOnce makes one attempt, bounded by query_timeout (pgx's
// connect_timeout, when set, bounds it too), or by what remains of this
// call's budget after a reuse check of the same call timed out. It first
// takes one of the Connector's maxConnecting slots, waiting within ctx.
func (c *Connector) connectOnce(ctx context.Context) (driver.Conn, error) {
	d, ok := c.budgetLeft(ctx, c.cfg.QueryTimeout)
	if !ok {
		return nil, errBudgetSpent
	}
	// The slot is waited for within the caller's context only: a wait for
	// a slot says nothing about the server.
	release, err := c.attemptSlot(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	ctx, cancel := within(ctx, d)
	defer cancel()
	return c.inner.Connect(ctx)
}

// connect opens one connection of the wrapped driver, retrying failures
// that may clear by themselves, always within ctx. The waiting rules are
// wait.go's:
//
//   - a "not yet" (a full or starting server, PgBouncer's refusals, a server
//     of the wrong role for target_session_attrs) is retried with backoff
//     and full jitter until ctx's deadline less headroom for the statement
//     (notYetCeiling without one), not within connect_retries, and never
//     counts for the breaker;
//   - a connection a proxy accepted and closed is retried soon
//     (proxyBackoff), within the same bound and for proxyRetryFor at most,
//     and counts;
//   - any other transient failure is retried up to connect_retries times,
//     or, before the Connector's first working connection (a database that
//     starts after the application), waited out like a "not yet".
//
// A wait between attempts ends early, with an error matching
// driver.ErrBadConn (nothing was sent), when a pooled connection is or
// comes free (idleSignal): database/sql takes it on its next try. That is
// so for a "not yet", and for any failure once the Connector has had a
// working connection: an address that refuses new connections while the
// open ones work (a proxy or pooler that stopped accepting) is served by
// them, not failed after connect_retries while they wait in the pool
// (TestAvailabilityRefusingAddress).
//
// Once the Connector has had a working connection, every counted failed
// attempt counts against the breaker, and one that times out opens it at
// once; when the breaker opens (by this loop's failures or other calls'),
// the loop stops at once with a *CircuitOpenError wrapping its last
// *ConnectError. Before that, the call as a whole is counted by openBase,
// and waits for a database that is still starting.
func (c *Connector) connect(ctx context.Context) (driver.Conn, error) {
	retries := c.cfg.ConnectRetries
	counting := c.breaker != nil && c.connected.Load()
	limit := waitLimit(ctx, time.Now())
	var notYetN, closedN, otherN int
	var closedSince time.Time // the call's first connection a proxy closed
	for attempt := 0; ; attempt++ {
		dc, err := c.connectOnce(ctx)
		if err == nil {
			c.stats.opened.Add(1)
			c.served.fire()
			if counting {
				c.breaker.after(classNone, tripSpan, nil)
			}
			return dc, nil
		}
		if errors.Is(err, errConnectorClosed) {
			return nil, &ConnectError{Attempts: attempt + 1, Err: err}
		}
		c.stats.connectFailures.Add(1)
		class := connectClass(ctx, err)
		timeout := class == classGone && isTimeout(err)
		if counting {
			rule := tripSpan
			if timeout {
				rule = tripNow
			}
			c.breaker.after(breakerConnectClass(class, err), rule, err)
		}
		switch {
		case class == classCanceled:
			return nil, err
		case class != classGone:
			return nil, &ConnectError{Attempts: attempt + 1, Permanent: true, Err: err}
		}
		if c.breaker.isOpen() {
			// This attempt or other calls opened the breaker: stop here.
			return nil, c.breaker.openError(&ConnectError{Attempts: attempt + 1, Err: err})
		}
		kind := refusalOf(err)
		if kind == refusalNone && !c.connected.Load() {
			// No connection has worked yet: the application may have
			// started before its database. A refused or reset dial is
			// waited out like a "not yet", within the caller's deadline
			// (or notYetCeiling without one), not connect_retries. (A
			// proxy's accept-then-close keeps its own rule, refusalOf.)
			kind = refusalNotYet
		}
		if timeout || bouncerError(err) == bouncerQueueTimeout {
			// A timeout is a connectivity failure, but not retried: an
			// unreachable host would only make the caller wait again;
			// PgBouncer's query_wait_timeout at login is one too.
			return nil, &ConnectError{Attempts: attempt + 1, Err: err}
		}
		var wait time.Duration
		switch kind {
		case refusalNotYet:
			// A database starting, a change of primary, a full server:
			// look again soon, so that the caller is served within
			// notYetBackoffMax of the refusal clearing (or at once, when
			// another call's attempt succeeds first: connectWait).
			wait = backoff(notYetN, c.cfg.ConnectBackoff, min(c.cfg.ConnectBackoffMax, c.notYetMax))
			notYetN++
		case refusalProxyClosed:
			if closedN == 0 {
				closedSince = time.Now()
			} else if time.Since(closedSince) >= proxyRetryFor {
				return nil, &ConnectError{Attempts: attempt + 1, Err: err}
			}
			wait = backoff(closedN, proxyBackoff, proxyBackoffMax)
			closedN++
		default:
			if otherN >= retries {
				return nil, &ConnectError{Attempts: attempt + 1, Err: err}
			}
			wait = backoff(otherN, c.cfg.ConnectBackoff, c.cfg.ConnectBackoffMax)
			otherN++
		}
		if counting && breakerConnectClass(class, err) == classGone {
			if due := c.breaker.tripDue(); due > 0 && due < wait {
				wait = due
			}
		}
		if kind != refusalNone {
			// Waited out within the deadline less headroom: the last
			// attempt comes at that limit, not a backoff past it.
			left := time.Until(limit)
			if left <= time.Millisecond {
				return nil, &ConnectError{Attempts: attempt + 1, Err: err}
			}
			wait = min(wait, left)
		} else if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return nil, &ConnectError{Attempts: attempt + 1, Err: err}
		}
		c.stats.connectRetries.Add(1)
		c.logger.LogAttrs(ctx, slog.LevelDebug, "pgresilient: connect failed, retrying",
			slog.Int("attempt", attempt+1), slog.Duration("backoff", wait), slog.String("cause", logCause(err)))
		if werr := c.connectWait(ctx, wait, kind == refusalNotYet || c.connected.Load()); werr != nil {
			switch {
			case errors.Is(werr, ErrCircuitOpen):
				return nil, c.breaker.openError(&ConnectError{Attempts: attempt + 1, Err: err})
			case errors.Is(werr, errPoolFree):
				// A pooled connection came free: database/sql takes it on
				// its next try. Nothing was sent.
				return nil, &ConnectError{Attempts: attempt + 1, Err: err, poolFree: true}
			}
			return nil, &ConnectError{Attempts: attempt + 1, Err: errors.Join(werr, err)}
		}
	}
}

// notYetBackoffMax caps the wait between two attempts of a call refused
// with a "not yet" (a database starting after the application, a server
// shutting down for a change of primary, a standby refused by
// target_session_attrs, a full server, PgBouncer's login retry): the caller
// is served within about this much of the refusal clearing (at most
// maxConnecting attempts under way per Connector, however many calls wait).
// With connect_backoff_max's 5 s instead, writers of TestFailoverSwitchover
// slept through the new primary's first second and failed at their
// deadline.
const notYetBackoffMax = 200 * time.Millisecond

// errPoolFree ends connectWait when a pooled connection came free.
var errPoolFree = errors.New("pgresilient: a pooled connection came free")

// connectWait waits d before the next connection attempt, unless ctx ends,
// the Connector is closed, the breaker opens (an error matching
// ErrCircuitOpen), another of the Connector's connection attempts succeeds
// (nil: the next attempt comes at once) or, if idle, a pooled connection is
// or comes free and the call may take it (errPoolFree).
func (c *Connector) connectWait(ctx context.Context, d time.Duration, idle bool) error {
	var free <-chan struct{}
	if idle {
		ch, done := c.idle.wait()
		defer done()
		free = ch
		if c.idle.available() && c.idle.release(ctx) {
			// One came back before this wait began (the call's
			// refusal crossed it): database/sql has it in its pool
			// by now, or within a moment.
			return errPoolFree
		}
	}
	served, done := c.served.wait()
	defer done()
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.life.Done():
			return errConnectorClosed
		case <-c.breaker.opened():
			return ErrCircuitOpen
		case <-served:
			// Another call's attempt succeeded: the server serves again,
			// try now rather than sleep out the backoff.
			return nil
		case <-free:
			// IsValid just returned: database/sql has yet to pool it.
			if err := c.idle.settle(ctx); err != nil {
				return err
			}
			switch {
			case !c.idle.available():
				free = c.idle.current() // another call took it: wait on
			case c.idle.release(ctx):
				return errPoolFree
			default:
				free = nil // this call used its releases: wait out d
			}
		case <-t.C:
			return nil
		}
	}
}
