package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgresilient/pgresilient/pgtest"
)

// Outcome certainty at COMMIT: what the wire already knows (nothing of
// COMMIT written, the server refused it before running it) is said as
// ErrNotCommitted, not "outcome unknown"; RunTx runs such a transaction
// again. Side by side with raw pgx.

// wantNotCommitted fails the test unless err says "did not commit": it
// matches ErrNotCommitted, and neither ErrConnLost nor driver.ErrBadConn.
func wantNotCommitted(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrNotCommitted) || errors.Is(err, ErrConnLost) || errors.Is(err, driver.ErrBadConn) {
		t.Errorf("want ErrNotCommitted, not ErrConnLost nor ErrBadConn; got %v", err)
	}
}

// terminate ends backend pid with pg_terminate_backend and waits until it
// has exited.
func terminate(t *testing.T, c *pgtest.Cluster, pid int) {
	t.Helper()
	ctx := context.Background()
	if err := c.Exec(ctx, "select pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := pgtest.QueryValue[int](ctx, c, "select count(*)::int from pg_stat_activity where pid = $1", pid)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %d still there 5s after pg_terminate_backend", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitActive waits until backend pid runs a statement starting with prefix.
func waitActive(t *testing.T, c *pgtest.Cluster, pid int, prefix string) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(5 * time.Second)
	for {
		q, err := pgtest.QueryValue[string](ctx, c,
			"select coalesce((select query from pg_stat_activity where pid = $1 and state = 'active'), '')", pid)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(strings.ToLower(q), prefix) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %d did not start %q within 5s (running %q)", pid, prefix, q)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCommitRefused: the server ends the session with FATAL 57P01 in reply
// to COMMIT, at two moments: the backend was terminated while idle in the
// transaction (the COMMIT reaches a dead session), and while running COMMIT
// (a deferred constraint trigger sleeps in it, before the commit record).
// Neither commits; pgresilient says ErrNotCommitted, raw pgx returns the
// FATAL, which nothing distinguishes from a loss after the commit.
func TestCommitRefused(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	for _, moment := range []string{"idle in transaction", "running COMMIT"} {
		t.Run(moment, func(t *testing.T) {
			sideBySide(t, func(t *testing.T, name string) {
				table := freshTable(t, c, "tcrefused", name, "(id int)", "")
				if moment == "running COMMIT" {
					// A deferred constraint trigger runs at COMMIT, before
					// the commit record is written: it sleeps there.
					if err := c.Exec(ctx, `create or replace function tcrefused_sleep() returns trigger language plpgsql as
						$$ begin perform pg_sleep(5); return null; end $$;
						create constraint trigger tcrefused_sleep after insert on `+table+`
						deferrable initially deferred for each row execute function tcrefused_sleep()`); err != nil {
						t.Fatal(err)
					}
				}
				db := openDB(t, name, c.DSN())
				tx, err := db.Begin()
				if err != nil {
					t.Fatal(err)
				}
				pid := backendPID(t, tx)
				if _, err := tx.Exec("insert into " + table + " values (1)"); err != nil {
					t.Fatal(err)
				}
				if moment == "idle in transaction" {
					terminate(t, c, pid)
					err = tx.Commit()
				} else {
					done := make(chan error, 1)
					go func() { done <- tx.Commit() }()
					waitActive(t, c, pid, "commit")
					terminate(t, c, pid)
					err = <-done
				}
				n, cerr := countRows(ctx, c, table)
				if cerr != nil {
					t.Fatal(cerr)
				}
				var pgErr *pgconn.PgError
				code := ""
				if errors.As(err, &pgErr) {
					code = pgErr.Severity + " " + pgErr.Code
				}
				t.Logf("MEASURE COMMIT refused (%s), %s: %d row(s); server said %q; error: %v", moment, name, n, code, err)
				if n != 0 {
					t.Errorf("%d rows: the terminated transaction committed", n)
				}
				if code != "FATAL 57P01" {
					t.Errorf("the server's reply was %q, want FATAL 57P01: the test did not cause what it measures", code)
				}
				if name == DriverName {
					wantNotCommitted(t, err)
				}
			})
		})
	}
}

// TestCommitNotWritten: the connection was reset (both sides) while the
// transaction was open and idle, and the client learns it only when COMMIT's
// write fails: no byte of COMMIT reached the socket, so it did not commit.
func TestCommitNotWritten(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	sideBySide(t, func(t *testing.T, name string) {
		table := freshTable(t, c, "tcnowrite", name, "(id int)", "")
		p := newProxy(t, c)
		db := openDB(t, name, c.DSNAt(p.Addr()))
		var before Stats
		if cn, ok := ConnectorOf(db); ok {
			before = cn.Stats()
		}
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("insert into " + table + " values (1)"); err != nil {
			t.Fatal(err)
		}
		p.Cut()
		time.Sleep(50 * time.Millisecond) // let the reset arrive: the write of COMMIT then fails at once
		err = tx.Commit()
		n, cerr := pollRows(ctx, c, table, 0)
		if cerr != nil {
			t.Fatal(cerr)
		}
		t.Logf("MEASURE COMMIT not written, %s: %d row(s); error: %v", name, n, err)
		if err == nil {
			t.Fatal("commit succeeded over a reset connection")
		}
		if n != 0 {
			t.Errorf("%d rows committed", n)
		}
		if name == DriverName {
			wantNotCommitted(t, err)
			cn, _ := ConnectorOf(db)
			st := cn.Stats()
			if d := st.CommitsNotCommitted - before.CommitsNotCommitted; d != 1 {
				t.Errorf("CommitsNotCommitted grew by %d, want 1", d)
			}
			if d := st.ConnLost - before.ConnLost; d != 0 {
				t.Errorf("ConnLost grew by %d, want 0: the outcome is known", d)
			}
		}
	})
}

// TestRunTxCommitRefused: the first attempt's backend is terminated while
// idle in the transaction, after fn. With TxResolveCommit(false) its COMMIT
// is answered FATAL 57P01: over pgresilient RunTx knows it did not commit and
// runs it again (2 attempts, 1 row); over raw pgx it must assume the worst
// (1 attempt, "may have committed", 0 rows). With the default, the read of
// the transaction id before COMMIT meets the termination first: pgresilient
// says the connection was lost inside the transaction and RunTx runs it
// again; raw pgx's FATAL says nothing about where, and is returned.
func TestRunTxCommitRefused(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	for _, resolve := range []bool{false, true} {
		t.Run(fmt.Sprintf("resolve=%v", resolve), func(t *testing.T) {
			sideBySide(t, func(t *testing.T, name string) {
				table := freshTable(t, c, "trrefused", name, "(id int)", "")
				db := openDB(t, name, c.DSN())
				var attempts atomic.Int32
				err := RunTx(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
					a := attempts.Add(1)
					var pid int
					if err := tx.QueryRowContext(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
						return err
					}
					if _, err := tx.ExecContext(ctx, "insert into "+table+" values (1)"); err != nil {
						return err
					}
					if a == 1 {
						terminate(t, c, pid)
					}
					return nil
				}, txNoWait, TxResolveCommit(resolve))
				n, cerr := countRows(ctx, c, table)
				if cerr != nil {
					t.Fatal(cerr)
				}
				t.Logf("MEASURE RunTx resolve=%v, backend terminated before COMMIT on attempt 1, %s: %d attempt(s), %d row(s); error: %v",
					resolve, name, attempts.Load(), n, err)
				switch {
				case name == DriverName:
					if err != nil || attempts.Load() != 2 || n != 1 {
						t.Errorf("%v after %d attempts, %d rows; want success after 2 attempts, exactly 1 row", err, attempts.Load(), n)
					}
				case !resolve:
					var re *RunTxError
					if !errors.As(err, &re) || !re.CommitUnknown || attempts.Load() != 1 || n != 0 {
						t.Errorf("%v after %d attempts, %d rows; want CommitUnknown after 1 attempt, 0 rows", err, attempts.Load(), n)
					}
				default:
					var re *RunTxError
					if err == nil || errors.As(err, &re) || attempts.Load() != 1 || n != 0 {
						t.Errorf("%v after %d attempts, %d rows; want the FATAL after 1 attempt, 0 rows", err, attempts.Load(), n)
					}
				}
			})
		})
	}
}

// TestNotCommittedError: a COMMIT known not to have committed matches
// ErrNotCommitted and keeps its cause, and never ErrConnLost nor
// driver.ErrBadConn, even when its cause is a bare driver.ErrBadConn.
func TestNotCommittedError(t *testing.T) {
	fatal := &pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"}
	for _, cause := range []error{fatal, driver.ErrBadConn, pgconn.ErrConnClosed} {
		err := error(&DisconnectError{Op: OpCommit, InTx: true, notCommitted: true, Err: cause})
		wantNotCommitted(t, err)
		if !strings.Contains(err.Error(), "did not commit") {
			t.Errorf("%q does not say the transaction did not commit", err)
		}
		if cause != driver.ErrBadConn && !errors.Is(err, cause) { //nolint:errorlint // the sentinel itself
			t.Errorf("%v does not wrap its cause", err)
		}
	}
	var pgErr *pgconn.PgError
	if !errors.As(&DisconnectError{Op: OpCommit, InTx: true, notCommitted: true, Err: fatal}, &pgErr) || pgErr.Code != "57P01" {
		t.Error("the server's error is not reachable with errors.As")
	}
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{fatal, true},
		{&pgconn.PgError{SeverityUnlocalized: "FATAL", Severity: "FATAL", Code: "25P03"}, true},
		{&timeoutError{err: fatal}, true},
		{&pgconn.PgError{Severity: "WARNING", Code: "57P01"}, false}, // a synchronous standby's wait cut short: committed locally
		{&pgconn.PgError{Severity: "FATAL", Code: "57P02"}, false},
		{&pgconn.PgError{Severity: "FATAL", Code: "08P01", Message: "server conn crashed?"}, false}, // PgBouncer: may follow a commit
		{&pgconn.PgError{Severity: "ERROR", Code: "57P01"}, false},
		{io.EOF, false},
	} {
		if got := refusedCommit(tt.err); got != tt.want {
			t.Errorf("refusedCommit(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// TestResolveAfterPromotion asks a promoted standby about a transaction
// committed on the old primary, over both drivers' pools (ResolveCommit
// needs nothing of pgresilient but a *sql.DB):
//
//   - synchronous: the standby flushed the commit before the primary
//     acknowledged it; primary stopped, standby promoted: committed, and
//     trusted (the new primary replayed past the transaction's WAL);
//   - asynchronous, the standby down while the primary committed, then the
//     primary lost (immediate stop) and the standby promoted: the new
//     primary never saw the transaction. Asked at once: "in the future", so
//     on the surviving server it did not commit (false). Asked after the new
//     primary spent transaction ids past it: txid_status says "committed" (a
//     transaction of its own with the same id), and ResolveCommit must not
//     believe it: still unknown.
func TestResolveAfterPromotion(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two servers")
	}
	for _, mode := range []string{"synchronous", "asynchronous"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			p := pgtest.NewT(t)
			s, err := pgtest.StartStandby(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			if mode == "synchronous" {
				if err := p.SetSynchronous(ctx, true); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.WaitStreaming(ctx, 1); err != nil {
				t.Fatal(err)
			}
			if err := p.Exec(ctx, "create table tpromo (id int)"); err != nil {
				t.Fatal(err)
			}
			if mode == "asynchronous" {
				if err := s.Stop(context.Background(), pgtest.ModeFast); err != nil {
					t.Fatal(err)
				}
			}
			db := openDB(t, "pgx", p.DSN())
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.ExecContext(ctx, "insert into tpromo values (1)"); err != nil {
				t.Fatal(err)
			}
			id, err := ReadTxID(ctx, tx)
			if err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(); err != nil { // its acknowledgement is then ignored: as if lost
				t.Fatal(err)
			}
			closeAndCheck(t, db)
			stop := pgtest.ModeFast
			if mode == "asynchronous" {
				stop = pgtest.ModeImmediate
			}
			if err := p.Stop(context.Background(), stop); err != nil {
				t.Fatal(err)
			}
			if mode == "asynchronous" {
				if err := s.Resume(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Promote(ctx); err != nil {
				t.Fatal(err)
			}
			if mode == "synchronous" {
				if err := s.SetSynchronous(ctx, false); err != nil { // no standby of its own
					t.Fatal(err)
				}
			}
			for _, name := range drivers {
				sdb := openDB(t, name, s.DSN())
				rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
				committed, err := ResolveCommit(rctx, sdb, id)
				rcancel()
				rows, _ := pgtest.QueryValue[int](ctx, s, "select count(*)::int from tpromo")
				t.Logf("MEASURE %s replication, primary stopped (%s), standby promoted, %s: transaction %s committed=%v, error %v; rows on the new primary: %d",
					mode, stop, name, id, committed, err, rows)
				switch mode {
				case "synchronous":
					if !committed || err != nil || rows != 1 {
						t.Errorf("%s: committed=%v, %v, %d rows; want committed, 1 row", name, committed, err, rows)
					}
				case "asynchronous":
					if committed || err != nil || rows != 0 {
						t.Errorf("%s: committed=%v, %v, %d rows; want not committed (never seen), 0 rows", name, committed, err, rows)
					}
				}
			}
			if mode == "asynchronous" {
				// The new primary spends ids past the lost transaction's:
				// its own transaction now has the same id, and committed.
				xid, _ := strconv.ParseInt(id.String(), 10, 64)
				for {
					next, err := pgtest.QueryValue[int64](ctx, s, "select txid_current()")
					if err != nil {
						t.Fatal(err)
					}
					if next > xid+2 {
						break
					}
				}
				status, err := pgtest.QueryValue[string](ctx, s, "select txid_status($1)", xid)
				if err != nil {
					t.Fatal(err)
				}
				for _, name := range drivers {
					sdb := openDB(t, name, s.DSN())
					rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
					committed, err := ResolveCommit(rctx, sdb, id)
					rcancel()
					t.Logf("MEASURE asynchronous, after the new primary reused id %s (txid_status: %s), %s: committed=%v, error %v", id, status, name, committed, err)
					if status != "committed" {
						t.Fatalf("txid_status(%s) = %s on the new primary: the test did not make it reuse the id", id, status)
					}
					// txid_status's "committed" is about the new primary's
					// own transaction; its recovery ended before the lost
					// transaction began, so that one is not in its
					// history: not committed, known.
					if committed || err != nil {
						t.Errorf("%s: committed=%v, %v; want not committed: the new primary's history ends before the transaction", name, committed, err)
					}
					if cn, ok := ConnectorOf(sdb); ok {
						if st := cn.Stats(); st.ResolvedAborted != 1 || st.ResolvedCommitted != 0 || st.Unresolved != 0 {
							t.Errorf("Stats: ResolvedAborted %d, ResolvedCommitted %d, Unresolved %d; want 1, 0, 0", st.ResolvedAborted, st.ResolvedCommitted, st.Unresolved)
						}
					}
				}
			}
		})
	}
}

// TestTxIDCost measures the candidates for reading a transaction's id before
// COMMIT, in transaction ids spent and time per transaction (medians of n,
// one connection, loopback): none; ReadTxID after the writes
// (txid_current_if_assigned, a round trip of its own before COMMIT); an id
// forced at BEGIN's time (txid_current(), a round trip after BEGIN; sent in
// BEGIN's own message it saves the round trip but not the id). Read-only
// transactions show the difference: ReadTxID spends no id on them.
func TestTxIDCost(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	table := freshTable(t, c, "ttxidcost", "pgx", "(id int)", "")
	db := openDB(t, "pgx", c.DSN())
	db.SetMaxOpenConns(1)
	const n = 200
	nextXid := func() int64 {
		var x int64
		if err := db.QueryRowContext(ctx, "select txid_snapshot_xmax(txid_current_snapshot())").Scan(&x); err != nil {
			t.Fatal(err)
		}
		return x
	}
	insert := func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "insert into "+table+" values (1)")
		return err
	}
	read := func(tx *sql.Tx) error {
		var one int
		return tx.QueryRowContext(ctx, "select 1").Scan(&one)
	}
	readID := func(tx *sql.Tx) error { _, err := ReadTxID(ctx, tx); return err }
	forceID := func(tx *sql.Tx) error {
		var x int64
		return tx.QueryRowContext(ctx, "select txid_current()").Scan(&x)
	}
	cases := []struct {
		name     string
		steps    []func(*sql.Tx) error
		wantXids int64 // per transaction
	}{
		{"write, no id read", []func(*sql.Tx) error{insert}, 1},
		{"write, ReadTxID before COMMIT", []func(*sql.Tx) error{insert, readID}, 1},
		{"write, txid_current() after BEGIN", []func(*sql.Tx) error{forceID, insert}, 1},
		{"read-only, no id read", []func(*sql.Tx) error{read}, 0},
		{"read-only, ReadTxID before COMMIT", []func(*sql.Tx) error{read, readID}, 0},
		{"read-only, txid_current() after BEGIN", []func(*sql.Tx) error{forceID, read}, 1},
	}
	for range n { // warm up the connection and the table
		if _, err := db.ExecContext(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range cases {
		took := make([]time.Duration, 0, n)
		before := nextXid()
		for range n {
			start := time.Now()
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, step := range tc.steps {
				if err := step(tx); err != nil {
					t.Fatal(err)
				}
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			took = append(took, time.Since(start))
		}
		spent := nextXid() - before // reading the next id spends none
		slices.Sort(took)
		t.Logf("MEASURE %-40s %3d transactions: %d ids spent (%.2f each), median %v, p90 %v", tc.name, n, spent,
			float64(spent)/n, took[n/2].Round(time.Microsecond), took[n*9/10].Round(time.Microsecond))
		if got := spent / n; got != tc.wantXids || spent%n != 0 {
			t.Errorf("%s: %d ids per transaction, want %d", tc.name, got, tc.wantXids)
		}
	}
}
