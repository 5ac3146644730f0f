package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgresilient/pgresilient/pgtest"
)

var uniqueViolation = &pgconn.PgError{Severity: "ERROR", Code: "23505", Message: "duplicate key value violates unique constraint"}

// TestTxAutoRollbackStateMachine scripts the transaction state machine with
// go-sqlmock: every expectation listed is one the driver must use, and no
// other.
func TestTxAutoRollbackStateMachine(t *testing.T) {
	t.Run("rolled back at once, then ErrTxAborted", func(t *testing.T) {
		db, mock, c := openMock(t, "")
		mock.ExpectBegin()
		mock.ExpectExec("insert").WillReturnError(uniqueViolation)
		mock.ExpectRollback() // the automatic one
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("insert into t values (1)"); !errors.Is(err, uniqueViolation) {
			t.Fatalf("the failing statement: %v, want the unique violation itself", err)
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatalf("no immediate rollback: %v", err)
		}
		_, err = tx.Exec("update t set x = 1")
		var pgErr *pgconn.PgError
		if !errors.Is(err, ErrTxAborted) || !errors.As(err, &pgErr) || pgErr.Code != "23505" {
			t.Fatalf("later statement: %v, want ErrTxAborted wrapping 23505", err)
		}
		if _, err := tx.Query("select 1"); !errors.Is(err, ErrTxAborted) {
			t.Fatalf("later query: %v, want ErrTxAborted", err)
		}
		if err := tx.Commit(); !errors.Is(err, ErrTxAborted) {
			t.Fatalf("commit: %v, want ErrTxAborted", err)
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
		if got := c.Stats().AutoRollbacks; got != 1 {
			t.Errorf("AutoRollbacks = %d, want 1", got)
		}
	})
	t.Run("rollback after abort succeeds without a round trip", func(t *testing.T) {
		db, mock, _ := openMock(t, "")
		mock.ExpectBegin()
		mock.ExpectExec("insert").WillReturnError(uniqueViolation)
		mock.ExpectRollback()
		tx, _ := db.Begin()
		tx.Exec("insert")
		if err := tx.Rollback(); err != nil {
			t.Fatalf("rollback: %v", err)
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("savepoint keeps the transaction", func(t *testing.T) {
		db, mock, _ := openMock(t, "")
		mock.ExpectBegin()
		mock.ExpectExec("SAVEPOINT a").WillReturnResult(sqlmock.NewResult(0, 0))
		mock.ExpectExec("insert").WillReturnError(uniqueViolation)
		mock.ExpectExec("ROLLBACK TO SAVEPOINT a").WillReturnResult(sqlmock.NewResult(0, 0))
		mock.ExpectExec("insert").WillReturnResult(sqlmock.NewResult(0, 1))
		mock.ExpectCommit()
		tx, _ := db.Begin()
		for _, q := range []string{"  SAVEPOINT a", "insert", "ROLLBACK TO SAVEPOINT a", "insert"} {
			_, err := tx.Exec(q)
			if err != nil && !errors.Is(err, uniqueViolation) {
				t.Fatalf("%s: %v", q, err)
			}
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("off: plain behaviour", func(t *testing.T) {
		db, mock, _ := openMock(t, "tx_autorollback=off")
		aborted := &pgconn.PgError{Severity: "ERROR", Code: "25P02"}
		mock.ExpectBegin()
		mock.ExpectExec("insert").WillReturnError(uniqueViolation)
		mock.ExpectExec("update").WillReturnError(aborted)
		mock.ExpectRollback()
		tx, _ := db.Begin()
		tx.Exec("insert")
		if _, err := tx.Exec("update"); !errors.Is(err, aborted) || errors.Is(err, ErrTxAborted) {
			t.Fatalf("want the server's 25P02, got %v", err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("errors that are not the server's do not abort", func(t *testing.T) {
		db, mock, _ := openMock(t, "")
		mock.ExpectBegin()
		mock.ExpectExec("insert").WillReturnError(errors.New("client-side conversion failed"))
		mock.ExpectExec("insert").WillReturnResult(sqlmock.NewResult(0, 1))
		mock.ExpectCommit()
		tx, _ := db.Begin()
		tx.Exec("insert")
		if _, err := tx.Exec("insert"); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestIsSavepoint(t *testing.T) {
	for q, want := range map[string]bool{
		"SAVEPOINT a": true, "savepoint a": true, " \n\tSavePoint x": true, "savepoint": true,
		"savepoints": false, "select 'savepoint'": false, "": false, "release savepoint a": false,
		"savepoint_x": false, "SAVEPOINT\"a\"": true,
	} {
		if got := isSavepoint(q); got != want {
			t.Errorf("isSavepoint(%q) = %v, want %v", q, got, want)
		}
	}
}

// backendState returns pg_stat_activity's state of pid.
func backendState(t *testing.T, pid int) string {
	t.Helper()
	ctx := context.Background()
	var state string
	err := cluster.WithConn(ctx, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, "select coalesce(state, '') from pg_stat_activity where pid = $1", pid).Scan(&state)
	})
	if err != nil {
		t.Fatal(err)
	}
	return state
}

// lockFree reports whether an admin connection can lock row id of table
// within 300 ms.
func lockFree(t *testing.T, table string, id int) bool {
	t.Helper()
	ctx := context.Background()
	err := cluster.WithConn(ctx, func(conn *pgx.Conn) error {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, "set local lock_timeout = '300ms'"); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "select 1 from "+table+" where id = $1 for update", id)
		return err
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "55P03" {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// TestTxUniqueViolation: a sql.Tx that locked a row then hit a unique
// violation, with pgresilient and with raw pgx.
func TestTxUniqueViolation(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	sideBySide(t, func(t *testing.T, name string) {
		table := freshTable(t, c, "tx", name, "(id int primary key)", "(1), (2)")
		db := openDB(t, name, c.DSN())
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		pid := backendPID(t, tx)
		if _, err := tx.Exec("select 1 from " + table + " where id = 2 for update"); err != nil {
			t.Fatal(err)
		}
		_, err = tx.Exec("insert into " + table + " values (1)")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
			t.Fatalf("want 23505, got %v", err)
		}
		state := backendState(t, pid)
		free := lockFree(t, table, 2)
		_, next := tx.Exec("insert into " + table + " values (3)")
		commit := tx.Commit()
		t.Logf("%s: backend %q, row lock free: %v; next statement: %v; commit: %v", name, state, free, next, commit)

		switch name {
		case DriverName:
			if state != "idle" {
				t.Errorf("backend state %q right after the failure, want idle", state)
			}
			if !free {
				t.Error("the transaction's row lock is still held")
			}
			if !errors.Is(next, ErrTxAborted) || !errors.As(next, &pgErr) || pgErr.Code != "23505" {
				t.Errorf("next statement: %v, want ErrTxAborted wrapping 23505", next)
			}
			if !errors.Is(commit, ErrTxAborted) {
				t.Errorf("commit: %v, want ErrTxAborted", commit)
			}
		case "pgx":
			if state != "idle in transaction (aborted)" {
				t.Errorf("raw pgx: backend %q: the fault did not happen", state)
			}
			if !errors.As(next, &pgErr) || pgErr.Code != "25P02" {
				t.Errorf("raw pgx: next statement %v, want 25P02", next)
			}
		}
		if n, err := countRows(ctx, c, table); err != nil || n != 2 {
			t.Errorf("table has %d rows (%v), want 2: something committed", n, err)
		}
	})
}

// TestTxRollbackAfterAbort: Rollback succeeds after the automatic rollback.
func TestTxRollbackAfterAbort(t *testing.T) {
	c := needCluster(t)
	db := openDB(t, DriverName, c.DSN())
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("select 1/0"); err == nil {
		t.Fatal("want an error")
	}
	if err := tx.Rollback(); err != nil {
		t.Fatalf("rollback: %v", err)
	}
}

// TestSavepointRecovery: the savepoint pattern works with both drivers.
func TestSavepointRecovery(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	sideBySide(t, func(t *testing.T, name string) {
		table := freshTable(t, c, "tsp", name, "(id int primary key)", "(1)")
		db := openDB(t, name, c.DSN())
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		steps := []struct {
			q       string
			wantErr bool
		}{
			{"savepoint before_insert", false},
			{"insert into " + table + " values (1)", true},
			{"rollback to savepoint before_insert", false},
			{"insert into " + table + " values (2)", false},
			{"release savepoint before_insert", false},
		}
		for _, s := range steps {
			if _, err := tx.Exec(s.q); (err != nil) != s.wantErr {
				t.Fatalf("%s: %v", s.q, err)
			}
		}
		if err := tx.Commit(); err != nil {
			t.Fatalf("commit: %v", err)
		}
		if n, _ := countRows(ctx, c, table); n != 2 {
			t.Errorf("%d rows, want 2", n)
		}
	})
}

// TestManualBegin: BEGIN sent by hand on a pool of one, then a failing
// statement, then 20 queries.
func TestManualBegin(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	sideBySide(t, func(t *testing.T, name string) {
		table := freshTable(t, c, "tmb", name, "(id int)", "")
		db := openDB(t, name, c.DSN())
		db.SetMaxOpenConns(1)

		// Through the pool, as the issue has it.
		if _, err := db.Exec("BEGIN"); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec("insert into " + table + " values (1/0)"); err == nil {
			t.Fatal("want an error")
		}
		if failed, first := runQueries(db, 20); failed != 0 {
			t.Errorf("%d of 20 queries failed: %v", failed, first)
		}

		// On a pinned connection: an aborted block with an insert in it.
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pid := backendPID(t, conn)
		for _, q := range []string{"BEGIN", "insert into " + table + " values (1)", "select 1/0"} {
			conn.ExecContext(ctx, q)
		}
		conn.Close() // back to the pool, aborted
		state := backendState(t, pid)
		failed, first := runQueries(db, 20)
		pid2 := backendPID(t, db)
		n, err := countRows(ctx, c, table)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: backend after Close %q; %d of 20 failed; connection kept: %v; rows committed: %d", name, state, failed, pid == pid2, n)
		if failed != 0 {
			t.Errorf("%d of 20 queries failed: %v", failed, first)
		}
		if n != 0 {
			t.Errorf("%d rows of the aborted block committed", n)
		}
		if name == DriverName {
			if state != "idle" {
				t.Errorf("backend %q once back in the pool, want idle", state)
			}
			if pid != pid2 {
				t.Errorf("the connection was replaced (pid %d -> %d), want it rolled back and kept", pid, pid2)
			}
		}
	})
}

// TestTxAutoRollbackOff: tx_autorollback=off gives pgx's behaviour.
func TestTxAutoRollbackOff(t *testing.T) {
	c := needCluster(t)
	db := openDB(t, DriverName, c.DSN()+"&tx_autorollback=off")
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	tx.Exec("select 1/0")
	_, err = tx.Exec("select 1")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25P02" || errors.Is(err, ErrTxAborted) {
		t.Fatalf("want the server's 25P02, got %v", err)
	}
}

// TestQueryTimeoutBlackhole: the network freezes (no RST, nothing passes).
// query_timeout turns each hang into an error within about that time, the
// breaker then opens and calls fail fast without reaching the network, and
// after a thaw and the cooldown the app recovers by itself.
func TestQueryTimeoutBlackhole(t *testing.T) {
	c := needCluster(t)
	t.Run("pgx", func(t *testing.T) {
		// Raw pgx, no deadline: the call waits as long as the network
		// stays silent. Watched for 3 s, then the network comes back.
		p := newProxy(t, c)
		db := openDB(t, "pgx", c.DSNAt(p.Addr()))
		if failed, first := runQueries(db, 2); failed != 0 {
			t.Fatal(first)
		}
		p.Freeze()
		done := make(chan error, 1)
		go func() {
			_, err := db.Exec("select 1")
			done <- err
		}()
		select {
		case err := <-done:
			t.Errorf("raw pgx returned during the blackhole: %v", err)
		case <-time.After(3 * time.Second):
			t.Logf("MEASURE blackhole pgx: still waiting after 3s")
		}
		p.Thaw()
		if err := <-done; err != nil {
			t.Logf("raw pgx after the thaw: %v", err)
		}
	})
	t.Run(DriverName, func(t *testing.T) { testBlackholePgresilient(t, c) })
}

func testBlackholePgresilient(t *testing.T, c *pgtest.Cluster) {
	p := newProxy(t, c)
	db := openDB(t, DriverName, c.DSNAt(p.Addr())+"&query_timeout=500ms&breaker_failures=3&breaker_cooldown=1s")
	db.SetMaxOpenConns(1)
	if failed, first := runQueries(db, 2); failed != 0 { // dialled, then reused: pgx will not ping it again
		t.Fatal(first)
	}
	p.Freeze()
	thawed := false
	defer func() {
		if !thawed {
			p.Thaw()
		}
	}()

	// The statement is sent into the void.
	began := time.Now()
	_, err := db.Exec("select 1")
	took := time.Since(began)
	t.Logf("call 1: %v after %v", err, took.Round(time.Millisecond))
	if !errors.Is(err, ErrConnLost) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want ErrConnLost and DeadlineExceeded, got %v", err)
	}
	if !strings.Contains(err.Error(), "query_timeout") {
		t.Errorf("message %q does not name query_timeout", err)
	}

	// Then connection attempts time out until the breaker opens.
	var calls int
	for calls = 2; calls < 10; calls++ {
		began := time.Now()
		_, err := db.Exec("select 1")
		t.Logf("call %d: %v after %v", calls, err, time.Since(began).Round(time.Millisecond))
		if errors.Is(err, ErrCircuitOpen) {
			break
		}
		if !IsDisconnect(err) {
			t.Fatalf("call %d: want a connectivity failure, got %v", calls, err)
		}
	}
	// A connection attempt that times out, once the Connector has had a
	// working connection, opens the breaker at once (it used to take
	// breaker_failures=3 calls of 500ms each): the call that timed out
	// already gets ErrCircuitOpen, wrapping its connect error.
	if calls != 2 {
		t.Fatalf("the breaker opened at call %d, want 2 (the first connection attempt that timed out)", calls)
	}
	accepted := p.Accepted()
	lat := make([]time.Duration, 0, 100)
	for range 100 {
		began := time.Now()
		_, err := db.Exec("select 1")
		lat = append(lat, time.Since(began))
		if !errors.Is(err, ErrCircuitOpen) || errors.Is(err, driver.ErrBadConn) {
			t.Fatalf("want ErrCircuitOpen, not ErrBadConn: %v", err)
		}
	}
	// Only the background probes reach the proxy (each waits out its
	// own query_timeout in the frozen network).
	if got, probes := p.Accepted()-accepted, probesOf(db); got > probes+1 {
		t.Errorf("%d connections reached the proxy while the breaker was open, for %d probes", got, probes)
	}
	t.Logf("open breaker: median rejection latency %v over 100 calls", median(lat))

	p.Thaw()
	thawed = true
	began = time.Now()
	for {
		if _, err := db.Exec("select 1"); err == nil {
			break
		} else if !errors.Is(err, ErrCircuitOpen) {
			t.Fatalf("recovery: %v", err)
		}
		if time.Since(began) > 10*time.Second {
			t.Fatal("no recovery within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("MEASURE blackhole %s recovered %v after the thaw (by the background probe; breaker_cooldown=1s)", DriverName, time.Since(began).Round(time.Millisecond))
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	slices.Sort(s)
	return s[len(s)/2]
}

var _ = sql.ErrTxDone

// probesOf returns the background probes db's Connector made so far.
func probesOf(db *sql.DB) int64 {
	c, ok := ConnectorOf(db)
	if !ok {
		return 0
	}
	return c.Stats().Probes
}

// TestTxOptions: the isolation level and read-only mode of sql.TxOptions
// reach the server.
func TestTxOptions(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	db := openDB(t, DriverName, c.DSN())

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
}
