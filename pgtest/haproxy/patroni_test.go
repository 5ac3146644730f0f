package haproxy

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgresilient/pgresilient/pgtest/patroni"
)

// write connects through the proxy, inserts a row and reports the port of
// the server that took it.
func write(ctx context.Context, dsn string, id int) (port int, err error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return 0, err
	}
	cfg.ConnectTimeout = time.Second
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = conn.QueryRow(ctx, "INSERT INTO haproxy_writes VALUES ($1) RETURNING inet_server_port()", id).Scan(&port)
	return port, err
}

type attempt struct {
	start, end time.Time
	port       int
	err        error
}

// nextID numbers the rows the writers insert, unique across subtests.
var nextID atomic.Int64

// TestPatroniSwitchover puts HAProxy, with Patroni's check, in front of a
// 2-node Patroni cluster, once at FastCheck's rhythm and once at Patroni's
// documented one: writes through it land on the leader; after a switchover
// it routes to the new leader within a bound, and a writer connecting anew
// through it succeeds at once.
func TestPatroniSwitchover(t *testing.T) {
	began := time.Now()
	pat := patroni.NewT(t, 2)
	t.Logf("Patroni (2 nodes) started in %v", time.Since(began).Round(time.Millisecond))
	for _, tc := range []struct {
		name  string
		check Check
	}{
		{"FastCheck", FastCheck},
		{"PatroniCheck", PatroniCheck},
	} {
		t.Run(tc.name, func(t *testing.T) { switchoverThrough(t, pat, Config{Check: tc.check}) })
	}
}

func switchoverThrough(t *testing.T, pat *patroni.Cluster, cfg Config) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if err := pat.WaitHealthy(ctx); err != nil { // a synchronous standby to switch over to
		t.Fatal(err)
	}
	px := NewPatroniT(t, pat, cfg)

	leader, err := pat.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := px.Routed(); got != leader {
		t.Fatalf("Routed() = %q after Start, want the leader %s; events %+v", got, leader, px.Events())
	}
	for _, n := range pat.Nodes() {
		if err := pgExec(ctx, n.DSN(), "SELECT 1"); err != nil {
			t.Fatalf("node %s: %v", n.Name, err)
		}
	}
	if err := pgExec(ctx, px.DSN(), "CREATE TABLE IF NOT EXISTS haproxy_writes (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		port, err := write(ctx, px.DSN(), int(nextID.Add(1)))
		if err != nil {
			t.Fatal(err)
		}
		if port != pat.Node(leader).Port {
			t.Fatalf("write %d through HAProxy landed on port %d, want the leader %s's %d", i, port, leader, pat.Node(leader).Port)
		}
	}

	// A writer connecting anew for each write, every 10 ms, through the
	// switchover.
	var (
		mu       sync.Mutex
		attempts []attempt
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	// Four writers, so that one stuck in a connection to the old leader
	// does not hide when writes work again.
	for w := range 4 {
		wg.Go(func() {
			time.Sleep(time.Duration(w) * 2500 * time.Microsecond)
			for {
				select {
				case <-stop:
					return
				case <-time.After(10 * time.Millisecond):
				}
				a := attempt{start: time.Now()}
				a.port, a.err = write(ctx, px.DSN(), int(nextID.Add(1)))
				a.end = time.Now()
				mu.Lock()
				attempts = append(attempts, a)
				mu.Unlock()
			}
		})
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	time.Sleep(100 * time.Millisecond)
	switchStart := time.Now()
	newLeader, err := pat.Switchover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	done := time.Now()
	// Each server's check flips by the time Switchover returns; HAProxy
	// notices within Fall or Rise checks, one Inter apart.
	c := px.Config().Check
	bound := time.Duration(max(c.Fall, c.Rise)+1)*c.Inter + 500*time.Millisecond
	wctx, wcancel := context.WithTimeout(ctx, bound)
	routed, err := px.WaitRouted(wctx, newLeader)
	wcancel()
	if err != nil {
		st, _ := px.Servers(ctx)
		t.Fatalf("not routed to the new leader %s within %v of the switchover: %v; servers %+v; events %+v", newLeader, bound, err, st, px.Events())
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()

	st, err := px.Servers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Routable != (s.Name == newLeader) {
			t.Errorf("after the switchover to %s, HAProxy's stats say %+v", newLeader, s)
		}
	}
	port, err := write(ctx, px.DSN(), int(nextID.Add(1)))
	if err != nil || port != pat.Node(newLeader).Port {
		t.Fatalf("write after the switchover: port %d, %v; want the new leader %s's %d", port, err, newLeader, pat.Node(newLeader).Port)
	}

	// The writer: the first success after the routed moment, failures
	// that began after it, and where successes landed.
	var firstAfter time.Time
	var failedAfter int
	var lastErr error
	failed := 0
	var took time.Duration // of the first success, if begun after the moment
	errs := map[string]int{}
	for _, a := range attempts {
		if a.err != nil {
			failed++
		}
		switch {
		case a.err == nil && a.port != pat.Node(newLeader).Port && a.start.After(routed):
			t.Errorf("write begun %v after the routed moment landed on port %d, not the new leader's", a.start.Sub(routed), a.port)
		case a.err == nil && !a.end.Before(routed) && (firstAfter.IsZero() || a.end.Before(firstAfter)):
			firstAfter = a.end
			if a.start.After(routed) {
				took = a.end.Sub(a.start)
			}
		case a.err != nil && a.start.After(routed):
			failedAfter++
			lastErr = a.err
		}
		if a.err != nil {
			msg := a.err.Error()
			if i := strings.LastIndex(msg, ": "); i >= 0 {
				msg = msg[i+2:]
			}
			errs[msg]++
		}
	}
	if firstAfter.IsZero() {
		t.Fatalf("no write succeeded after HAProxy routed to %s (%d attempts)", newLeader, len(attempts))
	}
	if d := firstAfter.Sub(routed); d > time.Second {
		t.Errorf("first write through HAProxy %v after it routed to the new leader", d)
	}
	t.Logf("MEASURE haproxy switchover %s -> %s: Switchover took %v; HAProxy (inter %v fall %d rise %d) routed to the new leader %v after Switchover returned",
		leader, newLeader, done.Sub(switchStart).Round(time.Millisecond), c.Inter, c.Fall, c.Rise, routed.Sub(done).Round(time.Millisecond))
	t.Logf("MEASURE haproxy switchover raw pgx, 4 writers (new connection per write, every 10 ms): first success %v after the routed moment (begun after it, in %v; 0 if begun before); %d of %d writes begun after it failed (last: %v); %d of %d failed in all",
		firstAfter.Sub(routed).Round(100*time.Microsecond), took.Round(100*time.Microsecond), failedAfter, countAfter(attempts, routed), lastErr, failed, len(attempts))
	for e, n := range errs {
		t.Logf("  %d× %s", n, e)
	}
	for _, e := range px.Events() {
		if !e.Time.Before(switchStart) {
			t.Logf("  %+.3fs after Switchover returned: %s", e.Time.Sub(done).Seconds(), firstWords(e.Message, 6))
		}
	}
}

func countAfter(as []attempt, t time.Time) int {
	n := 0
	for _, a := range as {
		if a.start.After(t) {
			n++
		}
	}
	return n
}

func firstWords(s string, n int) string {
	var out []byte
	words := 0
	for i := 0; i < len(s); i++ {
		if s[i] == ' ' {
			words++
			if words == n {
				break
			}
		}
		out = append(out, s[i])
	}
	return string(out)
}

func pgExec(ctx context.Context, dsn, sql string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}
