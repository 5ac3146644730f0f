package pgresilient

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

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
