package pgresilient

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

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
