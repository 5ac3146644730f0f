package pgresilient

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgresilient/pgresilient/pgtest"
)

// drivers are compared side by side in the integration tests (sideBySide).
var drivers = []string{"pgx", DriverName}

// warmPool makes db hold n idle connections, each used just now and each
// reused at least once, like those of an app that has been running: pgx
// always pings a connection on its first reuse after dialling, and then only
// after a second idle.
func warmPool(t *testing.T, db *sql.DB, n int) {
	t.Helper()
	db.SetMaxOpenConns(n)
	db.SetMaxIdleConns(n)
	db.SetConnMaxIdleTime(0)
	for range 2 {
		useAll(t, db, n)
	}
	if got := db.Stats().OpenConnections; got != n {
		t.Fatalf("warm pool has %d connections, want %d", got, n)
	}
}

// useAll holds n connections at once, so they are n distinct ones.
func useAll(t *testing.T, db *sql.DB, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-start
			// Held at once, so they are n distinct connections.
			_, err := db.Exec("select pg_sleep(0.05)")
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("warm-up: %v", err)
		}
	}
}

// runQueries runs n sequential queries and returns how many failed, and the
// first error.
func runQueries(db *sql.DB, n int) (failed int, first error) {
	for range n {
		var one int
		if err := db.QueryRow("select 1").Scan(&one); err != nil {
			if first == nil {
				first = err
			}
			failed++
		}
	}
	return failed, first
}

// TestRestartWarmPool: a warm idle pool of 8, every connection used within
// the last second, then `pg_ctl restart -m fast`, then 200 queries.
func TestRestartWarmPool(t *testing.T) {
	c := needCluster(t)
	results := map[string]int{}
	sideBySide(t, func(t *testing.T, name string) {
		db := openDB(t, name, c.DSN())
		warmPool(t, db, 8)
		began := time.Now()
		if err := c.Restart(context.Background(), pgtest.ModeFast); err != nil {
			t.Fatal(err)
		}
		took := time.Since(began)
		failed, first := runQueries(db, 200)
		results[name] = failed
		t.Logf("%s: restart took %v; %d of 200 queries failed (first: %v)", name, took.Round(time.Millisecond), failed, first)
		if name == DriverName && failed != 0 {
			t.Errorf("pgresilient: %d queries failed after a restart, want 0 (first: %v)", failed, first)
		}
		// The fault is real: raw pgx, whose connections were all used
		// within the last second, hands the app the server's goodbye.
		if name == "pgx" && failed == 0 && took < 900*time.Millisecond {
			t.Errorf("raw pgx saw no error: the fault did not happen")
		}
	})
	t.Logf("errors after restart: pgx %d, pgresilient %d", results["pgx"], results[DriverName])
}

// TestTerminateWarmPool: every backend of a warm pool of 8 is terminated
// (pg_terminate_backend, waiting until they are gone), then 200 queries.
func TestTerminateWarmPool(t *testing.T) {
	c := needCluster(t)
	sideBySide(t, func(t *testing.T, name string) {
		db := openDB(t, name, c.DSN())
		warmPool(t, db, 8)
		n, err := c.TerminateBackends(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n != 8 {
			t.Fatalf("terminated %d backends, want 8", n)
		}
		failed, first := runQueries(db, 200)
		t.Logf("%s: %d of 200 queries failed after terminating %d backends (first: %v)", name, failed, n, first)
		switch name {
		case DriverName:
			if failed != 0 {
				t.Errorf("pgresilient: %d failed, want 0 (first: %v)", failed, first)
			}
		case "pgx":
			// The fault is real: raw pgx hands the app the termination.
			if failed == 0 {
				t.Errorf("raw pgx saw no error: the fault did not happen")
			}
			var pgErr *pgconn.PgError
			if !errors.As(first, &pgErr) || pgErr.Code != "57P01" {
				t.Errorf("raw pgx's first error = %v, want SQLSTATE 57P01", first)
			}
		}
	})
}

// TestLibPQ939 runs the statement of lib/pq issue 939: a transaction that
// commits an insert, then the backend kills itself. The insert must happen
// exactly once, and the caller must learn that the outcome is unknown.
// lib/pq itself, which runs it three times, is measured in the compare
// module (compare/libpq_test.go), so that this module does not require it.
func TestLibPQ939(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	sideBySide(t, func(t *testing.T, name string) {
		table := freshTable(t, c, "t939", name, "(id int)", "")
		db := openDB(t, name, c.DSN())
		_, err := db.Exec("begin; insert into " + table + " values (1); commit; select pg_terminate_backend(pg_backend_pid())")
		rows, qerr := countRows(ctx, c, table)
		if qerr != nil {
			t.Fatal(qerr)
		}
		t.Logf("%s: %d row(s) inserted; error: %v", name, rows, err)
		switch name {
		case DriverName:
			if rows != 1 {
				t.Errorf("pgresilient inserted %d rows, want exactly 1", rows)
			}
			wantConnLost(t, err)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "57P01" {
				t.Errorf("the cause is not reachable: %v", err)
			}
		case "pgx":
			if rows != 1 {
				t.Errorf("pgx inserted %d rows, want 1", rows)
			}
		}
	})
}

func countRows(ctx context.Context, c interface {
	WithConn(context.Context, func(*pgx.Conn) error) error
}, table string) (int, error) {
	var n int
	err := c.WithConn(ctx, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, "select count(*) from "+table).Scan(&n)
	})
	return n, err
}

// TestCutMidQuery resets the network while a statement runs on the server,
// after its insert committed; the client cannot know. The insert must exist
// exactly once and the caller must hear that the outcome is unknown.
// Raw pgx v5.12 reports this reset as "conn closed" with SafeToRetry true, so
// database/sql runs the insert again on a new connection, silently.
func TestCutMidQuery(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	sideBySide(t, func(t *testing.T, name string) {
		table := freshTable(t, c, "tcut", name, "(id int)", "")
		p := newProxy(t, c)
		db := openDB(t, name, c.DSNAt(p.Addr()))
		if err := db.Ping(); err != nil {
			t.Fatal(err)
		}
		cut := make(chan struct{})
		go func() {
			defer close(cut)
			time.Sleep(150 * time.Millisecond)
			p.Cut()
		}()
		// One simple-protocol message: the insert commits, then the
		// statement sleeps, and the network is cut during the sleep.
		_, err := db.Exec("begin; insert into " + table + " values (1); commit; select pg_sleep(0.5)")
		<-cut
		time.Sleep(600 * time.Millisecond) // let the server finish and commit
		n, cerr := countRows(ctx, c, table)
		if cerr != nil {
			t.Fatal(cerr)
		}
		t.Logf("%s: %d row(s) inserted; error: %v", name, n, err)
		switch name {
		case DriverName:
			if n != 1 {
				t.Errorf("pgresilient: %d rows, want exactly 1", n)
			}
			wantConnLost(t, err)
			if err != nil && !strings.Contains(err.Error(), "outcome unknown") {
				t.Errorf("message %q does not say the outcome is unknown", err)
			}
			// The pool recovers: the broken connection is not reused.
			if failed, first := runQueries(db, 5); failed != 0 {
				t.Errorf("%d queries failed after the cut: %v", failed, first)
			}
		case "pgx":
			// What countconn.go and the README cite: pgx reports the reset
			// after the send as safe to retry, database/sql runs the
			// statement again, and the caller hears success.
			if n != 2 || err != nil {
				t.Errorf("raw pgx: %d rows, error %v; want the statement run twice and reported as a success", n, err)
			}
		}
	})
}

// TestCutDuringCommit resets the connection after COMMIT reached the server,
// before its reply: the commit happened, and the caller hears the outcome is
// unknown.
func TestCutDuringCommit(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	sideBySide(t, func(t *testing.T, name string) {
		table := freshTable(t, c, "tcommit", name, "(id int)", "")
		p := newProxy(t, c)
		db := openDB(t, name, c.DSNAt(p.Addr()))
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("insert into " + table + " values (1)"); err != nil {
			t.Fatal(err)
		}
		p.CutOn([]byte("commit"), true)
		err = tx.Commit()
		t.Logf("%s: commit: %v", name, err)
		if p.Fired() != 1 {
			t.Fatalf("the cut fired %d times, want once, on COMMIT", p.Fired())
		}
		if err == nil {
			t.Fatal("want an error")
		}
		if name == DriverName {
			wantConnLost(t, err) // plain Tx.Commit cannot ask; RunTx does (TestRunTxCutDuringCommit)
		} else if errors.Is(err, ErrConnLost) || strings.Contains(err.Error(), "unknown") {
			t.Errorf("raw pgx says the outcome is unknown: %v", err)
		}
		n, err := pollRows(ctx, c, table, 1)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d row(s) committed", name, n)
		if n != 1 {
			t.Errorf("%d rows: COMMIT reached the server before the cut, so the row must be there once", n)
		}
	})
}

// pollRows waits briefly for table to hold want rows: the server may still be
// finishing the commit when the client sees the reset.
func pollRows(ctx context.Context, c interface {
	WithConn(context.Context, func(*pgx.Conn) error) error
}, table string, want int) (int, error) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		n, err := countRows(ctx, c, table)
		if err != nil || n == want || time.Now().After(deadline) {
			return n, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCutIdlePool resets every idle pooled connection: the next queries must
// not see it.
func TestCutIdlePool(t *testing.T) {
	c := needCluster(t)
	sideBySide(t, func(t *testing.T, name string) {
		p := newProxy(t, c)
		db := openDB(t, name, c.DSNAt(p.Addr()))
		warmPool(t, db, 4)
		p.Cut()
		time.Sleep(20 * time.Millisecond) // let the resets arrive
		failed, first := runQueries(db, 50)
		t.Logf("%s: %d of 50 failed after cutting 4 idle connections (first: %v)", name, failed, first)
		// Both recover: raw pgx through database/sql's retries of pgx's
		// driver.ErrBadConn (the write to a reset socket fails before
		// anything is sent), pgresilient by finding the connections dead
		// before use.
		if failed != 0 {
			t.Errorf("%s: %d failed, want 0", name, failed)
		}
		if name == DriverName {
			// database/sql tries two pooled connections, then dials: the
			// two it tried are caught by the reuse check, before anything
			// is sent on them (no driver.ErrBadConn from a statement).
			cn, _ := ConnectorOf(db)
			if st := cn.Stats(); st.DiscardedIdle+st.DiscardedVerify < 2 || st.BadConnRetries != 0 {
				t.Errorf("%d idle and %d verify discards, %d ErrBadConn retries; want the cut connections caught before use, none sent to",
					st.DiscardedIdle, st.DiscardedVerify, st.BadConnRetries)
			}
		}
	})
}

// TestServerErrorKeepsConn: an SQL error leaves the connection healthy and
// reachable with errors.As.
func TestServerErrorKeepsConn(t *testing.T) {
	c := needCluster(t)
	db := openDB(t, DriverName, c.DSN())
	db.SetMaxOpenConns(1)
	_, err := db.Exec("select 1/0")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22012" {
		t.Fatalf("want SQLSTATE 22012, got %v", err)
	}
	if IsDisconnect(err) || errors.Is(err, ErrConnLost) {
		t.Fatalf("a division by zero reported as a disconnect: %v", err)
	}
	pid1 := backendPID(t, db)
	if _, err := db.Exec("select 1/0"); err == nil {
		t.Fatal("want an error")
	}
	pid2 := backendPID(t, db)
	if pid1 != pid2 {
		t.Errorf("the connection was replaced after an SQL error (pid %d -> %d)", pid1, pid2)
	}
}

// TestDriverInterfaces checks that the optional interfaces pgx implements
// work through pgresilient: column types, named values and pgx's own argument
// types, prepared statements, transactions with options, Raw.
func TestDriverInterfaces(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	db := openDB(t, DriverName, c.DSN())

	rows, err := db.Query("select 1::int4 as a, 'x'::text as b, 1.5::numeric(4,2) as c")
	if err != nil {
		t.Fatal(err)
	}
	cols, err := rows.ColumnTypes()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, col := range cols {
		names = append(names, col.Name()+":"+col.DatabaseTypeName())
	}
	if got, want := strings.Join(names, " "), "a:INT4 b:TEXT c:NUMERIC"; got != want {
		t.Errorf("column types %q, want %q", got, want)
	}
	if p, s, ok := cols[2].DecimalSize(); !ok || p != 4 || s != 2 {
		t.Errorf("DecimalSize = %d, %d, %v; want 4, 2, true", p, s, ok)
	}
	if st := cols[0].ScanType(); st == nil || st.Kind().String() != "int32" {
		t.Errorf("ScanType = %v, want int32", st)
	}
	rows.Close()

	// pgx's own argument types pass CheckNamedValue untouched.
	var got string
	if err := db.QueryRow("select @v::text", pgx.NamedArgs{"v": "named"}).Scan(&got); err != nil || got != "named" {
		t.Errorf("pgx.NamedArgs: %q, %v", got, err)
	}
	var arr []int64
	if err := db.QueryRow("select $1::int8[]", []int64{1, 2}).Scan(&arr); err != nil {
		// database/sql cannot scan into []int64; pgx's array support is
		// reached through Raw: it is enough that the argument was accepted.
		if !strings.Contains(err.Error(), "unsupported Scan") {
			t.Errorf("[]int64 argument: %v", err)
		}
	}
	// What docs/ecosystem.md tells lib/pq users before Go 1.27 (pq.Array).
	arr = nil
	if err := db.QueryRow("select $1::int8[]", []int64{1, 2}).Scan(pgtype.NewMap().SQLScanner(&arr)); err != nil || len(arr) != 2 || arr[1] != 2 {
		t.Errorf("[]int64 through pgtype's SQLScanner: %v, %v", arr, err)
	}

	st, err := db.Prepare("select $1::int + 1")
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := st.QueryRow(41).Scan(&n); err != nil || n != 42 {
		t.Errorf("prepared: %d, %v", n, err)
	}
	st.Close()

	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var iso, ro string
	if err := tx.QueryRow("select current_setting('transaction_isolation'), current_setting('transaction_read_only')").Scan(&iso, &ro); err != nil {
		t.Fatal(err)
	}
	if iso != "serializable" || ro != "on" {
		t.Errorf("tx options: isolation %q read only %q", iso, ro)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	// Raw reaches the pgx connection: COPY.
	if err := c.Exec(ctx, "drop table if exists tcopy; create table tcopy (id int)"); err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = conn.Raw(func(dc any) error {
		pc, err := PgxConn(dc)
		if err != nil {
			return err
		}
		_, err = pc.CopyFrom(ctx, pgx.Identifier{"tcopy"}, []string{"id"}, pgx.CopyFromRows([][]any{{1}, {2}, {3}}))
		return err
	})
	conn.Close()
	if err != nil {
		t.Fatalf("COPY through Raw: %v", err)
	}
	if n, err := countRows(ctx, c, "tcopy"); err != nil || n != 3 {
		t.Errorf("COPY wrote %d rows (%v), want 3", n, err)
	}
}

// TestDSNParamsNeverReachServer: our parameters are stripped, an ordinary
// runtime parameter still reaches the server.
func TestDSNParamsNeverReachServer(t *testing.T) {
	c := needCluster(t)
	db := openDB(t, DriverName, c.DSN()+"&breaker_failures=3&query_timeout=5s&tx_autorollback=on&application_name=pgr-test")
	var app string
	if err := db.QueryRow("select current_setting('application_name')").Scan(&app); err != nil {
		t.Fatal(err)
	}
	if app != "pgr-test" {
		t.Errorf("application_name = %q", app)
	}
}

var _ = fmt.Sprintf

// TestPoolInvalidation: when one connection learns the server is gone, the
// other pooled connections are verified before their next use. On a frozen
// network nothing tells the second connection it is dead (the socket peek
// sees nothing); without the verification its statement would be sent into
// the void and come back as ErrConnLost.
func TestPoolInvalidation(t *testing.T) {
	c := needCluster(t)
	p := newProxy(t, c)
	cn, err := NewConnector(c.DSNAt(p.Addr()) + "&query_timeout=300ms&breaker=off&connect_retries=0")
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(cn)
	t.Cleanup(func() { closeAndCheck(t, db) })
	warmPool(t, db, 2)
	p.Freeze()
	defer p.Thaw()

	// The first connection meets the blackhole mid-statement.
	if _, err := db.Exec("select 1"); !errors.Is(err, ErrConnLost) {
		t.Fatalf("first call: want ErrConnLost, got %v", err)
	}
	before := cn.Stats()
	if before.Invalidations == 0 {
		t.Fatal("no pool invalidation after a lost connection")
	}
	// The second is verified, fails verification, and is discarded before
	// anything is sent: the call then fails to connect, safely.
	_, err = db.Exec("select 1")
	after := cn.Stats()
	t.Logf("second call: %v; verifications %d, discarded %d", err, after.Verifications-before.Verifications, after.DiscardedVerify-before.DiscardedVerify)
	if errors.Is(err, ErrConnLost) {
		t.Errorf("the second pooled connection was used without verification: %v", err)
	}
	if after.Verifications <= before.Verifications || after.DiscardedVerify <= before.DiscardedVerify {
		t.Errorf("want a verification and a discard, got %+v -> %+v", before, after)
	}
}

// TestConnectHooks: pgx's before- and after-connect hooks run through the
// connector: the first supplies the password (as an IAM token provider
// would), the second sets a session parameter.
func TestConnectHooks(t *testing.T) {
	c := needCluster(t)
	var before, after int
	cn, err := NewConnector(c.PasswordDSN(c.Addr(), "not-the-password"),
		WithBeforeConnect(func(_ context.Context, cfg *pgx.ConnConfig) error {
			before++
			cfg.Password = pgtest.Password
			return nil
		}),
		WithAfterConnect(func(ctx context.Context, conn *pgx.Conn) error {
			after++
			_, err := conn.Exec(ctx, "set application_name = 'from-after-connect'")
			return err
		}))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(cn)
	t.Cleanup(func() { closeAndCheck(t, db) })
	var app, user string
	if err := db.QueryRow("select current_setting('application_name'), current_user").Scan(&app, &user); err != nil {
		t.Fatal(err)
	}
	if app != "from-after-connect" || user != pgtest.PasswordUser || before != 1 || after != 1 {
		t.Errorf("application_name %q, user %q, hooks ran %d and %d times", app, user, before, after)
	}
}

// TestCutAfterBegin: the connection breaks right after BEGIN reached the
// server. A BEGIN alone changes nothing (the session takes its transaction
// with it), so pgresilient lets database/sql retry it on another connection
// and the caller's transaction just works; raw pgx fails it.
func TestCutAfterBegin(t *testing.T) {
	c := needCluster(t)
	sideBySide(t, func(t *testing.T, name string) {
		p := newProxy(t, c)
		db := openDB(t, name, c.DSNAt(p.Addr()))
		if err := db.Ping(); err != nil {
			t.Fatal(err)
		}
		p.CutOn([]byte("begin"), true)
		tx, err := db.Begin()
		t.Logf("%s: begin: %v", name, err)
		if p.Armed() {
			t.Fatal("the cut did not happen: BEGIN was not seen")
		}
		if name != DriverName {
			if err == nil {
				_ = tx.Rollback()
			}
			return
		}
		if err != nil {
			t.Fatalf("want the BEGIN retried on a new connection, got %v", err)
		}
		var one int
		if err := tx.QueryRow("select 1").Scan(&one); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	})
}
