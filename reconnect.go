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

// ConnectError is returned when a connection could not be opened. It wraps
// the last attempt's error (a *pgconn.ConnectError from pgx, which never holds
// the password).
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

// Unwrap returns the last attempt's error.
func (e *ConnectError) Unwrap() error { return e.Err }

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
// connect_timeout, when set, bounds it too).
func (c *Connector) connectOnce(ctx context.Context) (driver.Conn, error) {
	ctx, cancel := within(ctx, c.cfg.QueryTimeout)
	defer cancel()
	return c.inner.Connect(ctx)
}

// connect opens one connection of the wrapped driver, retrying transient
// failures up to connect_retries times with backoff, always within ctx.
func (c *Connector) connect(ctx context.Context) (driver.Conn, error) {
	retries := c.cfg.ConnectRetries
	for attempt := 0; ; attempt++ {
		dc, err := c.connectOnce(ctx)
		if err == nil {
			c.stats.opened.Add(1)
			return dc, nil
		}
		c.stats.connectFailures.Add(1)
		class := connectClass(ctx, err)
		switch {
		case class == classCanceled:
			return nil, err
		case class != classGone:
			return nil, &ConnectError{Attempts: attempt + 1, Permanent: true, Err: err}
		case attempt >= retries || isTimeout(err) || bouncerError(err) == bouncerQueueTimeout:
			// A timeout is a connectivity failure, but not retried: an
			// unreachable host would only make the caller wait again;
			// PgBouncer's query_wait_timeout at login is one too.
			return nil, &ConnectError{Attempts: attempt + 1, Err: err}
		}
		if c.breaker != nil && c.breaker.isOpen() {
			// Other calls opened the breaker meanwhile: stop here.
			return nil, c.breaker.openError(errOpenState)
		}
		wait := backoff(attempt, c.cfg.ConnectBackoff, c.cfg.ConnectBackoffMax)
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
		case <-t.C:
		}
	}
}
