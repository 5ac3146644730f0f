package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestClassify(t *testing.T) {
	live := context.Background()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	resetOp := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}

	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want errClass
	}{
		{"nil", live, nil, classNone},
		{"skip", live, driver.ErrSkip, classOther},
		{"plain error", live, errors.New("cannot convert"), classOther},
		{"unique violation", live, &pgconn.PgError{Severity: "ERROR", Code: "23505"}, classServer},
		{"wrapped unique violation", live, fmt.Errorf("x: %w", &pgconn.PgError{Code: "23505"}), classServer},
		{"aborted transaction", live, &pgconn.PgError{Severity: "ERROR", Code: "25P02"}, classServer},
		{"statement_timeout", live, &pgconn.PgError{Severity: "ERROR", Code: "57014"}, classServer},
		{"read-only", live, &pgconn.PgError{Severity: "ERROR", Code: "25006"}, classServer},
		{"admin shutdown", live, &pgconn.PgError{Severity: "FATAL", Code: "57P01"}, classGone},
		{"admin shutdown, code only", live, &pgconn.PgError{Code: "57P01"}, classGone},
		{"crash shutdown", live, &pgconn.PgError{Code: "57P02"}, classGone},
		{"cannot connect now", live, &pgconn.PgError{Code: "57P03"}, classGone},
		{"connection failure", live, &pgconn.PgError{Code: "08006"}, classGone},
		{"any FATAL", live, &pgconn.PgError{Severity: "FATAL", Code: "XX000"}, classGone},
		{"idle session timeout", live, &pgconn.PgError{Code: "57P05"}, classGone},
		{"bad conn", live, driver.ErrBadConn, classGone},
		{"EOF", live, io.EOF, classGone},
		{"unexpected EOF", live, fmt.Errorf("read: %w", io.ErrUnexpectedEOF), classGone},
		{"ECONNRESET", live, syscall.ECONNRESET, classGone},
		{"EPIPE", live, syscall.EPIPE, classGone},
		{"net.OpError reset", live, resetOp, classGone},
		{"net.ErrClosed", live, net.ErrClosed, classGone},
		{"pgconn conn closed", live, pgconn.ErrConnClosed, classGone},
		{"dns", live, &net.DNSError{Err: "no such host", Name: "db", IsTemporary: true}, classGone},
		{"our deadline", live, context.DeadlineExceeded, classGone},
		{"caller canceled", done, context.Canceled, classCanceled},
		{"caller canceled, wrapped", done, fmt.Errorf("q: %w", context.Canceled), classCanceled},
		{"caller canceled, bad conn", done, driver.ErrBadConn, classCanceled},
		{"caller canceled, SQL error", done, &pgconn.PgError{Code: "23505"}, classServer},
		{"disconnect error", live, &DisconnectError{Op: "exec", Err: errors.New("x")}, classGone},
		{"unknown ctx, EOF", nil, io.EOF, classGone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := classify(tt.ctx, tt.err); got != tt.want {
				t.Errorf("classify(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// TestSQLStateDecisions: every SQLSTATE and message pgresilient decides on,
// and what each decision answers for it, read through the one table
// (sqlstates) by the function that decides. A code dropped from the table,
// or a decision that reads something else, changes a row here.
func TestSQLStateDecisions(t *testing.T) {
	type answers struct {
		gone, transient, notYet, readOnly, retryTx, canceled, syntax, stale, cachedRefused, neverSeen, refusedCommit bool
	}
	decide := func(e *pgconn.PgError) answers {
		var (
			st = lookupSQLState(e.Code)
			// Wrapped, as the decisions meet them.
			err = fmt.Errorf("exec: %w", e)
		)
		return answers{
			gone:          serverGone(e),
			transient:     connectClass(context.Background(), err) == classGone,
			notYet:        notYet(err),
			readOnly:      st.readOnly,
			retryTx:       txRetryableServerError(err),
			canceled:      st.canceled,
			syntax:        placeholderHint(err, "select ?") != err,
			stale:         staleStatement(err),
			cachedRefused: cachedRefused(err),
			neverSeen:     neverSeen(err),
			refusedCommit: refusedCommit(err),
		}
	}
	cached := `prepared statement "stmtcache_0123" does not exist`
	tests := []struct {
		name string
		err  *pgconn.PgError
		want answers
	}{
		{"unique violation", &pgconn.PgError{Severity: "ERROR", Code: "23505"}, answers{}},
		{"connection class", &pgconn.PgError{Severity: "ERROR", Code: "08006"}, answers{gone: true, transient: true}},
		{"admin shutdown", &pgconn.PgError{Severity: "FATAL", Code: "57P01"}, answers{gone: true, transient: true, refusedCommit: true}},
		{"admin shutdown, ERROR", &pgconn.PgError{Severity: "ERROR", Code: "57P01"}, answers{gone: true, transient: true}},
		{"crash shutdown", &pgconn.PgError{Severity: "FATAL", Code: "57P02"}, answers{gone: true, transient: true}},
		{"cannot connect now", &pgconn.PgError{Severity: "FATAL", Code: "57P03"}, answers{gone: true, transient: true, notYet: true}},
		{"database dropped", &pgconn.PgError{Severity: "FATAL", Code: "57P04"}, answers{gone: true}},
		{"idle in transaction timeout", &pgconn.PgError{Severity: "FATAL", Code: "25P03"}, answers{gone: true, refusedCommit: true}},
		{"too many connections", &pgconn.PgError{Severity: "FATAL", Code: "53300"}, answers{gone: true, transient: true, notYet: true}},
		{"idle session timeout", &pgconn.PgError{Severity: "FATAL", Code: "57P05"}, answers{gone: true}},
		{"insufficient resources", &pgconn.PgError{Severity: "ERROR", Code: "53000"}, answers{transient: true}},
		{"disk full", &pgconn.PgError{Severity: "ERROR", Code: "53100"}, answers{transient: true}},
		{"out of memory", &pgconn.PgError{Severity: "ERROR", Code: "53200"}, answers{transient: true}},
		{"system error", &pgconn.PgError{Severity: "ERROR", Code: "58000"}, answers{transient: true}},
		{"io error", &pgconn.PgError{Severity: "ERROR", Code: "58030"}, answers{transient: true}},
		{"read-only transaction", &pgconn.PgError{Severity: "ERROR", Code: "25006"}, answers{readOnly: true}},
		{"serialization failure", &pgconn.PgError{Severity: "ERROR", Code: "40001"}, answers{retryTx: true}},
		{"deadlock", &pgconn.PgError{Severity: "ERROR", Code: "40P01"}, answers{retryTx: true}},
		{"query canceled", &pgconn.PgError{Severity: "ERROR", Code: "57014"}, answers{canceled: true}},
		{"syntax error", &pgconn.PgError{Severity: "ERROR", Code: "42601"}, answers{syntax: true}},
		{"cached plan changed", &pgconn.PgError{Severity: "ERROR", Code: "0A000", Routine: "RevalidateCachedQuery"}, answers{stale: true}},
		{"cached plan changed, message", &pgconn.PgError{Severity: "ERROR", Code: "0A000", Message: "cached plan must not change result type"}, answers{stale: true}},
		{"feature not supported", &pgconn.PgError{Severity: "ERROR", Code: "0A000", Message: "cannot do that"}, answers{}},
		{"cached statement missing", &pgconn.PgError{Severity: "ERROR", Code: "26000", Message: cached}, answers{stale: true, cachedRefused: true}},
		{"own statement missing", &pgconn.PgError{Severity: "ERROR", Code: "26000", Message: `prepared statement "mine" does not exist`}, answers{stale: true}},
		{"cached statement duplicate", &pgconn.PgError{Severity: "ERROR", Code: "42P05", Message: strings.Replace(cached, "does not exist", "already exists", 1)}, answers{stale: true, cachedRefused: true}},
		{"own statement duplicate", &pgconn.PgError{Severity: "ERROR", Code: "42P05", Message: `prepared statement "mine" already exists`}, answers{}},
		{"xid in the future", &pgconn.PgError{Severity: "ERROR", Code: "22023", Message: `transaction ID 99999 is in the future`}, answers{neverSeen: true}},
		{"other invalid parameter", &pgconn.PgError{Severity: "ERROR", Code: "22023", Message: `invalid value`}, answers{}},
		{"PgBouncer login failing", &pgconn.PgError{Severity: "FATAL", Code: "08P01", Message: bouncerLoginFailing}, answers{gone: true, transient: true, notYet: true}},
		{"PgBouncer full", &pgconn.PgError{Severity: "FATAL", Code: "08P01", Message: bouncerFull}, answers{gone: true, transient: true, notYet: true}},
		{"PgBouncer queue timeout", &pgconn.PgError{Severity: "FATAL", Code: "08P01", Message: "query_wait_timeout"}, answers{gone: true, transient: true, notYet: true}},
		{"PgBouncer, another FATAL", &pgconn.PgError{Severity: "FATAL", Code: "08P01", Message: "server conn crashed?"}, answers{gone: true, transient: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := decide(tt.err); got != tt.want {
				t.Errorf("%s %q:\n got %+v\nwant %+v", tt.err.Code, tt.err.Message, got, tt.want)
			}
		})
	}
	// Every code named in the table has a row above.
	for code := range sqlstates {
		if len(code) != 5 {
			continue
		}
		found := false
		for _, tt := range tests {
			found = found || tt.err.Code == code
		}
		if !found {
			t.Errorf("sqlstates holds %s, which no row here decides on", code)
		}
	}
}
