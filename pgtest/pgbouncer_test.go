package pgtest

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgresilient/pgresilient/pgtest/internal/proc"
)

// TestBouncer starts PgBouncer in transaction pooling in front of the
// cluster, queries through it, and exercises each fault method.
func TestBouncer(t *testing.T) {
	c := Require(t, cluster)
	b := NewBouncerT(t, c, BouncerConfig{PoolMode: PoolTransaction, MaxClientConn: 5, DefaultPoolSize: 2, QueryWaitTimeout: time.Second})
	if b.Host() != "127.0.0.1" || b.Port() == 0 || b.Port() == c.Port() {
		t.Fatalf("Host, Port = %q, %d", b.Host(), b.Port())
	}
	if !strings.HasPrefix(b.Dir(), c.Dir()) {
		t.Errorf("pgbouncer's directory %s is not inside the cluster's %s", b.Dir(), c.Dir())
	}
	ctx := t.Context()
	query := func() error {
		conn, err := pgx.Connect(ctx, b.DSN()+"&default_query_exec_mode=exec")
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		return selectOne(ctx, conn)
	}
	if err := query(); err != nil {
		t.Fatal(err)
	}
	var mode string
	if err := b.WithAdmin(ctx, func(conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, "SHOW CONFIG")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			vals, err := rows.Values()
			if err != nil {
				return err
			}
			if vals[0] == "pool_mode" {
				mode, _ = vals[1].(string)
			}
		}
		return rows.Err()
	}); err != nil {
		t.Fatal(err)
	}
	if PoolMode(mode) != PoolTransaction {
		t.Errorf("pool_mode = %q", mode)
	}
	for _, f := range []struct {
		name string
		run  func() error
	}{
		{"reconnect", func() error { return b.Reconnect(ctx) }},
		{"pause+resume", func() error { return errors.Join(b.Pause(ctx), b.Resume(ctx)) }},
		{"kill+resume", func() error { return errors.Join(b.Kill(ctx), b.Resume(ctx)) }},
		{"restart", func() error { return b.Restart(ctx) }},
	} {
		if err := f.run(); err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		if err := query(); err != nil {
			t.Fatalf("query after %s: %v", f.name, err)
		}
	}
	// An unknown admin command is the console's ERROR 08P01.
	err := b.Admin(ctx, "NO SUCH COMMAND")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08P01" || pgErr.Severity != "ERROR" {
		t.Errorf("bad admin command: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := query(); err == nil {
		t.Error("pgbouncer still answers after Close")
	}
}

func TestBouncerBadMode(t *testing.T) {
	c := Require(t, cluster)
	if _, err := StartBouncer(t.Context(), c, BouncerConfig{PoolMode: "statement-ish"}); err == nil {
		t.Fatal("want an error for an invalid pool mode")
	}
}

// TestReapBouncers: the pgbouncer a dead test process left in its cluster's
// directory is killed by the reaping of the next Start; any other process
// named in a pid file is left alone.
func TestReapBouncers(t *testing.T) {
	c := Require(t, cluster)
	b := NewBouncerT(t, c, BouncerConfig{})
	// A pid file naming ourselves, not a pgbouncer: must survive.
	decoy := filepath.Join(c.Dir(), proc.BouncerDirPrefix+"decoy")
	if err := os.Mkdir(decoy, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(decoy)
	if err := os.WriteFile(filepath.Join(decoy, proc.BouncerPidFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatal(err)
	}
	proc.ReapBouncers(c.Dir())
	select {
	case <-b.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("pgbouncer still running after reapBouncers")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestStartBouncerWithoutBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	saved := bouncerPaths
	bouncerPaths = nil
	defer func() { bouncerPaths = saved }()
	b, err := StartBouncer(t.Context(), nil, BouncerConfig{})
	if !errors.Is(err, ErrBouncerNotFound) || b != nil || !strings.Contains(err.Error(), "apt-get install pgbouncer") {
		t.Fatalf("StartBouncer = %v, %v; want nil and ErrBouncerNotFound saying how to install it", b, err)
	}
}
