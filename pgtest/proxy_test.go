package pgtest

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgresilient/pgresilient/faultproxy"
)

// TestThroughProxy checks the two packages together, the way the driver's
// integration tests use them.
func TestThroughProxy(t *testing.T) {
	c := Require(t, cluster)
	ctx := t.Context()
	p := faultproxy.NewT(t, c.Addr()) // fails the test if a trigger never fires
	viaProxy := c.DSNAt(p.Addr())
	if err := c.Exec(ctx, "drop table if exists cut_t; create table cut_t(i int)"); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		t.Helper()
		waitNoClients(t, c) // a cut backend may still be finishing its statement
		n, err := QueryValue[int](ctx, c, "select count(*)::int from cut_t")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	t.Run("CutOn forward runs the statement", func(t *testing.T) {
		conn := connect(t, viaProxy)
		if err := selectOne(ctx, conn); err != nil {
			t.Fatal(err)
		}
		p.CutOn([]byte("insert into cut_t"), true)
		// Without arguments pgx sends one simple-protocol Query message, so
		// the server runs it. (With arguments, the first use sends only a
		// Parse for the statement cache: forwarding it runs nothing.)
		//
		// pgx v5.12 reports this reset as "conn closed", a lock error whose
		// SafeToRetry is true although the statement ran: database/sql with
		// pgx's stdlib then retries it, and the row is inserted twice.
		if _, err := conn.Exec(ctx, "insert into cut_t values (1)"); err == nil {
			t.Fatal("insert succeeded through a cut connection")
		} else {
			t.Logf("insert: %v (SafeToRetry %v)", err, pgconn.SafeToRetry(err))
		}
		if p.Armed() {
			t.Fatal("the trigger did not fire")
		}
		if n := count(); n != 1 {
			t.Fatalf("%d rows, want 1", n)
		}
	})

	t.Run("CutOn without forward does not", func(t *testing.T) {
		conn := connect(t, viaProxy)
		if err := selectOne(ctx, conn); err != nil {
			t.Fatal(err)
		}
		p.CutOn([]byte("insert into cut_t"), false)
		// The client wrote the statement before the reset: it cannot tell
		// that nothing reached the server.
		if _, err := conn.Exec(ctx, "insert into cut_t values (2)"); err == nil {
			t.Fatal("insert succeeded through a cut connection")
		}
		if p.Armed() {
			t.Fatal("the trigger did not fire")
		}
		if n := count(); n != 1 {
			t.Fatalf("%d rows, want 1", n)
		}
	})

	// docs/fault-testing.md's recipe: pgx sends "commit" in lower case,
	// the docs and SQL habit write COMMIT. The trigger must fire all the
	// same, or a "lost commit" test proves nothing.
	t.Run("CutOn COMMIT fires on pgx's commit", func(t *testing.T) {
		conn := connect(t, viaProxy)
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "insert into cut_t values (3)"); err != nil {
			t.Fatal(err)
		}
		p.CutOn([]byte("COMMIT"), true)
		if err := tx.Commit(ctx); err == nil {
			t.Fatal("commit succeeded: the trigger never fired")
		}
		if p.Armed() || p.Fired() != 3 {
			t.Fatalf("Armed() = %v, Fired() = %d; want false, 3 (one for each subtest so far)", p.Armed(), p.Fired())
		}
		// Forwarded: the server committed, only the reply was lost.
		if n := count(); n != 2 {
			t.Fatalf("%d rows, want 2", n)
		}
	})

	t.Run("Freeze times out, Thaw recovers", func(t *testing.T) {
		conn := connect(t, viaProxy)
		p.Freeze()
		qctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := selectOne(qctx, conn)
		cancel()
		p.Thaw()
		if !pgconn.Timeout(err) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("query while frozen: %v; want a timeout", err)
		}
		if !conn.IsClosed() {
			t.Error("pgx kept the connection after a timeout")
		}
		if err := selectOne(ctx, connect(t, viaProxy)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Cut and Refuse", func(t *testing.T) {
		conn := connect(t, viaProxy)
		p.Cut()
		if err := selectOne(ctx, conn); err == nil {
			t.Fatal("query after Cut succeeded")
		}
		if err := p.Refuse(true); err != nil {
			t.Fatal(err)
		}
		_, err := pgx.Connect(ctx, viaProxy)
		if err := p.Refuse(false); err != nil {
			t.Fatal(err)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("connect while refusing: %v; want connection refused", err)
		}
		if err := selectOne(ctx, connect(t, viaProxy)); err != nil {
			t.Fatal(err)
		}
	})
}
