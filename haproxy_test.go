package pgresilient

// Issue 21, moving availability: Patroni behind HAProxy with Patroni's
// recommended check (OPTIONS /primary, on-marked-down shutdown-sessions;
// FastCheck's rhythm, inter 1s fall 2 rise 1, as the issue measured). While
// HAProxy has no server UP it accepts connections and closes them; a
// pool's connections to the old primary are shut down when it is marked
// DOWN. Once HAProxy routes to the new primary, writes must work again at
// once: pgresilient's breaker used to refuse them (179 ErrCircuitOpen after
// the routed moment, first success 372 ms after it).
//
// 8 writers per driver, both drivers at once through the same HAProxy,
// target_session_attrs=read-write, client-side ids, a 2 s deadline per
// write, 20 ms pause after a failure.
//
//	go test -count=1 -v -run TestHAProxy .

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgresilient/pgresilient/pgtest/haproxy"
	"github.com/pgresilient/pgresilient/pgtest/patroni"
)

const (
	hxWriters  = 8
	hxDeadline = 2 * time.Second
	hxPause    = 20 * time.Millisecond
	hxAfter    = 3 * time.Second // writing after HAProxy routed to the new primary
	// hxFirstBound is the generous bound on the first success after the
	// routed moment; the target is 100 ms.
	hxFirstBound = 500 * time.Millisecond
)

type hxWrite struct {
	id         int64
	start, end time.Time
	err        error
}

type hxDriver struct {
	name   string
	db     *sql.DB
	cn     *Connector
	table  string
	base   int64
	mu     sync.Mutex
	writes []hxWrite
}

func (d *hxDriver) run(stop <-chan struct{}, w int64) {
	for n := int64(0); ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		id := d.base + w<<32 + n
		ctx, cancel := context.WithTimeout(context.Background(), hxDeadline)
		start := time.Now()
		_, err := d.db.ExecContext(ctx, "insert into "+d.table+" values ($1)", id)
		end := time.Now()
		cancel()
		d.mu.Lock()
		d.writes = append(d.writes, hxWrite{id: id, start: start, end: end, err: err})
		d.mu.Unlock()
		if err != nil {
			time.Sleep(hxPause)
		}
	}
}

// hxResult is one driver's figures around the routed moment.
type hxResult struct {
	writes, failed, failedAfter int
	firstAfter                  time.Duration // first success ending after the routed moment
	resumed                     bool
	duplicated, lost            int
	unsafe                      int // failed writes whose row is there, not ErrConnLost (pgresilient)
	kindsAfter, kinds           map[string]int
	firstAfterErr               error // the first failure of a write begun after the routed moment
}

func (d *hxDriver) result(t *testing.T, leaderDSN string, routed time.Time) hxResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seen := map[int64]int{}
	conn, err := pgx.Connect(ctx, leaderDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "select id from "+d.table)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		seen[id]++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	r := hxResult{writes: len(d.writes), kindsAfter: map[string]int{}, kinds: map[string]int{}}
	for _, n := range seen {
		if n > 1 {
			r.duplicated += n - 1
		}
	}
	for _, w := range d.writes {
		if w.err == nil {
			if seen[w.id] == 0 {
				r.lost++
			}
			if !w.end.Before(routed) && (!r.resumed || w.end.Sub(routed) < r.firstAfter) {
				r.resumed, r.firstAfter = true, w.end.Sub(routed)
			}
			continue
		}
		r.failed++
		k := foKind(w.err)
		r.kinds[k]++
		if w.start.After(routed) {
			r.failedAfter++
			r.kindsAfter[k]++
			if r.firstAfterErr == nil {
				r.firstAfterErr = fmt.Errorf("%w (began %+.3fs from the routed moment, took %v)", w.err, w.start.Sub(routed).Seconds(), w.end.Sub(w.start).Round(time.Microsecond))
			}
		}
		if seen[w.id] > 0 && !errors.Is(w.err, ErrConnLost) {
			r.unsafe++
		}
	}
	return r
}

func hxKinds(m map[string]int) string {
	var out []string
	for k, n := range m {
		out = append(out, fmt.Sprintf("%d× %s", n, k))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// runHAProxy writes through px with both drivers while fault changes the
// primary, and checks pgresilient against raw pgx around the moment HAProxy
// routed every new connection to the new primary. fault returns the new
// leader's name.
func runHAProxy(t *testing.T, scenario string, pat *patroni.Cluster, px *haproxy.Proxy, fault func(t *testing.T) string) {
	ctx := context.Background()
	var log outageLogBuffer // pgresilient's breaker transitions, for the test's output
	drv := map[string]*hxDriver{}
	setup := ""
	for i, name := range drivers {
		d := &hxDriver{name: name, table: "hx_" + strings.ReplaceAll(name, DriverName, "pgr"), base: int64(i+1) << 48}
		setup += "drop table if exists " + d.table + "; create table " + d.table + " (id bigint);"
		drv[name] = d
	}
	if err := pgxExec(ctx, px.DSN(), setup); err != nil {
		t.Fatal(err)
	}
	for _, d := range drv {
		dsn := px.DSN() + "&target_session_attrs=read-write"
		if d.name == DriverName {
			d.db, d.cn = outageDB(t, dsn+issue21Params, WithLogger(slog.New(slog.NewTextHandler(&log, nil))))
		} else {
			d.db = openDB(t, d.name, dsn)
		}
		d.db.SetMaxIdleConns(hxWriters)
		warmPool(t, d.db, hxWriters)
	}
	stop := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	halt := func() { once.Do(func() { close(stop) }); wg.Wait() }
	defer halt()
	for _, d := range drv {
		for w := range hxWriters {
			wg.Go(func() { d.run(stop, int64(w)) })
		}
	}
	time.Sleep(time.Second)
	faultAt := time.Now()
	newLeader := fault(t)
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	routed, err := px.WaitRouted(wctx, newLeader)
	cancel()
	if err != nil {
		halt()
		t.Fatalf("HAProxy did not route to the new leader %s: %v; events %+v", newLeader, err, px.Events())
	}
	if wait := time.Until(routed.Add(hxAfter)); wait > 0 {
		time.Sleep(wait)
	}
	halt()
	t.Logf("%s: HAProxy routed to the new leader %s %v after the fault began", scenario, newLeader, routed.Sub(faultAt).Round(time.Millisecond))
	for _, e := range px.Events() {
		if !e.Time.Before(faultAt) {
			t.Logf("  %+.3fs from the routed moment: HAProxy: %s", e.Time.Sub(routed).Seconds(), firstWordsOf(e.Message, 6))
		}
	}
	for _, l := range strings.Split(log.String(), "\n") {
		if strings.Contains(l, "circuit breaker") {
			t.Logf("  pgresilient: %s", l)
		}
	}

	results := map[string]hxResult{}
	sideBySide(t, func(t *testing.T, name string) {
		d := drv[name]
		r := d.result(t, pat.Node(newLeader).DSN(), routed)
		results[name] = r
		first := "never"
		if r.resumed {
			first = outageMS(r.firstAfter)
		}
		extra := ""
		if d.cn != nil {
			st := d.cn.Stats()
			extra = fmt.Sprintf(" breaker_transitions=%d rejected=%d probes=%d connect_failures=%d", st.BreakerTransitions, st.BreakerRejected, st.Probes, st.ConnectFailures)
		}
		t.Logf("MEASURE haproxy/%s %s writes=%d failed=%d failed_after_routed=%d first_success_after_routed=%s duplicated=%d lost=%d%s",
			scenario, name, r.writes, r.failed, r.failedAfter, first, r.duplicated, r.lost, extra)
		t.Logf("%s: failures: %s", name, hxKinds(r.kinds))
		if r.failedAfter > 0 {
			t.Logf("%s: failures begun after the routed moment: %s", name, hxKinds(r.kindsAfter))
		}
		if name != DriverName {
			return
		}
		if r.duplicated != 0 || r.lost != 0 {
			t.Errorf("%d rows twice, %d acknowledged rows missing", r.duplicated, r.lost)
		}
		if r.unsafe != 0 {
			t.Errorf("%d failed writes ran although their error was not ErrConnLost", r.unsafe)
		}
		if !r.resumed || r.firstAfter > hxFirstBound {
			t.Errorf("first success %s after the routed moment, want within ~100ms (asserted: %v)", first, hxFirstBound)
		}
	})
	p, g := results["pgx"], results[DriverName]
	if g.failedAfter > p.failedAfter {
		t.Errorf("pgresilient: %d writes failed after the routed moment (%s; the first: %v), raw pgx %d", g.failedAfter, hxKinds(g.kindsAfter), g.firstAfterErr, p.failedAfter)
	}
	// At most one per writer, unless raw pgx's writes failed past that too:
	// then HAProxy routed before the new primary took writes (its /primary
	// check answered first), and no driver could do better than raw pgx's
	// count, asserted above.
	switch {
	case g.failedAfter > hxWriters && p.failedAfter <= hxWriters:
		t.Errorf("pgresilient: %d writes begun after HAProxy routed to the new primary failed (%s; the first: %v), want at most %d", g.failedAfter, hxKinds(g.kindsAfter), g.firstAfterErr, hxWriters)
	case g.failedAfter > hxWriters:
		t.Logf("raw pgx's writes failed after the routed moment too (%d): the new primary did not take writes when HAProxy routed to it", p.failedAfter)
	}
	t.Logf("MEASURE haproxy/%s failed_after_routed pgx=%d pgresilient=%d; first_success_after_routed pgx=%s pgresilient=%s",
		scenario, p.failedAfter, g.failedAfter, outageMS(p.firstAfter), outageMS(g.firstAfter))
}

func hxBed(t *testing.T) (*patroni.Cluster, *haproxy.Proxy, string) {
	pat := patroni.NewT(t, 2)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if err := pat.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	px := haproxy.NewPatroniT(t, pat, haproxy.Config{Check: haproxy.FastCheck})
	leader, err := pat.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return pat, px, leader
}

// TestHAProxySwitchover: a planned Patroni switchover behind HAProxy.
func TestHAProxySwitchover(t *testing.T) {
	t.Parallel()
	pat, px, leader := hxBed(t)
	runHAProxy(t, "switchover", pat, px, func(t *testing.T) string {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		got, err := pat.Switchover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got == leader {
			t.Fatalf("switchover kept the leader %s", leader)
		}
		return got
	})
}

// TestHAProxyKill: the leader node killed (Patroni and PostgreSQL, SIGKILL)
// behind HAProxy; the other node takes over once the leader key expires.
func TestHAProxyKill(t *testing.T) {
	t.Parallel()
	pat, px, leader := hxBed(t)
	runHAProxy(t, "kill", pat, px, func(t *testing.T) string {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := pat.KillNode(ctx, leader); err != nil {
			t.Fatal(err)
		}
		got, err := pat.WaitLeader(ctx, leader)
		if err != nil {
			t.Fatal(err)
		}
		return got
	})
}

func firstWordsOf(s string, n int) string {
	if f := strings.Fields(s); len(f) > n {
		return strings.Join(f[:n], " ")
	}
	return s
}
