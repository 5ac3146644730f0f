package pgresilient

import (
	"database/sql"
	"database/sql/driver"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestConnectRetries scripts connection failures.
func TestConnectRetries(t *testing.T) {
	refused := dialRefused
	authFail := &pgconn.PgError{Severity: "FATAL", Code: "28P01", Message: "password authentication failed"}
	tests := []struct {
		name         string
		params       string
		errs         []error
		wantErr      bool
		wantPerm     bool
		wantConnects int64
		wantBreaker  BreakerState
		connected    bool // the Connector had a working connection before
	}{
		{"transient then ok", "connect_retries=3&connect_backoff=1ms&connect_backoff_max=2ms&breaker_failures=1", []error{refused, refused}, false, false, 3, BreakerClosed, false},
		{"retries exhausted", "connect_retries=2&connect_backoff=1ms&connect_backoff_max=2ms&breaker_failures=2", []error{refused, refused, refused, refused}, true, false, 3, BreakerClosed, true},
		{"no retries", "connect_retries=0&breaker_failures=1", []error{refused}, true, false, 1, BreakerClosed, true},
		// Before the first working connection, a refusal is a database
		// that may still be starting: waited out, connect_retries or not.
		{"before the first connection", "connect_retries=0&connect_backoff=1ms&connect_backoff_max=2ms&breaker_failures=1", []error{refused, refused, refused, refused}, false, false, 5, BreakerClosed, false},
		{"starting up", "connect_retries=1&connect_backoff=1ms", []error{&pgconn.PgError{Severity: "FATAL", Code: "57P03"}}, false, false, 2, BreakerClosed, false},
		{"auth failure is permanent", "connect_retries=5&connect_backoff=1ms&breaker_failures=1", []error{authFail}, true, true, 1, BreakerClosed, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd := &fakeDriver{connectErrs: tt.errs}
			c, err := NewConnector("fake?"+tt.params, WithDriver(fd))
			if err != nil {
				t.Fatal(err)
			}
			db := sql.OpenDB(c)
			defer db.Close()
			c.connected.Store(tt.connected)
			err = db.Ping()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Ping: %v, want error %v", err, tt.wantErr)
			}
			var ce *ConnectError
			if tt.wantErr && !errors.As(err, &ce) {
				t.Fatalf("want a *ConnectError, got %T %v", err, err)
			}
			if tt.wantErr && ce.Permanent != tt.wantPerm {
				t.Errorf("Permanent = %v, want %v", ce.Permanent, tt.wantPerm)
			}
			if tt.wantErr && errors.Is(err, driver.ErrBadConn) {
				t.Errorf("a connect error matches ErrBadConn: database/sql would retry it")
			}
			if got := fd.connects.Load(); got != tt.wantConnects {
				t.Errorf("connect attempts = %d, want %d", got, tt.wantConnects)
			}
			if got := c.Stats().Breaker; got != tt.wantBreaker {
				t.Errorf("breaker = %v, want %v (one call counts once)", got, tt.wantBreaker)
			}
		})
	}
}

func TestBackoffBounds(t *testing.T) {
	base, max := 10*time.Millisecond, 80*time.Millisecond
	for n := range 10 {
		ceil := min(base<<n, max)
		for range 200 {
			if d := backoff(n, base, max); d < 0 || d > ceil {
				t.Fatalf("backoff(%d) = %v, outside [0, %v]", n, d, ceil)
			}
		}
	}
}
