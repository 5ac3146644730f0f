package patroni

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgresilient/pgresilient/pgtest"
	"github.com/pgresilient/pgresilient/pgtest/internal/proc"
	"github.com/pgresilient/pgresilient/pgtest/internal/proctest"
)

// newTimed is NewT, logging how long the start took.
func newTimed(t *testing.T, nodes int) *Cluster {
	t.Helper()
	began := time.Now()
	p := NewT(t, nodes)
	t.Logf("Start(%d) took %v", nodes, time.Since(began).Round(time.Millisecond))
	return p
}

// writeRW inserts v into ha_t through the multi-host DSN, on whichever node
// accepts writes.
func writeRW(t *testing.T, p *Cluster, v int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.DSN()+"&target_session_attrs=read-write")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS ha_t(i int)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO ha_t VALUES ($1)", v); err != nil {
		t.Fatal(err)
	}
}

// countOn counts ha_t's rows on a node.
func countOn(t *testing.T, n *Node) int {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), n.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var c int
	if err := conn.QueryRow(t.Context(), "SELECT count(*)::int FROM ha_t").Scan(&c); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCluster(t *testing.T) {
	p := newTimed(t, 2)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	leader, err := p.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p.Node(leader) == nil {
		t.Fatalf("leader %q is not a node", leader)
	}
	for _, n := range p.Nodes() {
		for _, u := range []string{n.DSN(), p.DSN(), p.EtcdURL()} {
			if !strings.Contains(u, "127.0.0.1:") {
				t.Errorf("%s: not on 127.0.0.1", u)
			}
		}
	}
	if want := "127.0.0.1:" + strconv.Itoa(p.Nodes()[0].Port) + ",127.0.0.1:" + strconv.Itoa(p.Nodes()[1].Port); !strings.Contains(p.DSN(), want) {
		t.Errorf("DSN %s does not list %s", p.DSN(), want)
	}
	writeRW(t, p, 1)

	t.Run("switchover", func(t *testing.T) {
		began := time.Now()
		newLeader, err := p.Switchover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("switchover %s -> %s took %v", leader, newLeader, time.Since(began).Round(time.Millisecond))
		if newLeader == leader {
			t.Fatalf("leader still %s", leader)
		}
		if got, err := p.Leader(ctx); err != nil || got != newLeader {
			t.Fatalf("Leader = %q, %v; want %q", got, err, newLeader)
		}
		leader = newLeader
		if err := p.WaitHealthy(ctx); err != nil {
			t.Fatal(err) // the old leader follows the new one
		}
		writeRW(t, p, 2)
		if n := countOn(t, p.Node(leader)); n != 2 {
			t.Errorf("%d rows on the new leader, want 2", n)
		}
	})

	t.Run("failover", func(t *testing.T) {
		if err := p.WaitHealthy(ctx); err != nil {
			t.Fatal(err)
		}
		writeRW(t, p, 3) // acknowledged: on the synchronous standby too
		killed := leader
		if err := p.KillNode(ctx, killed); err != nil {
			t.Fatal(err)
		}
		if ps := proctest.ProcessesOf(p.Node(killed).dir); len(ps) > 0 {
			t.Errorf("processes of the killed node left: %q", ps)
		}
		began := time.Now()
		newLeader, err := p.WaitLeader(ctx, killed)
		if err != nil {
			t.Fatal(err)
		}
		took := time.Since(began)
		t.Logf("failover %s -> %s took %v after KillNode (ttl %v)", killed, newLeader, took.Round(time.Millisecond), TTL)
		if took > 6*TTL { // generous: the ttl plus a busy machine
			t.Errorf("failover took %v", took)
		}
		if n := countOn(t, p.Node(newLeader)); n != 3 {
			t.Errorf("%d rows on the new leader, want 3: an acknowledged commit was lost", n)
		}
		writeRW(t, p, 4)
		if err := p.WaitHealthy(ctx); err == nil {
			t.Error("WaitHealthy succeeded with a node killed")
		}

		// The killed node comes back as a replica.
		began = time.Now()
		if err := p.StartNode(killed); err != nil {
			t.Fatal(err)
		}
		if err := p.WaitHealthy(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("killed node back as a replica after %v", time.Since(began).Round(time.Millisecond))
		if got, err := p.Leader(ctx); err != nil || got != newLeader {
			t.Errorf("Leader = %q, %v; want %q", got, err, newLeader)
		}
	})

	t.Run("close", func(t *testing.T) {
		if ps := proctest.ProcessesOf(p.Dir()); len(ps) == 0 {
			t.Error("no process found before Close: processesOf is broken")
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if ps := proctest.ProcessesOf(p.Dir()); len(ps) > 0 {
			t.Errorf("processes left after Close: %q", ps)
		}
		if _, err := os.Stat(p.Dir()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Close, %s: %v; want it gone", p.Dir(), err)
		}
		if err := p.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if err := p.KillNode(ctx, "node1"); err == nil {
			t.Error("KillNode after Close succeeded")
		}
	})
}

// TestReap: a bed whose owner died is reaped by the next start.
func TestReap(t *testing.T) {
	p := newTimed(t, 1)
	// A pid that no longer exists: a child that has exited and been waited.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.Dir(), proc.OwnerFile), []byte(strconv.Itoa(dead.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	reapStale(filepath.Dir(p.Dir()))
	if ps := proctest.ProcessesOf(p.Dir()); len(ps) > 0 {
		t.Errorf("processes left after reaping: %q", ps)
	}
	if _, err := os.Stat(p.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after reaping, %s: %v; want it gone", p.Dir(), err)
	}
}

func TestNotFound(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := Start(t.Context(), 2)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Start without patroni on PATH: %v; want ErrNotFound", err)
	}
	for _, want := range []string{"apt-get install patroni etcd-server", pgtest.SkipEnv + "=1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}
