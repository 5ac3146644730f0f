package pgresilient

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestBrokenConnNeverReused checks that a connection that returned
// ErrConnLost is discarded (IsValid false) and that a healthy one is kept.
func TestBrokenConnNeverReused(t *testing.T) {
	fd := &fakeDriver{execErrs: []error{&pgconn.PgError{Code: "23505"}, io.EOF}}
	c, err := NewConnector("fake?breaker=off", WithDriver(fd))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	ctx := context.Background()

	if _, err := db.ExecContext(ctx, "insert"); err == nil {
		t.Fatal("want the unique violation")
	}
	if _, err := db.ExecContext(ctx, "insert"); !errors.Is(err, ErrConnLost) {
		t.Fatalf("want ErrConnLost, got %v", err)
	}
	if got := fd.opened.Load(); got != 1 {
		t.Fatalf("opened %d connections before the loss, want 1", got)
	}
	if got := fd.execs.Load(); got != 2 {
		t.Fatalf("the server saw %d statements, want 2 (no retry)", got)
	}
	if _, err := db.ExecContext(ctx, "insert"); err != nil {
		t.Fatal(err)
	}
	if got, want := fd.opened.Load(), int64(2); got != want {
		t.Errorf("opened %d connections, want %d: the broken one was reused", got, want)
	}
	if got := fd.closed.Load(); got != 1 {
		t.Errorf("closed %d connections, want 1", got)
	}
	if got := db.Stats().OpenConnections; got != 1 {
		t.Errorf("open connections = %d, want 1", got)
	}
}
