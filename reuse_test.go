package pgresilient

import (
	"database/sql"
	"errors"
	"testing"
)

// TestResetSessionForwarded checks that the wrapped driver's ResetSession
// runs on reuse, and that its failure discards the connection and retries the
// statement elsewhere, safely: nothing had been sent.
func TestResetSessionForwarded(t *testing.T) {
	fd := &fakeDriver{}
	c, err := NewConnector("fake", WithDriver(fd))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	db.SetMaxOpenConns(1)
	for range 3 {
		if _, err := db.Exec("insert"); err != nil {
			t.Fatal(err)
		}
	}
	if got := fd.resets.Load(); got != 2 {
		t.Errorf("ResetSession ran %d times, want 2 (on each reuse)", got)
	}
	fd.mu.Lock()
	fd.resetErr = errors.New("session is toast")
	fd.mu.Unlock()
	_, err = db.Exec("insert")
	// The fake's reset fails on every reused conn, but the third attempt
	// uses a new connection, which is not reset.
	if err != nil {
		t.Fatalf("want database/sql to retry on a new connection, got %v", err)
	}
	if got := fd.execs.Load(); got != 4 {
		t.Errorf("the server saw %d statements, want 4", got)
	}
}
