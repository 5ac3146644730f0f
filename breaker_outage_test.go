package pgresilient

// Issue 13, "outages in milliseconds": the breaker counts attempts once the
// Connector has had a working connection, opens at once on a timeout,
// recovers by a background probe, and rides out a fast restart. Each test
// logs its numbers on "MEASURE breaker/<scenario> <driver>" lines; timings
// are asserted only as generous bounds.

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgresilient/pgresilient/pgtest"
)

// issue13Params are the settings of the issue's measurements.
const issue13Params = "&breaker_failures=5&breaker_cooldown=1s&connect_retries=20&connect_backoff=50ms&connect_backoff_max=500ms&query_timeout=1s"

// issue13Deadline is each call's own deadline in these tests.
const issue13Deadline = 2 * time.Second

func issue13Call(db *sql.DB) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), issue13Deadline)
	defer cancel()
	began := time.Now()
	var one int
	err := db.QueryRowContext(ctx, "select 1").Scan(&one)
	return time.Since(began), err
}

// TestBreakerOutageStopped: the server stops under a warm pool; 100
// sequential calls. The breaker opens on the connection attempts of the first
// call (5 failures spanning breakerMinSpan), so no call waits much longer
// than that, and the background probes dial a few times only.
func TestBreakerOutageStopped(t *testing.T) {
	const calls = 100
	c := needCluster(t)
	db, cn := outageDB(t, c.DSN()+issue13Params)
	warmPool(t, db, 4)
	raw := openDB(t, "pgx", c.DSN())
	warmPool(t, raw, 4)
	outageStop(t, c)

	t.Run(DriverName, func(t *testing.T) {
		before := cn.Stats()
		began := time.Now()
		var slowest time.Duration
		open := 0
		for i := range calls {
			took, err := issue13Call(db)
			if err == nil {
				t.Fatalf("call %d succeeded against a stopped server", i+1)
			}
			slowest = max(slowest, took)
			if errors.Is(err, ErrCircuitOpen) {
				open++
			}
		}
		st := cn.Stats()
		failures, probes := st.ConnectFailures-before.ConnectFailures, st.Probes-before.Probes
		// The target is 600ms (breakerMinSpan, 500ms, and one attempt);
		// asserted with room for a loaded machine, logged as measured.
		if slowest > 900*time.Millisecond {
			t.Errorf("slowest call %v, want < 600ms (asserted: 900ms)", slowest)
		}
		// The calls dial only until the breaker opens; then only the
		// prober does, at most once per ~probeDemandMax while calls wait
		// for it (80 to 100 ms apart, or closer early in the outage).
		if elapsed := time.Since(began); failures > 20 || probes > int64(elapsed/(probeDemandMax/5))+5 {
			t.Errorf("%d connect failures (want <= 20) and %d probes in %v (want about one per %v at most)", failures, probes, elapsed, probeDemandMax)
		}
		if open < calls-2 {
			t.Errorf("%d of %d calls got ErrCircuitOpen", open, calls)
		}
		t.Logf("MEASURE breaker/stopped %s slowest=%s circuit_open=%d/%d connect_failures=%d probes=%d in %s",
			DriverName, outageMS(slowest), open, calls, failures, probes, outageMS(time.Since(began)))
		_ = cn.Close() // stop the prober; the DB is closed at the end
	})
	t.Run("pgx", func(t *testing.T) {
		var slowest time.Duration
		for range calls {
			took, err := issue13Call(raw)
			if err == nil {
				t.Fatal("raw pgx: a call succeeded against a stopped server")
			}
			slowest = max(slowest, took)
		}
		t.Logf("MEASURE breaker/stopped pgx slowest=%s dials=%d", outageMS(slowest), calls)
	})
}

// TestBreakerOutageBlackhole: the network freezes under a warm pool. The
// first call's statement times out (query_timeout), the next reuse check
// times out and opens the breaker at once, and every later call is refused
// at once: no call waits longer than query_timeout, even as database/sql
// moves on to another pooled connection (ResetSession skips the ping while
// open). Raw pgx waits out every caller's deadline.
func TestBreakerOutageBlackhole(t *testing.T) {
	const (
		calls        = 30
		queryTimeout = time.Second
		margin       = 500 * time.Millisecond // scheduling on a loaded 2-core machine; the real max is logged
	)
	c := needCluster(t)
	p := newProxy(t, c)
	db, cn := outageDB(t, c.DSNAt(p.Addr())+issue13Params)
	warmPool(t, db, 4)
	raw := openDB(t, "pgx", c.DSNAt(p.Addr()))
	warmPool(t, raw, 4)
	p.Freeze()
	defer p.Thaw()

	t.Run(DriverName, func(t *testing.T) {
		var slowest, total time.Duration
		open := 0
		for i := range calls {
			took, err := issue13Call(db)
			if err == nil {
				t.Fatalf("call %d succeeded through a frozen network", i+1)
			}
			if took > queryTimeout+margin {
				t.Errorf("call %d took %v, want <= query_timeout %v (+ %v): %v", i+1, took, queryTimeout, margin, err)
			}
			slowest = max(slowest, took)
			total += took
			if errors.Is(err, ErrCircuitOpen) {
				open++
			}
		}
		if open < calls-3 {
			t.Errorf("%d of %d calls got ErrCircuitOpen", open, calls)
		}
		st := cn.Stats()
		t.Logf("MEASURE breaker/blackhole %s slowest=%s total=%s circuit_open=%d/%d probes=%d",
			DriverName, outageMS(slowest), outageMS(total), open, calls, st.Probes)
		_ = cn.Close()
	})
	t.Run("pgx", func(t *testing.T) {
		// Three calls suffice: each waits out its whole deadline.
		var slowest time.Duration
		for range 3 {
			took, _ := issue13Call(raw)
			slowest = max(slowest, took)
		}
		t.Logf("MEASURE breaker/blackhole pgx slowest=%s (3 calls; 100 would take ~%s)", outageMS(slowest), outageMS(100*slowest))
	})
}

// TestBreakerOffBlackholeBudget: with breaker=off, a call whose reuse check
// times out costs one query_timeout, not one per pooled connection
// database/sql tries: the retries of the same call get what remains of it.
func TestBreakerOffBlackholeBudget(t *testing.T) {
	const queryTimeout = 500 * time.Millisecond
	c := needCluster(t)
	p := newProxy(t, c)
	db, cn := outageDB(t, c.DSNAt(p.Addr())+"&breaker=off&query_timeout="+queryTimeout.String())
	warmPool(t, db, 3)
	time.Sleep(idlePingAfter + 100*time.Millisecond) // every pooled connection is verified on reuse
	p.Freeze()
	defer p.Thaw()
	took, err := issue13Call(db)
	if err == nil {
		t.Fatal("a call succeeded through a frozen network")
	}
	if took > queryTimeout+500*time.Millisecond {
		t.Errorf("the call took %v, want about one query_timeout (%v): %v", took, queryTimeout, err)
	}
	st := cn.Stats()
	t.Logf("MEASURE breaker/off-blackhole %s call=%s query_timeout=%s verifications=%d discarded_verify=%d err=%v",
		DriverName, outageMS(took), queryTimeout, st.Verifications, st.DiscardedVerify, err)
}

// TestBreakerOutageRecovery: the address refuses connections until the
// breaker opens, then accepts again. The background probe closes the breaker
// within a few tens of ms (no user call is the probe, and no cooldown is
// waited out); calls made every 20ms meanwhile are refused at most a few
// times after the moment the address accepts again.
func TestBreakerOutageRecovery(t *testing.T) {
	const pace = 20 * time.Millisecond
	c := needCluster(t)
	p := newProxy(t, c)
	db, cn := outageDB(t, c.DSNAt(p.Addr())+issue13Params)
	raw := openDB(t, "pgx", c.DSNAt(p.Addr()))
	// A working connection first (attempts count from then on), then an
	// empty pool: every call must connect.
	if _, err := issue13Call(db); err != nil {
		t.Fatal(err)
	}
	db.SetMaxIdleConns(0)
	raw.SetMaxIdleConns(0)
	if err := p.Refuse(true); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Refuse(false) }()
	deadline := time.Now().Add(10 * time.Second)
	for cn.Stats().Breaker == BreakerClosed {
		if time.Now().After(deadline) {
			t.Fatal("the breaker did not open within 10s of refused connections")
		}
		_, _ = issue13Call(db)
	}
	time.Sleep(300 * time.Millisecond) // an outage of some length
	if err := p.Refuse(false); err != nil {
		t.Fatal(err)
	}
	up := time.Now()

	var wg sync.WaitGroup
	var rawAfter atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for time.Since(up) < 10*time.Second {
			if _, err := issue13Call(raw); err == nil {
				rawAfter.Store(int64(time.Since(up)))
				return
			}
			time.Sleep(pace)
		}
	}()
	refused := 0
	var firstOK time.Duration
	for {
		_, err := issue13Call(db)
		if err == nil {
			firstOK = time.Since(up)
			break
		}
		if !errors.Is(err, ErrCircuitOpen) {
			t.Fatalf("after the address accepts again: %v", err)
		}
		refused++
		if time.Since(up) > 10*time.Second {
			t.Fatal("no success within 10s of the address accepting again")
		}
		time.Sleep(pace)
	}
	wg.Wait()
	st := cn.Stats()
	closedAfter := firstOK // the probe closed it at the latest then
	if firstOK > time.Second {
		t.Errorf("first success %v after the address accepted again, want within ~100ms (asserted: 1s)", firstOK)
	}
	if refused > 10 {
		t.Errorf("%d calls refused after the address accepted again (one every %v), want a few", refused, pace)
	}
	t.Logf("MEASURE breaker/recovery %s first_success_after_up=%s refused_after_up=%d (a call every %s) probes=%d probe_failures=%d open_for=%s",
		DriverName, outageMS(closedAfter), refused, pace, st.Probes, st.ProbeFailures, outageMS(st.BreakerOpenDuration))
	t.Logf("MEASURE breaker/recovery pgx first_success_after_up=%s", outageMS(time.Duration(rawAfter.Load())))
}

// TestBreakerRestartUnderLoad: `pg_ctl restart -m fast` while 8 workers
// query: the connection attempts it refuses span less than breakerMinSpan,
// so the breaker opens nothing (0 ErrCircuitOpen), and the workers ride it
// out on connection retries. It logs how long the server refused
// connections: the measurement breakerMinSpan stands on.
func TestBreakerRestartUnderLoad(t *testing.T) {
	const workers = 8
	c := needCluster(t)
	db, cn := outageDB(t, c.DSN()+issue13Params)
	warmPool(t, db, workers)

	var (
		stop                atomic.Bool
		circuitOpen, failed atomic.Int64
		ok                  atomic.Int64
		mu                  sync.Mutex
		firstFail, lastFail time.Time
		wg                  sync.WaitGroup
		firstErr            error
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				_, err := issue13Call(db)
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, ErrCircuitOpen):
					circuitOpen.Add(1)
				default:
					failed.Add(1)
				}
				if err != nil {
					now := time.Now()
					mu.Lock()
					if firstFail.IsZero() {
						firstFail, firstErr = now, err
					}
					lastFail = now
					mu.Unlock()
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	// A raw dialler, every 5ms: how long the server refuses connections.
	var refuseFirst, refuseLast time.Time
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			pc, err := pgx.Connect(ctx, c.DSN())
			cancel()
			if err != nil {
				now := time.Now()
				mu.Lock()
				if refuseFirst.IsZero() {
					refuseFirst = now
				}
				refuseLast = now
				mu.Unlock()
			} else {
				_ = pc.Close(context.Background())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(200 * time.Millisecond)
	before := cn.Stats()
	began := time.Now()
	if err := c.Restart(context.Background(), pgtest.ModeFast); err != nil {
		stop.Store(true)
		wg.Wait()
		t.Fatal(err)
	}
	restarted := time.Since(began)
	time.Sleep(300 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	st := cn.Stats()
	refusedFor := st.ConnectFailures - before.ConnectFailures
	if n := circuitOpen.Load(); n != 0 {
		t.Errorf("%d calls got ErrCircuitOpen during a fast restart (%v), want 0: first error %v", n, restarted, firstErr)
	}
	if st.BreakerTransitions != before.BreakerTransitions {
		t.Errorf("the breaker moved %d times during a fast restart", st.BreakerTransitions-before.BreakerTransitions)
	}
	var failSpan, refusedSpan time.Duration
	if !firstFail.IsZero() {
		failSpan = lastFail.Sub(firstFail)
	}
	if !refuseFirst.IsZero() {
		refusedSpan = refuseLast.Sub(refuseFirst)
	}
	if refusedSpan >= breakerMinSpan {
		t.Logf("the server refused connections for %v, longer than breakerMinSpan %v: a restart this slow may open the breaker", refusedSpan, breakerMinSpan)
	}
	t.Logf("MEASURE breaker/restart %s pg_ctl_restart=%s failed_calls=%d circuit_open=%d ok=%d connect_failures=%d call_failures_spanned=%s server_refused_for=%s min_span=%s first_error=%v",
		DriverName, outageMS(restarted), failed.Load(), circuitOpen.Load(), ok.Load(), refusedFor, outageMS(failSpan), outageMS(refusedSpan), breakerMinSpan, firstErr)
}

// TestBreakerOutageServerBack: the server itself stops under a warm pool and
// starts again. The background probe closes the breaker soon after the
// server accepts connections (Resume returns once its own readiness check
// connected, so "up" is a little late, never early); calls every 20ms are
// refused at most a few times after that.
func TestBreakerOutageServerBack(t *testing.T) {
	const pace = 20 * time.Millisecond
	c := needCluster(t)
	db, cn := outageDB(t, c.DSN()+issue13Params)
	warmPool(t, db, 4)
	raw := openDB(t, "pgx", c.DSN())
	warmPool(t, raw, 4)
	outageStop(t, c)
	deadline := time.Now().Add(10 * time.Second)
	for cn.Stats().Breaker == BreakerClosed {
		if time.Now().After(deadline) {
			t.Fatal("the breaker did not open within 10s of the server stopping")
		}
		_, _ = issue13Call(db)
	}
	time.Sleep(300 * time.Millisecond)
	outageResume(t, c)
	up := time.Now()

	first := func(db *sql.DB) (time.Duration, int, error) {
		refused := 0
		for time.Since(up) < 10*time.Second {
			_, err := issue13Call(db)
			if err == nil {
				return time.Since(up), refused, nil
			}
			if errors.Is(err, ErrCircuitOpen) {
				refused++
			}
			time.Sleep(pace)
		}
		return 0, refused, errors.New("no success within 10s")
	}
	var wg sync.WaitGroup
	var rawOK time.Duration
	var rawErr error
	wg.Add(1)
	go func() { defer wg.Done(); rawOK, _, rawErr = first(raw) }()
	ok, refused, err := first(db)
	wg.Wait()
	if err != nil || rawErr != nil {
		t.Fatalf("pgresilient: %v; raw pgx: %v", err, rawErr)
	}
	if ok > time.Second {
		t.Errorf("first success %v after the server was up, want within ~100ms (asserted: 1s)", ok)
	}
	if refused > 10 {
		t.Errorf("%d calls refused after the server was up (one every %v), want a few", refused, pace)
	}
	st := cn.Stats()
	t.Logf("MEASURE breaker/server-back %s first_success_after_up=%s refused_after_up=%d (a call every %s) probes=%d open_for=%s",
		DriverName, outageMS(ok), refused, pace, st.Probes, outageMS(st.BreakerOpenDuration))
	t.Logf("MEASURE breaker/server-back pgx first_success_after_up=%s", outageMS(rawOK))
}
