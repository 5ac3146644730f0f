package pgresilient

// Issue 21, partial availability: a server at max_connections still serves
// its open connections. A full server's 53300 says "busy", not "down": it
// must open no breaker, and a call waits it out within its deadline (or
// takes a pooled connection that comes free) instead of failing.
//
//	go test -count=1 -v -run TestAvailability .

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgresilient/pgresilient/faultproxy"
	"github.com/pgresilient/pgresilient/pgtest"
)

// availPool is one pool of the full-server test and what its workers saw.
type availPool struct {
	driver string
	n      int // its share of max_connections
	db     *sql.DB
	cn     *Connector // pgresilient's

	served, failed, circuitOpen, late atomic.Int64
	slowest                           atomic.Int64 // nanoseconds
	mu                                sync.Mutex
	kinds                             map[string]int
}

func (p *availPool) note(err error, took time.Duration, deadline time.Duration) {
	for s := p.slowest.Load(); int64(took) > s && !p.slowest.CompareAndSwap(s, int64(took)); s = p.slowest.Load() {
	}
	if took > deadline+100*time.Millisecond {
		p.late.Add(1)
	}
	if err == nil {
		p.served.Add(1)
		return
	}
	p.failed.Add(1)
	if errors.Is(err, ErrCircuitOpen) {
		p.circuitOpen.Add(1)
	}
	k := "other: " + err.Error()
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, ErrCircuitOpen):
		k = "ErrCircuitOpen"
	case errors.As(err, &pgErr):
		k = "SQLSTATE " + pgErr.Code
	case errors.Is(err, context.DeadlineExceeded):
		k = "deadline"
	}
	p.mu.Lock()
	p.kinds[k]++
	p.mu.Unlock()
}

// kindList says how many failures of each kind the pool saw, sorted.
// drivePools runs workers goroutines per pool for runFor, each calling
// query, with deadline per call and pace between calls, noting every
// outcome in its pool.
func drivePools(pools []*availPool, workers int, query string, deadline, runFor, pace time.Duration) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range pools {
		for range workers {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), deadline)
					began := time.Now()
					var one int
					err := p.db.QueryRowContext(ctx, query).Scan(&one)
					took := time.Since(began)
					cancel()
					p.note(err, took, deadline)
					time.Sleep(pace)
				}
			})
		}
	}
	time.Sleep(runFor)
	close(stop)
	wg.Wait()
}

func (p *availPool) kindList() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	kinds := make([]string, 0, len(p.kinds))
	for k, n := range p.kinds {
		kinds = append(kinds, fmt.Sprintf("%d× %s", n, k))
	}
	sort.Strings(kinds)
	return strings.Join(kinds, ", ")
}

// TestAvailabilityServerFull: a throwaway server with max_connections 34
// (no superuser reserve), filled by six pools at once, three per driver:
// 8, 8 and 1 connections. Each pool's 8 workers run a 5 ms statement under
// a 2 s deadline for 4 s, both drivers at the same time, so they share the
// machine; 5 ms on the server, so that a pool is bound by its connections,
// not by the two cores (with `select 1`, the pools of 8 measured each
// driver's CPU cost, and under -race pgresilient's more than raw pgx's). The third pools dial for more and meet 53300 on every attempt.
// pgresilient: no ErrCircuitOpen, every pool serves at least as many calls
// as raw pgx's pool of the same size (the third, which raw pgx serves only
// on its one connection, too), and no call outlives its deadline.
func TestAvailabilityServerFull(t *testing.T) {
	const (
		workers  = 8
		deadline = 2 * time.Second
		runFor   = 4 * time.Second
		pace     = 2 * time.Millisecond
	)
	shares := []int{8, 8, 1}
	c := pgtest.NewT(t)
	ctx := context.Background()
	total := 0
	for _, n := range shares {
		total += n
	}
	total *= len(drivers)
	for _, q := range []string{
		fmt.Sprintf("alter system set max_connections = %d", total),
		"alter system set superuser_reserved_connections = 0",
	} {
		if err := c.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Restart(context.Background(), pgtest.ModeFast); err != nil {
		t.Fatal(err)
	}
	if got, err := pgtest.QueryValue[string](ctx, c, "show max_connections"); err != nil || got != fmt.Sprint(total) {
		t.Fatalf("max_connections %q (%v), want %d", got, err, total)
	}

	var pools []*availPool
	for _, name := range drivers {
		for _, n := range shares {
			p := &availPool{driver: name, n: n, kinds: map[string]int{}}
			if name == DriverName {
				p.db, p.cn = outageDB(t, c.DSN()+issue21Params)
			} else {
				p.db = openDB(t, name, c.DSN())
			}
			p.db.SetMaxIdleConns(workers) // keep them all (database/sql's default keeps 2)
			held := holdConns(t, p.db, n) // the pool's share of the server, open now
			releaseConns(held)
			pools = append(pools, p)
		}
	}
	// The server is full: one more connection is refused.
	if pc, err := pgconn.Connect(ctx, c.DSN()); err == nil {
		_ = pc.Close(ctx)
		t.Fatal("the server accepted a connection past max_connections")
	} else if !isCode(err, "53300") {
		t.Fatalf("past max_connections: want 53300, got %v", err)
	}

	drivePools(pools, workers, "select 1 from pg_sleep(0.005)", deadline, runFor, pace)

	byKey := map[string]*availPool{}
	for i, p := range pools {
		byKey[fmt.Sprintf("%s/%d", p.driver, i%len(shares))] = p
		extra := ""
		if p.cn != nil {
			st := p.cn.Stats()
			extra = fmt.Sprintf(" breaker=%v transitions=%d connect_failures=%d connect_retries=%d opened=%d", st.Breaker, st.BreakerTransitions, st.ConnectFailures, st.ConnectRetries, st.Opened)
		}
		t.Logf("MEASURE availability/full %s pool%d(%d conns) served=%d failed=%d circuit_open=%d slowest=%s late=%d%s [%s]",
			p.driver, i%len(shares)+1, p.n, p.served.Load(), p.failed.Load(), p.circuitOpen.Load(),
			outageMS(time.Duration(p.slowest.Load())), p.late.Load(), extra, p.kindList())
	}
	for i := range shares {
		raw, pgr := byKey[fmt.Sprintf("pgx/%d", i)], byKey[fmt.Sprintf("%s/%d", DriverName, i)]
		if n := pgr.circuitOpen.Load(); n != 0 {
			t.Errorf("pool %d: %d ErrCircuitOpen on a full server", i+1, n)
		}
		// At least as many, within 5%: the pools share two cores with
		// the server and each other, and their counts vary by a few
		// percent from run to run (the pools of 8 are bound by the CPU).
		if pgr.served.Load()*100 < raw.served.Load()*95 {
			t.Errorf("pool %d (%d connections): pgresilient served %d calls, raw pgx %d", i+1, shares[i], pgr.served.Load(), raw.served.Load())
		}
		// Fewer failed: a call that meets 53300 waits, within its deadline,
		// for a connection that comes free; raw pgx's fails at once.
		if pgr.failed.Load() > raw.failed.Load() {
			t.Errorf("pool %d (%d connections): pgresilient failed %d calls, raw pgx %d", i+1, shares[i], pgr.failed.Load(), raw.failed.Load())
		}
		if i == len(shares)-1 && raw.failed.Load() == 0 {
			t.Errorf("pool %d: raw pgx failed no call: the server was not full", i+1)
		}
		if n := pgr.late.Load(); n != 0 {
			t.Errorf("pool %d: %d calls outlived their %v deadline by over 100ms (slowest %v)", i+1, n, deadline, time.Duration(pgr.slowest.Load()))
		}
		if st := pgr.cn.Stats(); st.BreakerTransitions != 0 {
			t.Errorf("pool %d: the breaker moved %d times on a full server", i+1, st.BreakerTransitions)
		}
	}
}

// issue21Params are the pgresilient settings of issue 21's measurements
// (issue13Params without breaker_cooldown: the default, 1s).
const issue21Params = "&breaker_failures=5&connect_retries=20&connect_backoff=50ms&connect_backoff_max=500ms&query_timeout=1s"

// TestAvailabilityRecoveryHerd: 8 pools, 8 workers each, through a fault
// proxy, lose every connection and meet refused connections for 3 s, then
// the address accepts again; each driver in turn, so that neither's herd
// loads the machine during the other's recovery. Measured: the connection
// attempts per second the address receives from the 8 pools during the
// outage and in the first second after it, the probe rate per pgresilient
// Connector, and each pool's first success after the address accepts again.
// pgresilient: only the probers dial while open (about 20 probes a second
// each while calls wait: probeDemandMax), and every pool serves again within
// ~100 ms (asserted: 500 ms).
func TestAvailabilityRecoveryHerd(t *testing.T) {
	const (
		pools    = 8
		workers  = 8
		outage   = 3 * time.Second
		deadline = 2 * time.Second
	)
	c := needCluster(t)
	sideBySide(t, func(t *testing.T, name string) {
		p := newProxy(t, c)
		var dbs []*sql.DB
		var cns []*Connector
		for range pools {
			dsn := c.DSNAt(p.Addr())
			var db *sql.DB
			if name == DriverName {
				var cn *Connector
				db, cn = outageDB(t, dsn+issue21Params)
				cns = append(cns, cn)
			} else {
				db = openDB(t, name, dsn)
			}
			db.SetMaxIdleConns(workers)
			warmPool(t, db, workers)
			dbs = append(dbs, db)
		}
		var calls, failed, upAt atomic.Int64
		first := make([]atomic.Int64, pools) // after up, nanoseconds
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i, db := range dbs {
			for range workers {
				wg.Go(func() {
					for {
						select {
						case <-stop:
							return
						default:
						}
						ctx, cancel := context.WithTimeout(context.Background(), deadline)
						var one int
						err := db.QueryRowContext(ctx, "select 1").Scan(&one)
						cancel()
						calls.Add(1)
						if err != nil {
							failed.Add(1)
							time.Sleep(20 * time.Millisecond)
							continue
						}
						if up := upAt.Load(); up != 0 && first[i].Load() == 0 {
							first[i].CompareAndSwap(0, time.Now().UnixNano()-up)
						}
						time.Sleep(2 * time.Millisecond)
					}
				})
			}
		}
		time.Sleep(500 * time.Millisecond)
		if err := p.Refuse(true); err != nil {
			t.Fatal(err)
		}
		p.Cut()
		defer func() { _ = p.Refuse(false) }()
		type snap struct{ calls, failed, probes, connectFailures int64 }
		take := func() snap {
			sn := snap{calls: calls.Load(), failed: failed.Load()}
			for _, cn := range cns {
				st := cn.Stats()
				sn.probes += st.Probes
				sn.connectFailures += st.ConnectFailures
			}
			return sn
		}
		// The last 2 s of the outage.
		time.Sleep(outage - 2*time.Second)
		a := take()
		time.Sleep(2 * time.Second)
		b := take()
		d := snap{b.calls - a.calls, b.failed - a.failed, b.probes - a.probes, b.connectFailures - a.connectFailures}
		accepted := p.Accepted()
		up := time.Now()
		upAt.Store(up.UnixNano())
		if err := p.Refuse(false); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		accepted = p.Accepted() - accepted
		close(stop)
		wg.Wait()

		var firsts []time.Duration
		for i := range first {
			f := time.Duration(first[i].Load())
			if f == 0 {
				f = -1
			}
			firsts = append(firsts, f)
		}
		slices.Sort(firsts)
		attempts := d.failed // raw pgx: every failed call dialled once
		if name == DriverName {
			attempts = d.probes + d.connectFailures
		}
		t.Logf("MEASURE availability/herd %s %d pools: during the outage %.0f connection attempts/s (%.1f probes/s per Connector, %.0f calls/s, %.0f failed/s); first second after: %d connections accepted; first success per pool after up: %v",
			name, pools, float64(attempts)/2, float64(d.probes)/2/pools, float64(d.calls)/2, float64(d.failed)/2, accepted, firsts)
		if name != DriverName {
			return
		}
		if perConn := float64(d.probes) / 2 / pools; perConn > 2*float64(time.Second/probeDemandMax) {
			t.Errorf("%.1f probes/s per Connector during the outage, want about %d (one per ~%v while calls wait)", perConn, time.Second/probeDemandMax, probeDemandMax)
		}
		if d.connectFailures > 0 {
			t.Errorf("%d connection attempts of calls while open: only the probers should dial", d.connectFailures)
		}
		for i, f := range firsts {
			if f < 0 || f > hxFirstBound {
				t.Errorf("pool %d: first success %v after the address accepted again, want within ~100ms (asserted: %v)", i, f, hxFirstBound)
			}
		}
	})
}

// TestAvailabilityRefusingAddress: the address refuses new connections (a
// proxy or pooler that stopped accepting, an overflowing listen queue)
// while the connections already open keep working, and half of a warm pool
// of 8 is lost (its backends terminated). 8 workers per driver, both drivers
// at once (each through its own fault proxy), so that they share the
// machine; 2 s deadlines, for 3 s, bare DSN. Raw pgx serves on the 4
// connections left and fails the calls that have to dial. pgresilient: a
// call whose dial is refused takes a pooled connection that comes free, and
// the breaker stays closed (the working connections' successes are evidence
// that the database serves; refused dials alone would open it): at least as
// many calls served as raw pgx, fewer failed, none past its deadline.
func TestAvailabilityRefusingAddress(t *testing.T) {
	const (
		workers  = 8
		lost     = 4
		deadline = 2 * time.Second
		runFor   = 3 * time.Second
		pace     = 2 * time.Millisecond
	)
	c := needCluster(t)
	ctx := context.Background()
	res := map[string]*availPool{}
	var proxies []*faultproxy.Proxy
	for _, name := range drivers {
		p := newProxy(t, c)
		proxies = append(proxies, p)
		dsn := c.DSNAt(p.Addr()) + "&application_name=refusing_" + name
		pool := &availPool{driver: name, n: workers, kinds: map[string]int{}}
		if name == DriverName {
			pool.db, pool.cn = outageDB(t, dsn)
		} else {
			pool.db = openDB(t, name, dsn)
		}
		res[name] = pool
		warmPool(t, pool.db, workers)
	}
	for _, p := range proxies {
		if err := p.Refuse(true); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = p.Refuse(false) }()
	}
	for _, name := range drivers {
		n, err := pgtest.QueryValue[int](ctx, c, "select count(pg_terminate_backend(pid, 5000))::int from (select pid from pg_stat_activity where application_name = $1 limit $2) s", "refusing_"+name, lost)
		if err != nil || n != lost {
			t.Fatalf("%s: terminated %d backends (%v), want %d", name, n, err, lost)
		}
	}
	drivePools(slices.Collect(maps.Values(res)), workers, "select 1", deadline, runFor, pace)
	for _, name := range drivers {
		pool := res[name]
		extra := ""
		if pool.cn != nil {
			st := pool.cn.Stats()
			extra = fmt.Sprintf(" breaker=%v transitions=%d rejected=%d connect_failures=%d", st.Breaker, st.BreakerTransitions, st.BreakerRejected, st.ConnectFailures)
		}
		t.Logf("MEASURE availability/refusing %s served=%d failed=%d circuit_open=%d slowest=%s%s [%s]",
			name, pool.served.Load(), pool.failed.Load(), pool.circuitOpen.Load(), outageMS(time.Duration(pool.slowest.Load())), extra, pool.kindList())
	}
	raw, pgr := res["pgx"], res[DriverName]
	if raw.failed.Load() == 0 {
		t.Errorf("raw pgx failed no call: the fault did not happen")
	}
	// At least as many, within 5%, as in TestAvailabilityServerFull.
	if pgr.served.Load()*100 < raw.served.Load()*95 {
		t.Errorf("pgresilient served %d calls, raw pgx %d: the connections that still work must serve", pgr.served.Load(), raw.served.Load())
	}
	if pgr.failed.Load() >= raw.failed.Load() {
		t.Errorf("pgresilient failed %d calls, raw pgx %d", pgr.failed.Load(), raw.failed.Load())
	}
	if n := pgr.late.Load(); n != 0 {
		t.Errorf("%d calls outlived their %v deadline by over 100ms", n, deadline)
	}
	if st := pgr.cn.Stats(); st.BreakerTransitions != 0 || pgr.circuitOpen.Load() != 0 {
		t.Errorf("the breaker moved %d times (%d ErrCircuitOpen) while the open connections served", st.BreakerTransitions, pgr.circuitOpen.Load())
	}
	if st := pgr.cn.Stats(); st.ConnectFailures == 0 {
		t.Errorf("pgresilient dialled no refused connection: the fault did not reach it")
	}
}

// TestAvailabilityOpenBreakerPooledServes: the address in front of the
// server refuses new connections while the pool's two connections are held,
// long enough for the calls that dial to open pgresilient's breaker (bare
// DSN: 5 failures over 500 ms). Then the two come back to the pool, still
// working, and 20 calls follow, the address still refusing. Raw pgx serves
// every one on them. pgresilient asks each one it reuses (a ping, no longer
// than a call would wait for a probe); one that answers passes the breaker
// for this open period, and every call is served, while the breaker stays
// open for new connections. Before, each call waited for a probe that could
// not connect and failed with ErrCircuitOpen.
func TestAvailabilityOpenBreakerPooledServes(t *testing.T) {
	const (
		conns    = 2
		calls    = 20
		refusing = 1500 * time.Millisecond
	)
	c := needCluster(t)
	sideBySide(t, func(t *testing.T, name string) {
		p := newProxy(t, c)
		dsn := c.DSNAt(p.Addr())
		var (
			db *sql.DB
			cn *Connector
		)
		if name == DriverName {
			db, cn = outageDB(t, dsn)
		} else {
			db = openDB(t, name, dsn)
		}
		warmPool(t, db, conns)
		db.SetMaxOpenConns(0) // calls beyond the two dial
		held := holdConns(t, db, conns)
		if err := p.Refuse(true); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = p.Refuse(false) }()
		refused := 0
		for until := time.Now().Add(refusing); time.Now().Before(until); {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			err := db.PingContext(ctx)
			cancel()
			if err == nil {
				releaseConns(held)
				t.Fatal("a call was served with every connection held and new ones refused")
			}
			refused++
			time.Sleep(10 * time.Millisecond)
		}
		if cn != nil {
			if st := cn.Stats(); st.Breaker != BreakerOpen {
				releaseConns(held)
				t.Fatalf("breaker %v after %d refused calls, want open: the case this test is about did not arise", st.Breaker, refused)
			}
		}
		releaseConns(held)
		served, circuitOpen := 0, 0
		var firstErr error
		for range calls {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			var one int
			err := db.QueryRowContext(ctx, "select 1").Scan(&one)
			cancel()
			switch {
			case err == nil:
				served++
			case errors.Is(err, ErrCircuitOpen):
				circuitOpen++
			}
			if err != nil && firstErr == nil {
				firstErr = err
			}
		}
		extra := ""
		if cn != nil {
			st := cn.Stats()
			extra = fmt.Sprintf(" breaker=%v transitions=%d probes=%d", st.Breaker, st.BreakerTransitions, st.Probes)
		}
		t.Logf("MEASURE availability/open-pooled %s refused_while_held=%d served=%d/%d circuit_open=%d first_error=%v%s",
			name, refused, served, calls, circuitOpen, firstErr, extra)
		if served != calls {
			t.Errorf("%s: %d of %d calls served by the pool's working connections (%d ErrCircuitOpen; first error: %v)", name, served, calls, circuitOpen, firstErr)
		}
		if cn != nil && cn.Stats().Breaker == BreakerClosed {
			// The address still refuses new connections: no probe can
			// connect, and the breaker guards new connections.
			t.Errorf("breaker closed while the address still refuses new connections")
		}
	})
}
