package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// staleDB is openDB that keeps pgresilient's Connector, for its Stats.
type staleDB struct {
	*sql.DB
	cn *Connector // nil for raw pgx
}

func openStaleDB(t *testing.T, driverName, dsn string) staleDB {
	t.Helper()
	if driverName != DriverName {
		return staleDB{DB: openDB(t, driverName, dsn)}
	}
	cn, err := NewConnector(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return staleDB{DB: openDBConnector(t, cn), cn: cn}
}

// staleRetries returns Stats.StaleStatementRetries, or 0 for raw pgx.
func staleRetries(db staleDB) int64 {
	if db.cn == nil {
		return 0
	}
	return db.cn.Stats().StaleStatementRetries
}

// cacheOnEach runs query (with arg) once on each of db's n pooled
// connections, held at once, so that pgx has prepared and cached it on
// every one of them.
func cacheOnEach(t *testing.T, db *sql.DB, n int, query string, arg any) {
	t.Helper()
	held := holdConns(t, db, n)
	defer releaseConns(held)
	for _, sc := range held {
		if err := readAll(context.Background(), sc.QueryContext, query, arg); err != nil {
			t.Fatalf("cache %q: %v", query, err)
		}
	}
}

// readAll runs a query whose columns it does not know (select *) and reads
// every row.
func readAll(ctx context.Context, q func(context.Context, string, ...any) (*sql.Rows, error), query string, args ...any) error {
	rows, err := q(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return err
	}
	dest := make([]any, len(cols))
	for i := range dest {
		dest[i] = new(any)
	}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return err
		}
	}
	return rows.Err()
}

// TestStaleAutocommit is issue 14's first scenario: a warm pool of 8, 8
// workers doing 200 reads of `select * from t where id = $1` in all, and an
// ALTER TABLE t ADD COLUMN in the middle. Every connection had the read
// prepared and cached: raw pgx fails it once on each (0A000, cached plan
// must not change result type); pgresilient runs each refused read again on
// a fresh plan, on the same connection.
func TestStaleAutocommit(t *testing.T) {
	c := needCluster(t)
	const conns, workers, reads = 8, 8, 200
	sideBySide(t, func(t *testing.T, driverName string) {
		table := freshTable(t, c, "stale_ac", driverName, "(id int primary key, v text)",
			"(1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e'), (6, 'f'), (7, 'g'), (8, 'h')")
		db := openStaleDB(t, driverName, c.DSN())
		warmPool(t, db.DB, conns)
		query := "select * from " + table + " where id = $1"
		cacheOnEach(t, db.DB, conns, query, 1)
		before := staleRetries(db)

		var failed atomic.Int64
		var first atomic.Value
		phase := func(perWorker int) {
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i := range perWorker {
						if err := readAll(context.Background(), db.QueryContext, query, 1+(w+i)%8); err != nil {
							failed.Add(1)
							first.CompareAndSwap(nil, err.Error())
						}
					}
				})
			}
			wg.Wait()
		}
		phase(reads / 2 / workers) // 100 reads
		if err := c.Exec(context.Background(), "alter table "+table+" add column extra int"); err != nil {
			t.Fatal(err)
		}
		phase(reads / 2 / workers) // 100 more
		retried := staleRetries(db) - before
		t.Logf("%s: %d errors in %d reads by %d workers on %d connections, one ALTER TABLE in the middle; stale retries %d; first error: %v",
			driverName, failed.Load(), reads, workers, conns, retried, first.Load())
		if driverName == DriverName {
			if failed.Load() != 0 {
				t.Errorf("%d reads failed, want 0", failed.Load())
			}
			if retried < 1 || retried > conns {
				t.Errorf("StaleStatementRetries grew by %d, want 1 to %d (at most one per connection)", retried, conns)
			}
		} else if failed.Load() == 0 {
			t.Errorf("raw pgx: no read failed; the scenario did not make stale statements")
		}
	})
}

// TestStaleTxFirst is issue 14's second scenario: 8 transactions open, each
// having run only BEGIN (repeatable read, read only), then ALTER TABLE, then
// each reads and commits. Raw pgx fails every read, and so every commit;
// pgresilient begins each transaction again with the same options (nothing
// but BEGIN had run) and runs the read in it.
func TestStaleTxFirst(t *testing.T) {
	c := needCluster(t)
	const n = 8
	sideBySide(t, func(t *testing.T, driverName string) {
		table := freshTable(t, c, "stale_tx", driverName, "(id int primary key, v text)", "(1, 'a')")
		db := openStaleDB(t, driverName, c.DSN())
		warmPool(t, db.DB, n)
		query := "select * from " + table + " where id = $1"
		cacheOnEach(t, db.DB, n, query, 1)
		before := staleRetries(db)

		opts := &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
		txs := make([]*sql.Tx, n)
		for i := range txs {
			tx, err := db.BeginTx(context.Background(), opts)
			if err != nil {
				t.Fatal(err)
			}
			txs[i] = tx
		}
		if err := c.Exec(context.Background(), "alter table "+table+" add column extra int"); err != nil {
			t.Fatal(err)
		}
		var failedReads, failedCommits int
		var firstRead, firstCommit error
		for _, tx := range txs {
			if err := readAll(context.Background(), tx.QueryContext, query, 1); err != nil {
				failedReads++
				if firstRead == nil {
					firstRead = err
				}
			} else {
				// Still the transaction that was asked for.
				var iso, ro string
				if err := tx.QueryRow("select current_setting('transaction_isolation'), current_setting('transaction_read_only')").Scan(&iso, &ro); err != nil {
					t.Errorf("settings: %v", err)
				} else if iso != "repeatable read" || ro != "on" {
					t.Errorf("after the read: isolation %q, read only %q; want repeatable read, on", iso, ro)
				}
			}
			if err := tx.Commit(); err != nil {
				failedCommits++
				if firstCommit == nil {
					firstCommit = err
				}
			}
		}
		retried := staleRetries(db) - before
		t.Logf("%s: %d transactions that had run only BEGIN, then ALTER TABLE: %d failed reads, %d failed commits; stale retries %d; first read error: %v; first commit error: %v",
			driverName, n, failedReads, failedCommits, retried, firstRead, firstCommit)
		if driverName == DriverName {
			if failedReads != 0 || failedCommits != 0 {
				t.Errorf("%d failed reads, %d failed commits, want 0 and 0", failedReads, failedCommits)
			}
			if retried != n {
				t.Errorf("StaleStatementRetries grew by %d, want %d", retried, n)
			}
		} else if failedReads == 0 {
			t.Errorf("raw pgx: no read failed; the scenario did not make stale statements")
		}
	})
}

// TestStaleLaterInTx: a cached statement refused as stale after another
// statement ran in the transaction cannot be run again transparently (the
// server aborted the transaction, whose earlier work is gone): the statement
// and Commit return a TxAbortedError wrapping the 0A000, saying why.
func TestStaleLaterInTx(t *testing.T) {
	c := needCluster(t)
	sideBySide(t, func(t *testing.T, driverName string) {
		table := freshTable(t, c, "stale_later", driverName, "(id int primary key, v text)", "(1, 'a')")
		db := openStaleDB(t, driverName, c.DSN())
		db.SetMaxOpenConns(1)
		query := "select * from " + table + " where id = $1"
		if err := readAll(context.Background(), db.QueryContext, query, 1); err != nil {
			t.Fatal(err)
		}
		if err := c.Exec(context.Background(), "alter table "+table+" add column extra int"); err != nil {
			t.Fatal(err)
		}
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("select 1"); err != nil {
			t.Fatal(err)
		}
		readErr := readAll(context.Background(), tx.QueryContext, query, 1)
		commitErr := tx.Commit()
		t.Logf("%s: read: %v; commit: %v", driverName, readErr, commitErr)
		var pgErr *pgconn.PgError
		if !errors.As(readErr, &pgErr) || pgErr.Code != codeFeatureNotSupported {
			t.Fatalf("read: %v, want 0A000", readErr)
		}
		if driverName != DriverName {
			return
		}
		if !errors.Is(readErr, ErrTxAborted) || errors.Is(readErr, driver.ErrBadConn) {
			t.Errorf("read: %v, want ErrTxAborted and not ErrBadConn", readErr)
		}
		var se *StaleStatementError
		if !errors.As(readErr, &se) || !strings.Contains(readErr.Error(), "schema changed") ||
			!strings.Contains(readErr.Error(), "run the transaction again") {
			t.Errorf("read: %q, want a StaleStatementError saying the schema changed", readErr)
		}
		if !errors.Is(commitErr, ErrTxAborted) {
			t.Errorf("commit: %v, want ErrTxAborted", commitErr)
		}
		// The connection is fine, and the statement runs on a fresh plan.
		if err := readAll(context.Background(), db.QueryContext, query, 1); err != nil {
			t.Errorf("after the transaction: %v", err)
		}
	})
}

// TestStaleWriteOnce: a write whose cached statement the server refuses
// before running it is run again by pgresilient, exactly once (the rows are
// counted): after ALTER TABLE changed the result type of insert ... returning
// * (0A000), and after the session lost its prepared statements (26000:
// DISCARD ALL, DEALLOCATE ALL behind pgx's back, a pooler).
func TestStaleWriteOnce(t *testing.T) {
	c := needCluster(t)
	cases := []struct {
		name string
		// invalidate makes the cached insert stale; sc is the one
		// connection it runs on.
		invalidate func(t *testing.T, sc *sql.Conn, table string)
		// rawCode is raw pgx's error for the stale insert.
		rawCode string
	}{
		{name: "alter-table", rawCode: codeFeatureNotSupported, invalidate: func(t *testing.T, _ *sql.Conn, table string) {
			if err := c.Exec(context.Background(), "alter table "+table+" add column extra int"); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "deallocated", rawCode: codeNoPreparedStatement, invalidate: func(t *testing.T, sc *sql.Conn, _ string) {
			if err := sc.Raw(func(dc any) error {
				pc, err := PgxConn(dc)
				if err != nil {
					return err
				}
				_, err = pc.PgConn().Exec(context.Background(), "deallocate all").ReadAll()
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sideBySide(t, func(t *testing.T, driverName string) {
				ctx := context.Background()
				table := freshTable(t, c, "stale_write_"+strings.ReplaceAll(tc.name, "-", "_"), driverName, "(id serial primary key, v int)", "")
				db := openStaleDB(t, driverName, c.DSN())
				db.SetMaxOpenConns(1)
				insert := "insert into " + table + " (v) values ($1) returning *"
				sc, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer sc.Close()
				if err := readAll(ctx, sc.QueryContext, insert, 1); err != nil {
					t.Fatal(err)
				}
				tc.invalidate(t, sc, table)
				before := staleRetries(db)
				err = readAll(ctx, sc.QueryContext, insert, 2)
				var rows int
				if err := sc.QueryRowContext(ctx, "select count(*) from "+table+" where v = 2").Scan(&rows); err != nil {
					t.Fatal(err)
				}
				t.Logf("%s: the insert after %s: %v; rows inserted: %d; stale retries %d",
					driverName, tc.name, err, rows, staleRetries(db)-before)
				if driverName != DriverName {
					var pgErr *pgconn.PgError
					if !errors.As(err, &pgErr) || pgErr.Code != tc.rawCode {
						t.Errorf("raw pgx: %v, want %s", err, tc.rawCode)
					}
					return
				}
				if err != nil || rows != 1 {
					t.Errorf("insert: %v, %d rows; want no error and exactly 1 row", err, rows)
				}
				if got := staleRetries(db) - before; got != 1 {
					t.Errorf("StaleStatementRetries grew by %d, want 1", got)
				}
			})
		})
	}
}

// cachedPlanErr is the server's refusal of a stale cached plan.
func cachedPlanErr() error {
	return &pgconn.PgError{Severity: "ERROR", Code: "0A000", Message: "cached plan must not change result type",
		Routine: "RevalidateCachedQuery"}
}

// TestStaleFake checks the rule without a server: a stale statement is run
// again once, in place; refused twice in a row, the second error is
// returned (never looped on, never driver.ErrBadConn); other 0A000s and
// strings of several statements are not run again.
func TestStaleFake(t *testing.T) {
	cases := []struct {
		name      string
		query     string
		errs      []error
		wantErr   bool
		wantExecs int64
		wantRetry int64
	}{
		{"once", "insert into t values ($1)", []error{cachedPlanErr()}, false, 2, 1},
		{"26000", "insert into t values ($1)", []error{&pgconn.PgError{Severity: "ERROR", Code: "26000"}}, false, 2, 1},
		{"twice in a row", "insert into t values ($1)", []error{cachedPlanErr(), cachedPlanErr(), cachedPlanErr()}, true, 2, 1},
		{"another 0A000", "insert into t values ($1)", []error{&pgconn.PgError{Severity: "ERROR", Code: "0A000", Message: "cannot use subquery in check constraint"}}, true, 1, 0},
		{"several statements", "insert into t values (1); execute s", []error{cachedPlanErr()}, true, 1, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fd := &fakeDriver{execErrs: tc.errs}
			c, err := NewConnector("fake?breaker=off", WithDriver(fd))
			if err != nil {
				t.Fatal(err)
			}
			db := sql.OpenDB(c)
			defer db.Close()
			_, err = db.Exec(tc.query, 1)
			if (err != nil) != tc.wantErr {
				t.Errorf("exec: %v, want error %v", err, tc.wantErr)
			}
			if err != nil && errors.Is(err, driver.ErrBadConn) {
				t.Errorf("exec: %v matches driver.ErrBadConn", err)
			}
			if got := fd.execs.Load(); got != tc.wantExecs {
				t.Errorf("the statement reached the server %d times, want %d", got, tc.wantExecs)
			}
			if got := c.Stats().StaleStatementRetries; got != tc.wantRetry {
				t.Errorf("StaleStatementRetries %d, want %d", got, tc.wantRetry)
			}
		})
	}

	t.Run("in a transaction, not begun by pgx", func(t *testing.T) {
		fd := &fakeDriver{execErrs: []error{cachedPlanErr()}}
		c, err := NewConnector("fake?breaker=off", WithDriver(fd))
		if err != nil {
			t.Fatal(err)
		}
		db := sql.OpenDB(c)
		defer db.Close()
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		_, err = tx.Exec("insert into t values ($1)", 1)
		var se *StaleStatementError
		if !errors.Is(err, ErrTxAborted) || !errors.As(err, &se) {
			t.Errorf("exec: %v, want a TxAbortedError wrapping a StaleStatementError", err)
		}
		if err := tx.Commit(); !errors.Is(err, ErrTxAborted) {
			t.Errorf("commit: %v, want ErrTxAborted", err)
		}
		if got := fd.execs.Load(); got != 1 {
			t.Errorf("the statement reached the server %d times, want 1", got)
		}
	})
}

// TestStaleRunTx: RunTx runs again a transaction aborted by a stale cached
// statement that was not its first: the second attempt succeeds.
func TestStaleRunTx(t *testing.T) {
	c := needCluster(t)
	table := freshTable(t, c, "stale_runtx", DriverName, "(id int primary key, v text)", "(1, 'a')")
	db := openStaleDB(t, DriverName, c.DSN())
	db.SetMaxOpenConns(1)
	query := "select * from " + table + " where id = $1"
	if err := readAll(context.Background(), db.QueryContext, query, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(context.Background(), "alter table "+table+" add column extra int"); err != nil {
		t.Fatal(err)
	}
	attempts := 0
	err := RunTx(context.Background(), db.DB, nil, func(ctx context.Context, tx *sql.Tx) error {
		attempts++
		if _, err := tx.ExecContext(ctx, "select 1"); err != nil {
			return err
		}
		return readAll(ctx, tx.QueryContext, query, 1)
	})
	t.Logf("RunTx: %v after %d attempts", err, attempts)
	if err != nil || attempts != 2 {
		t.Errorf("RunTx: %v after %d attempts, want success after 2", err, attempts)
	}
}
