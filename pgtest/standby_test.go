package pgtest

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// startPair starts a primary of the test's own and a standby of it, both
// closed at the end of the test.
func startPair(t *testing.T) (primary, standby *Cluster) {
	t.Helper()
	if SkipRequested() {
		t.Skip(SkipEnv + "=1")
	}
	ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
	defer cancel()
	primary, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := primary.Close(); err != nil {
			t.Error(err)
		}
	})
	began := time.Now()
	standby, err = StartStandby(ctx, primary)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := standby.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := primary.WaitStreaming(ctx, 1); err != nil {
		t.Fatal(err)
	}
	t.Logf("standby streaming %v after StartStandby began", time.Since(began).Round(time.Millisecond))
	return primary, standby
}

// waitRows waits until sql counts want rows on c.
func waitRows(t *testing.T, c *Cluster, sql string, want int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		n, err := QueryValue[int](ctx, c, sql)
		if err == nil && n == want {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%s on %s = %d, %v; want %d", sql, c.Addr(), n, err, want)
		}
		time.Sleep(pollEvery)
	}
}

func TestStandbyReplicatesAndPromotes(t *testing.T) {
	primary, standby := startPair(t)
	ctx := t.Context()
	if standby.Port() == primary.Port() || standby.Dir() == primary.Dir() {
		t.Fatalf("standby shares the primary's port or directory: %s %s", standby.Addr(), standby.Dir())
	}
	if err := primary.Exec(ctx, "CREATE TABLE ha_t(i int); INSERT INTO ha_t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	waitRows(t, standby, "SELECT count(*)::int FROM ha_t", 1)

	if hot, err := standby.InHotStandby(ctx); err != nil || !hot {
		t.Errorf("standby InHotStandby = %v, %v; want true", hot, err)
	}
	if p, err := standby.IsPrimary(ctx); err != nil || p {
		t.Errorf("standby IsPrimary = %v, %v; want false", p, err)
	}
	if p, err := primary.IsPrimary(ctx); err != nil || !p {
		t.Errorf("primary IsPrimary = %v, %v; want true", p, err)
	}
	err := standby.Exec(ctx, "INSERT INTO ha_t VALUES (2)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Errorf("insert on the standby: %v; want 25006 read_only_sql_transaction", err)
	}

	began := time.Now()
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("Promote took %v", time.Since(began).Round(time.Millisecond))
	if hot, err := standby.InHotStandby(ctx); err != nil || hot {
		t.Errorf("promoted InHotStandby = %v, %v; want false", hot, err)
	}
	if err := standby.Exec(ctx, "INSERT INTO ha_t VALUES (2)"); err != nil {
		t.Fatalf("insert after Promote: %v", err)
	}
	waitRows(t, standby, "SELECT count(*)::int FROM ha_t", 2)
	if err := standby.Promote(ctx); err == nil {
		t.Error("promoting a primary succeeded")
	}
}

func TestStandbySynchronous(t *testing.T) {
	primary, standby := startPair(t)
	ctx := t.Context()
	if err := primary.SetSynchronous(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := primary.WaitStreaming(ctx, 1); err != nil {
		t.Fatal(err)
	}
	state, err := QueryValue[string](ctx, primary, "SELECT sync_state FROM pg_stat_replication")
	if err != nil || state != "sync" {
		t.Fatalf("sync_state = %q, %v; want sync", state, err)
	}
	// Acknowledged means flushed on the standby: once it is stopped, a
	// commit waits.
	if err := primary.Exec(ctx, "CREATE TABLE sync_t(i int)"); err != nil {
		t.Fatal(err)
	}
	if err := standby.Stop(context.Background(), ModeImmediate); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	err = primary.Exec(wctx, "INSERT INTO sync_t VALUES (1)")
	cancel()
	if err == nil {
		t.Fatal("a commit was acknowledged with the synchronous standby down")
	}
	if err := standby.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	// The cancelled commit is committed locally all the same; the standby
	// gets it once it streams again.
	waitRows(t, standby, "SELECT count(*)::int FROM sync_t", 1)

	if err := primary.SetSynchronous(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := standby.Stop(context.Background(), ModeImmediate); err != nil {
		t.Fatal(err)
	}
	if err := primary.Exec(ctx, "INSERT INTO sync_t VALUES (2)"); err != nil {
		t.Fatalf("asynchronous commit with the standby down: %v", err)
	}
}

func TestSetReadOnly(t *testing.T) {
	primary, standby := startPair(t)
	ctx := t.Context()
	if err := primary.SetReadOnly(ctx, true); err != nil {
		t.Fatal(err)
	}
	if p, err := primary.IsPrimary(ctx); err != nil || p {
		t.Errorf("read-only primary IsPrimary = %v, %v; want false", p, err)
	}
	if hot, err := primary.InHotStandby(ctx); err != nil || hot {
		t.Errorf("read-only primary InHotStandby = %v, %v; want false", hot, err)
	}
	err := primary.Exec(ctx, "CREATE TABLE ro_t(i int)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Errorf("create on a read-only primary: %v; want 25006", err)
	}
	// The other way round: the standby promoted, the old primary left
	// read-only, then writable again.
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	// The standby was made before SetReadOnly, so it did not inherit it.
	if p, err := standby.IsPrimary(ctx); err != nil || !p {
		t.Errorf("promoted IsPrimary = %v, %v; want true", p, err)
	}
	if err := primary.SetReadOnly(ctx, false); err != nil {
		t.Fatal(err)
	}
	if p, err := primary.IsPrimary(ctx); err != nil || !p {
		t.Errorf("writable again IsPrimary = %v, %v; want true", p, err)
	}
	if err := primary.Exec(ctx, "CREATE TABLE ro_t(i int)"); err != nil {
		t.Error(err)
	}
}

func TestStandbyClose(t *testing.T) {
	primary, standby := startPair(t)
	if err := standby.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(standby.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close, %s: %v; want it gone", standby.Dir(), err)
	}
	if standby.Running() {
		t.Error("standby Running() after Close")
	}
	if err := selectOne(t.Context(), connect(t, primary.DSN())); err != nil {
		t.Errorf("primary after the standby's Close: %v", err)
	}
}
