package pgresilient

import (
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestErrBadConnRule checks that database/sql retries only what never reached
// the server: each case scripts exactly the expectations that may be used, so
// a retry of an unsafe statement fails ExpectationsWereMet or the call.
func TestErrBadConnRule(t *testing.T) {
	resetOp := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	tests := []struct {
		name        string
		errs        []error // what successive attempts return
		wantExecs   int     // expectations consumed
		wantLost    bool    // errors.Is(err, ErrConnLost)
		wantBadConn bool    // errors.Is(err, driver.ErrBadConn)
		wantPg      string  // SQLSTATE reachable with errors.As
	}{
		{name: "EOF after send", errs: []error{io.EOF}, wantExecs: 1, wantLost: true},
		{name: "reset after send", errs: []error{resetOp}, wantExecs: 1, wantLost: true},
		{name: "terminated backend", errs: []error{&pgconn.PgError{Severity: "FATAL", Code: "57P01"}}, wantExecs: 1, wantLost: true, wantPg: "57P01"},
		{name: "unique violation", errs: []error{&pgconn.PgError{Severity: "ERROR", Code: "23505"}}, wantExecs: 1, wantPg: "23505"},
		{name: "bad conn is retried", errs: []error{driver.ErrBadConn, nil}, wantExecs: 2},
		{name: "bad conn every time", errs: []error{driver.ErrBadConn, driver.ErrBadConn, driver.ErrBadConn}, wantExecs: 3, wantBadConn: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, mock, _ := openMock(t, "breaker=off")
			for _, e := range tt.errs {
				ex := mock.ExpectExec("insert into t").WillReturnResult(sqlmock.NewResult(0, 1))
				if e != nil {
					ex.WillReturnError(e)
				}
			}
			_, err := db.Exec("insert into t values (1)")
			if got := errors.Is(err, ErrConnLost); got != tt.wantLost {
				t.Errorf("Is(ErrConnLost) = %v, want %v (err %v)", got, tt.wantLost, err)
			}
			if got := errors.Is(err, driver.ErrBadConn); got != tt.wantBadConn {
				t.Errorf("Is(ErrBadConn) = %v, want %v (err %v)", got, tt.wantBadConn, err)
			}
			var pgErr *pgconn.PgError
			if tt.wantPg != "" && (!errors.As(err, &pgErr) || pgErr.Code != tt.wantPg) {
				t.Errorf("errors.As(*PgError) = %v, want SQLSTATE %s", err, tt.wantPg)
			}
			if tt.wantPg == "" && !tt.wantLost && !tt.wantBadConn && err != nil {
				t.Errorf("unexpected error %v", err)
			}
			if err := mock.ExpectationsWereMet(); err != nil {
				t.Errorf("expectations: %v", err)
			}
		})
	}
}
