package pgresilient

import (
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestDisconnectErrorMatching(t *testing.T) {
	cause := &pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"}
	unsafe := error(&DisconnectError{Op: "exec", Err: cause})
	if !errors.Is(unsafe, ErrConnLost) || errors.Is(unsafe, driver.ErrBadConn) {
		t.Errorf("unsafe: Is(ErrConnLost)=%v Is(ErrBadConn)=%v, want true, false",
			errors.Is(unsafe, ErrConnLost), errors.Is(unsafe, driver.ErrBadConn))
	}
	var pgErr *pgconn.PgError
	if !errors.As(unsafe, &pgErr) || pgErr.Code != "57P01" {
		t.Errorf("errors.As(*pgconn.PgError) lost the cause: %v", unsafe)
	}
	if !strings.Contains(unsafe.Error(), "outcome unknown") {
		t.Errorf("message %q does not say the outcome is unknown", unsafe)
	}
	// pgx stdlib reports some losses after a send as a bare ErrBadConn: an
	// unsafe error must still not match it, or database/sql retries.
	masked := error(&DisconnectError{Op: "exec", Err: fmt.Errorf("x: %w", driver.ErrBadConn)})
	if errors.Is(masked, driver.ErrBadConn) || !errors.Is(masked, ErrConnLost) {
		t.Errorf("unsafe error over an ErrBadConn cause: Is(ErrBadConn)=%v", errors.Is(masked, driver.ErrBadConn))
	}
	safe := error(&DisconnectError{Op: "exec", safe: true, Err: io.EOF})
	if errors.Is(safe, ErrConnLost) || !errors.Is(safe, driver.ErrBadConn) || !errors.Is(safe, io.EOF) {
		t.Errorf("safe: wrong matches: %v", safe)
	}
	for _, s := range []error{ErrConnLost, ErrCircuitOpen, ErrTxAborted} {
		if errors.Is(s, driver.ErrBadConn) {
			t.Errorf("%v matches driver.ErrBadConn", s)
		}
	}
	authFail := &pgconn.PgError{Severity: "FATAL", Code: "28P01"}
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{unsafe, true},
		{io.EOF, true},
		{&pgconn.PgError{Code: "23505"}, false},
		{&ConnectError{Attempts: 1, Permanent: true, Err: authFail}, false},
		{&ConnectError{Attempts: 4, Err: syscall.ECONNREFUSED}, true},
	} {
		if got := IsDisconnect(tt.err); got != tt.want {
			t.Errorf("IsDisconnect(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
