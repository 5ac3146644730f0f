package pgresilient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql/driver"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// connectClass classifies an error from opening a connection. Unlike a
// statement's, a FATAL server error here is the server answering (bad
// password, no such database): a permanent failure, and a sign the server is
// up. Only the FATALs that mean "not now" are connectivity failures.
func connectClass(ctx context.Context, err error) errClass {
	general := classify(ctx, err)
	if general == classNone || general == classCanceled {
		return general
	}
	var coe *CircuitOpenError
	if errors.As(err, &coe) {
		return classOther
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if transientServerCode(pgErr.Code) {
			return classGone
		}
		return classServer
	}
	if permanentTLS(err) {
		return classOther
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		if dnsErr.IsNotFound && !dnsErr.IsTemporary {
			return classOther // no such host: retrying will not help
		}
		return classGone
	}
	if general == classGone {
		return classGone
	}
	return classOther
}

// transientServerCode reports the SQLSTATEs a server sends at connection time
// that may clear up by themselves.
func transientServerCode(code string) bool {
	switch code {
	case "57P03", // cannot_connect_now: starting up, shutting down, in recovery
		"57P01", "57P02", // shutdown under way
		"53300",                   // too_many_connections
		"53000", "53100", "53200", // insufficient resources, disk full, out of memory
		"58000", "58030": // system_error, io_error
		return true
	}
	return len(code) == 5 && code[:2] == "08"
}

// permanentTLS reports TLS and certificate failures: configuration problems
// that no retry fixes.
func permanentTLS(err error) bool {
	var (
		unknownAuth x509.UnknownAuthorityError
		hostErr     x509.HostnameError
		certInvalid x509.CertificateInvalidError
		recordErr   tls.RecordHeaderError
		alertErr    tls.AlertError
		verifyErr   *tls.CertificateVerificationError
	)
	return errors.As(err, &unknownAuth) || errors.As(err, &hostErr) || errors.As(err, &certInvalid) ||
		errors.As(err, &recordErr) || errors.As(err, &alertErr) || errors.As(err, &verifyErr)
}

// ConnectError is returned when a connection could not be opened. It wraps
// the last attempt's error (a *pgconn.ConnectError from pgx, which never holds
// the password).
type ConnectError struct {
	Attempts  int  // attempts made, 1 + retries
	Permanent bool // a failure no retry fixes: authentication, no such database, TLS
	Err       error
}

func (e *ConnectError) Error() string {
	if e.Permanent {
		return "pgresilient: connect failed, not retried (permanent failure): " + errString(e.Err)
	}
	return "pgresilient: connect failed after " + strconv.Itoa(e.Attempts) + " attempt(s): " + errString(e.Err)
}

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

// isTimeout reports a deadline or I/O timeout (not a caller's cancellation,
// which connectClass already sorted out).
func isTimeout(err error) bool {
	if pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
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
		case attempt >= retries || isTimeout(err):
			// A timeout is a connectivity failure, but not retried: an
			// unreachable host would only make the caller wait again.
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
