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
}

// Error says how many attempts failed, or that the failure is permanent.
func (e *ConnectError) Error() string {
	if e.Permanent {
		return "pgresilient: connect failed, not retried (permanent failure): " + errString(e.Err)
	}
	return "pgresilient: connect failed after " + strconv.Itoa(e.Attempts) + " attempt(s): " + errString(e.Err)
}

// Unwrap returns ErrConnectFailed and the last attempt's error.
func (e *ConnectError) Unwrap() []error { return []error{ErrConnectFailed, e.Err} }

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
// call's budget after a reuse check of the same call timed out.
func (c *Connector) connectOnce(ctx context.Context) (driver.Conn, error) {
	d, ok := c.budgetLeft(ctx, c.cfg.QueryTimeout)
	if !ok {
		return nil, errBudgetSpent
	}
	ctx, cancel := within(ctx, d)
	defer cancel()
	return c.inner.Connect(ctx)
}

// connect opens one connection of the wrapped driver, retrying transient
// failures up to connect_retries times with backoff, always within ctx.
//
// Once the Connector has had a working connection, every failed attempt
// counts against the breaker, and one that times out opens it at once; when
// the breaker opens (by this loop's failures or other calls'), the loop stops
// at once with a *CircuitOpenError wrapping its last *ConnectError. Before
// that, the call as a whole is counted by openBase, and waits for a database
// that is still starting.
func (c *Connector) connect(ctx context.Context) (driver.Conn, error) {
	retries := c.cfg.ConnectRetries
	counting := c.breaker != nil && c.connected.Load()
	for attempt := 0; ; attempt++ {
		dc, err := c.connectOnce(ctx)
		if err == nil {
			c.stats.opened.Add(1)
			if counting {
				c.breaker.after(classNone, tripSpan, nil)
			}
			return dc, nil
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
		if attempt >= retries || timeout || bouncerError(err) == bouncerQueueTimeout {
			// A timeout is a connectivity failure, but not retried: an
			// unreachable host would only make the caller wait again;
			// PgBouncer's query_wait_timeout at login is one too.
			return nil, &ConnectError{Attempts: attempt + 1, Err: err}
		}
		wait := backoff(attempt, c.cfg.ConnectBackoff, c.cfg.ConnectBackoffMax)
		if counting {
			if due := c.breaker.tripDue(); due > 0 && due < wait {
				wait = due
			}
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return nil, &ConnectError{Attempts: attempt + 1, Err: err}
		}
		c.stats.connectRetries.Add(1)
		c.logger.LogAttrs(ctx, slog.LevelDebug, "pgresilient: connect failed, retrying",
			slog.Int("attempt", attempt+1), slog.Duration("backoff", wait), slog.String("cause", logCause(err)))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, &ConnectError{Attempts: attempt + 1, Err: errors.Join(ctx.Err(), err)}
		case <-c.breaker.opened():
			t.Stop()
			return nil, c.breaker.openError(&ConnectError{Attempts: attempt + 1, Err: err})
		case <-t.C:
		}
	}
}

// errBudgetSpent is a connection attempt not made: a reuse check of the same
// call already timed out, and took all of query_timeout.
var errBudgetSpent error = budgetError{}

type budgetError struct{}

func (budgetError) Error() string {
	return "pgresilient: query_timeout exceeded: this call's reuse check already took it"
}

func (budgetError) Unwrap() error { return context.DeadlineExceeded }

// callBudget is what remains of query_timeout for one call, after one of its
// reuse checks timed out: database/sql passes the same ctx to each attempt
// of a call (another pooled connection, then a new one), which then get only
// what remains, so a blackhole costs a call one query_timeout, not two.
type callBudget struct {
	ctx   context.Context
	until time.Time
}

// spend starts ctx's budget: until is when its first query_timeout ends.
func (c *Connector) spend(ctx context.Context, until time.Time) {
	c.budget.Store(&callBudget{ctx: ctx, until: until})
}

// budgetLeft returns d, or less if ctx's call has a budget, and false if
// that is spent.
func (c *Connector) budgetLeft(ctx context.Context, d time.Duration) (time.Duration, bool) {
	b := c.budget.Load()
	if b == nil || !sameCtx(b.ctx, ctx) {
		return d, true
	}
	left := time.Until(b.until)
	if left <= 0 {
		return 0, false
	}
	if d <= 0 || left < d {
		return left, true
	}
	return d, true
}

// sameCtx compares two contexts by identity; a context of a type that is not
// comparable is never the same.
func sameCtx(a, b context.Context) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// breakerConnectClass is what a failed connection attempt of class means to
// the breaker: a server that answered, but not as wanted, is no outage. It
// is one that failed target_session_attrs's check (a change of primary under
// way: counted, five of them opened the breaker while no server accepted
// writes, and it went on refusing writes after the new primary did), or a
// full PgBouncer (max_client_conn). Such attempts are still retried.
func breakerConnectClass(class errClass, err error) errClass {
	if class == classGone && (errors.Is(err, errWrongRole) || bouncerError(err) == bouncerFull) {
		return classOther
	}
	return class
}
