package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgresilient/pgresilient/pgtest"
)

// TestCancelBeforeClose: a statement ended by query_timeout or by the
// caller's deadline, in autocommit: pgresilient has the server cancel it and
// says so (ErrCanceled wrapping the 57014; the caller's context error too):
// the row is not there, and the connection is kept. Raw pgx closes the
// connection and says only that the deadline passed, outcome unknown. Direct,
// and through PgBouncer (session and transaction pooling), which forwards the
// cancel.
func TestCancelBeforeClose(t *testing.T) {
	c := needCluster(t)
	type path struct {
		name string
		dsn  string
	}
	paths := []func(t *testing.T) path{
		func(*testing.T) path { return path{"direct", c.DSN()} },
		func(t *testing.T) path {
			b := pgtest.NewBouncerT(t, c, pgtest.BouncerConfig{PoolMode: pgtest.PoolSession})
			return path{"pgbouncer-session", b.DSN()}
		},
		func(t *testing.T) path {
			b := pgtest.NewBouncerT(t, c, pgtest.BouncerConfig{PoolMode: pgtest.PoolTransaction})
			return path{"pgbouncer-transaction", b.DSN() + "&default_query_exec_mode=exec"}
		},
	}
	for _, mk := range paths {
		p := mk(t)
		for _, by := range []string{"query_timeout", "deadline"} {
			t.Run(p.name+"/"+by, func(t *testing.T) {
				sideBySide(t, func(t *testing.T, driverName string) {
					table := freshTable(t, c, "cancel_"+by, driverName, "(id int)", "")
					dsn := p.dsn
					if driverName == DriverName && by == "query_timeout" {
						dsn += "&query_timeout=200ms"
					}
					db := openDB(t, driverName, dsn)
					db.SetMaxOpenConns(1)
					pid := backendPID(t, db)

					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					if driverName == "pgx" || by == "deadline" {
						cancel()
						ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
					}
					began := time.Now()
					_, err := db.ExecContext(ctx, "insert into "+table+" select 1 from pg_sleep(2)")
					took := time.Since(began)
					cancel()
					time.Sleep(100 * time.Millisecond) // a statement not canceled would still be sleeping
					n, cerr := countRows(context.Background(), c, table)
					if cerr != nil {
						t.Fatal(cerr)
					}
					after := backendPID(t, db)
					if driverName == "pgx" {
						if err == nil || errors.Is(err, ErrCanceled) {
							t.Fatalf("raw pgx: %v", err)
						}
						t.Logf("MEASURE cancel/%s/%s pgx took=%v err=%q rows=%d connection_kept=%v", p.name, by, took, err, n, after == pid)
						return
					}
					var pgErr *pgconn.PgError
					if !errors.Is(err, ErrCanceled) || errors.Is(err, ErrConnLost) || errors.Is(err, sql.ErrConnDone) ||
						!errors.As(err, &pgErr) || pgErr.Code != "57014" {
						t.Fatalf("want ErrCanceled wrapping 57014, not ErrConnLost; got %v", err)
					}
					if by == "deadline" && !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("the caller's deadline ended it, but the error does not match context.DeadlineExceeded: %v", err)
					}
					if n != 0 {
						t.Errorf("%d rows: the canceled insert committed", n)
					}
					if after != pid {
						t.Errorf("the connection was replaced (backend %d, then %d): a canceled statement leaves it usable", pid, after)
					}
					if cn, _ := ConnectorOf(db); cn.Stats().Canceled != 1 || cn.Stats().ConnLost != 0 {
						t.Errorf("Stats: Canceled %d, ConnLost %d; want 1 and 0", cn.Stats().Canceled, cn.Stats().ConnLost)
					}
					if took > time.Second {
						t.Errorf("the call took %v: the cancel should end it within a few ms of its deadline", took)
					}
					t.Logf("MEASURE cancel/%s/%s %s took=%v err=%q rows=%d connection_kept=%v", p.name, by, driverName, took, err, n, after == pid)
				})
			})
		}
	}
}

// backendPID is the server process of the connection q runs on: a pool's
// (its one connection, or whichever it takes), a transaction's or a
// *sql.Conn's.
func backendPID(t testing.TB, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) int {
	t.Helper()
	var pid int
	if err := q.QueryRowContext(context.Background(), "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatalf("pg_backend_pid: %v", err)
	}
	return pid
}

// TestCancelPendingDiscards: a cancel request that went out but that no 57014
// answered (the statement ended by itself as its context ended) could land on
// the backend's next statement: the connection is not used again. The next
// call gets a new connection, and succeeds.
func TestCancelPendingDiscards(t *testing.T) {
	c := needCluster(t)
	cn, err := NewConnector(c.DSN())
	if err != nil {
		t.Fatal(err)
	}
	db := openDBConnector(t, cn)
	db.SetMaxOpenConns(1)
	pid := backendPID(t, db)
	sc, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Raw(func(dc any) error {
		dc.(*conn).base.wire.cancel.sent.Store(true) // as HandleCancel leaves it
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// On the same pinned connection: refused before anything is sent.
	if _, err := sc.ExecContext(context.Background(), "select 1"); !errors.Is(err, driver.ErrBadConn) {
		t.Fatalf("a connection with a cancel on its way: %v, want driver.ErrBadConn (nothing sent)", err)
	}
	sc.Close()
	if after := backendPID(t, db); after == pid {
		t.Errorf("backend %d used again after a cancel request that no 57014 answered", pid)
	}
}

// TestCanceledErrorIsTimeout: code written for pgx asks pgconn.Timeout about
// a statement its deadline ended (pgx's own stdlib tests do); a CanceledError
// ended by a deadline answers true, as pgx's own error does, and one ended by
// a cancellation does not. The breaker sees the server's answer, not a
// failure.
func TestCanceledErrorIsTimeout(t *testing.T) {
	pgErr := &pgconn.PgError{Severity: "ERROR", Code: "57014"}
	for _, tt := range []struct {
		name string
		err  *CanceledError
		want bool
	}{
		{"query_timeout", &CanceledError{Op: OpExec, By: "query_timeout 1s", Err: pgErr}, true},
		{"caller's deadline", &CanceledError{Op: OpExec, Err: pgErr, ctx: context.DeadlineExceeded}, true},
		{"caller's cancellation", &CanceledError{Op: OpExec, Err: pgErr, ctx: context.Canceled}, false},
	} {
		if got := pgconn.Timeout(tt.err); got != tt.want {
			t.Errorf("%s: pgconn.Timeout = %v, want %v", tt.name, got, tt.want)
		}
		if !errors.Is(tt.err, ErrCanceled) || IsDisconnect(tt.err) {
			t.Errorf("%s: ErrCanceled %v, IsDisconnect %v", tt.name, errors.Is(tt.err, ErrCanceled), IsDisconnect(tt.err))
		}
		if c := classify(context.Background(), tt.err); c != classServer {
			t.Errorf("%s: classified %v, want server (the server answered)", tt.name, c)
		}
	}
}
