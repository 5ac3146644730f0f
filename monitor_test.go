package pgresilient

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgresilient/pgresilient/pgtest"
)

// silentCall is one call of a silent-server test: how long it took and what
// it returned.
type silentCall struct {
	took time.Duration
	err  error
}

// sleepers runs n concurrent `select pg_sleep(0.5)` on db, each under its own
// deadline; fault is applied once they are all on the wire.
func sleepers(db *sql.DB, n int, deadline time.Duration, fault func()) []silentCall {
	calls := make([]silentCall, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			began := time.Now()
			_, err := db.ExecContext(ctx, "select pg_sleep(0.5)")
			calls[i] = silentCall{time.Since(began), err}
		})
	}
	time.Sleep(100 * time.Millisecond) // the statements are sent, the server sleeps
	fault()
	wg.Wait()
	return calls
}

// warm opens n connections on db and returns them to the pool.
func warm(t *testing.T, db *sql.DB, n int) {
	t.Helper()
	db.SetMaxIdleConns(n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { _, errs[i] = db.Exec("select pg_sleep(0.05)") })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestMonitorSilentServer: the network to the server goes silent (a kernel
// blackhole, or the fault proxy's freeze) while 4 statements of
// pg_sleep(0.5) wait for their replies, under a 10 s deadline and no
// query_timeout (the bare DSN). The host monitor finds the server silent and
// every call returns ErrConnLost within 3 s, naming the silent server; raw
// pgx waits out the 10 s deadline.
func TestMonitorSilentServer(t *testing.T) {
	t.Parallel() // slow, on servers of its own or idle ones: beside the failover tests
	const (
		calls    = 4
		deadline = 10 * time.Second
	)
	type bed struct {
		name            string
		ours, theirs    string // DSNs
		silence, resume func()
	}
	beds := []func(t *testing.T) bed{
		func(t *testing.T) bed {
			c := needCluster(t)
			p1, p2 := newProxy(t, c), newProxy(t, c)
			return bed{"proxy freeze", c.DSNAt(p1.Addr()), c.DSNAt(p2.Addr()),
				func() { p1.Freeze(); p2.Freeze() }, func() { p1.Thaw(); p2.Thaw() }}
		},
		func(t *testing.T) bed {
			if os.Geteuid() != 0 {
				t.Skip("a kernel blackhole needs a private network namespace: run as root (CI does)")
			}
			b := pgtest.NewBlackholeableT(t)
			return bed{"kernel blackhole", b.DSN(), b.DSN(),
				func() {
					if err := b.Blackhole(); err != nil {
						t.Error(err)
					}
				},
				func() {
					if err := b.Restore(); err != nil {
						t.Error(err)
					}
					waitCancelRequests(t)
				}}
		},
	}
	for _, mk := range beds {
		func() {
			b := mk(t)
			if t.Skipped() {
				return
			}
			t.Run(b.name, func(t *testing.T) {
				db, cn := outageDB(t, b.ours)
				raw := openDB(t, "pgx", b.theirs)
				warm(t, db, calls)
				warm(t, raw, calls)
				var ourCalls, rawCalls []silentCall
				var before Stats
				for attempt := 1; ; attempt++ {
					before = cn.Stats()
					var wg sync.WaitGroup
					wg.Go(func() { rawCalls = sleepers(raw, calls, deadline, func() {}) })
					ourCalls = sleepers(db, calls, deadline, b.silence)
					wg.Wait()
					// The fault must be in place before the statements end
					// (0.5 s): on a loaded machine, setting up the ip rules
					// can take longer. A statement that succeeded says so:
					// that attempt measured nothing.
					late := false
					for _, c := range append(append([]silentCall(nil), ourCalls...), rawCalls...) {
						late = late || c.err == nil
					}
					if !late {
						break
					}
					b.resume()
					if attempt == 3 {
						t.Fatal("three times the fault came after the statements had ended: the machine is too busy to measure this")
					}
					t.Logf("attempt %d: the fault came after the statements had ended; again", attempt)
					waitBreaker(t, cn, BreakerClosed)
					warm(t, db, calls)
					warm(t, raw, calls)
				}
				defer b.resume()

				for i, c := range ourCalls {
					var hs *HostSilentError
					if !errors.Is(c.err, ErrConnLost) || !errors.As(c.err, &hs) {
						t.Errorf("%s call %d: %v, want ErrConnLost wrapping a *HostSilentError", DriverName, i+1, c.err)
					}
					if c.took > 3*time.Second {
						t.Errorf("%s call %d took %v, want under 3 s", DriverName, i+1, c.took)
					}
				}
				for i, c := range rawCalls {
					if c.err == nil || c.took < deadline-time.Second {
						t.Errorf("raw pgx call %d: %v after %v: the silence should have held it for its deadline", i+1, c.err, c.took)
					}
				}
				if st := cn.Stats(); st.SilentServers-before.SilentServers != 1 || st.HostChecks-before.HostChecks != 1 {
					t.Errorf("Stats: %d servers declared silent after %d checks, want 1 and 1",
						st.SilentServers-before.SilentServers, st.HostChecks-before.HostChecks)
				}
				t.Logf("MEASURE monitor/%s %s slowest=%v err=%v", b.name, DriverName, slowest(ourCalls), ourCalls[0].err)
				t.Logf("MEASURE monitor/%s pgx slowest=%v err=%v", b.name, slowest(rawCalls), rawCalls[0].err)
			})
		}()
	}
}

func slowest(calls []silentCall) time.Duration {
	var m time.Duration
	for _, c := range calls {
		m = max(m, c.took)
	}
	return m
}

// TestMonitorBlackholeCalls: a kernel blackhole under a stream of 100 calls
// with 2 s deadlines: every call returns by its deadline (a little after, at
// most), and once the monitor declared the server silent and opened the
// breaker, the rest fail at once: the median call takes under 10 ms. Raw pgx
// spends each call's whole deadline (5 calls measured).
func TestMonitorBlackholeCalls(t *testing.T) {
	t.Parallel() // slow, on servers of its own or idle ones: beside the failover tests
	if os.Geteuid() != 0 {
		t.Skip("a kernel blackhole needs a private network namespace: run as root (CI does)")
	}
	const deadline = 2 * time.Second
	b := pgtest.NewBlackholeableT(t)
	db, _ := outageDB(t, b.DSN())
	raw := openDB(t, "pgx", b.DSN())
	warm(t, db, 4)
	warm(t, raw, 4)
	if err := b.Blackhole(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := b.Restore(); err != nil {
			t.Error(err)
		}
		waitCancelRequests(t)
	}()
	run := func(db *sql.DB, n int) []time.Duration {
		took := make([]time.Duration, n)
		for i := range n {
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			began := time.Now()
			_, err := db.ExecContext(ctx, "select 1")
			took[i] = time.Since(began)
			cancel()
			if err == nil {
				t.Errorf("call %d succeeded through a blackhole", i+1)
			}
		}
		return took
	}
	var rawTook []time.Duration
	var wg sync.WaitGroup
	wg.Go(func() { rawTook = run(raw, 5) })
	ours := run(db, 100)
	wg.Wait()
	sorted := append([]time.Duration(nil), ours...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	if max := sorted[len(sorted)-1]; max > deadline+100*time.Millisecond {
		t.Errorf("slowest call took %v, want at most %v", max, deadline+100*time.Millisecond)
	}
	if med := sorted[len(sorted)/2]; med > 10*time.Millisecond {
		t.Errorf("median call took %v, want under 10 ms", med)
	}
	for i, d := range rawTook {
		if d < deadline-100*time.Millisecond {
			t.Errorf("raw pgx call %d returned after %v, before its deadline", i+1, d)
		}
	}
	t.Logf("MEASURE monitor/blackhole-100-calls %s median=%v slowest=%v first=%v; pgx 5 calls each %v", DriverName,
		sorted[len(sorted)/2], sorted[len(sorted)-1], ours[:2], rawTook)
}

// TestMonitorHealthySlow: four statements of pg_sleep(20) on a healthy server,
// with 30 s deadlines, while 8 workers run short queries: all four succeed.
// The monitor checked the server (once: one check per address, however many
// statements wait on it) and left them alone. Raw pgx runs the same load.
func TestMonitorHealthySlow(t *testing.T) {
	t.Parallel() // slow, on servers of its own or idle ones: beside the failover tests
	const (
		sleep    = "select pg_sleep(20)"
		deadline = 30 * time.Second
	)
	c := needCluster(t)
	db, cn := outageDB(t, c.DSN())
	raw := openDB(t, "pgx", c.DSN())
	type result struct {
		long  []error
		short int
	}
	load := func(db *sql.DB) result {
		var r result
		r.long = make([]error, 4)
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				defer cancel()
				_, r.long[i] = db.ExecContext(ctx, sleep)
			})
		}
		stop := make(chan struct{})
		var mu sync.Mutex
		var workers sync.WaitGroup
		for range 8 {
			workers.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := db.Exec("select 1"); err == nil {
						mu.Lock()
						r.short++
						mu.Unlock()
					}
					time.Sleep(5 * time.Millisecond)
				}
			})
		}
		wg.Wait()
		close(stop)
		workers.Wait()
		return r
	}
	var theirs result
	var wg sync.WaitGroup
	wg.Go(func() { theirs = load(raw) })
	ours := load(db)
	wg.Wait()
	for i, err := range ours.long {
		if err != nil {
			t.Errorf("%s: pg_sleep(20) %d: %v", DriverName, i+1, err)
		}
	}
	for i, err := range theirs.long {
		if err != nil {
			t.Errorf("pgx: pg_sleep(20) %d: %v", i+1, err)
		}
	}
	if n := cn.mon.checks.Load(); n != 1 {
		t.Errorf("%d checks of the server, want 1: one per address while statements wait on it", n)
	}
	if n := cn.mon.silence.Load(); n != 0 {
		t.Errorf("a healthy server declared silent %d times", n)
	}
	if ours.short == 0 {
		t.Error("no short query succeeded beside the long ones")
	}
	t.Logf("MEASURE monitor/healthy-slow %s long_ok=4 short=%d checks=%d; pgx short=%d",
		DriverName, ours.short, cn.mon.checks.Load(), theirs.short)
}

// TestMonitorSilentErrors: only the absence of an answer is silence. A
// server that refuses the check (full: 53300; starting up: 57P03), a refused
// or reset connection, are answers.
func TestMonitorSilentErrors(t *testing.T) {
	refused := dialRefused
	for _, tt := range []struct {
		name    string
		err     error
		expired bool
		want    bool
	}{
		{"deadline expired", context.DeadlineExceeded, true, true},
		{"i/o timeout", &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}, false, true},
		{"server full", &pgconn.PgError{Severity: "FATAL", Code: "53300"}, false, false},
		{"starting up", &pgconn.PgError{Severity: "FATAL", Code: "57P03"}, false, false},
		{"refused", refused, false, false},
		{"reset", fmt.Errorf("read: %w", syscall.ECONNRESET), false, false},
	} {
		if got := silent(tt.err, tt.expired); got != tt.want {
			t.Errorf("%s: silent = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// waitCancelRequests waits for pgx's cancel requests of the connections a
// blackhole ended (raw pgx's and pgresilient's: pgconn sends one as it closes
// a connection whose context ended), whose dials wait for a SYN retransmission
// once the blackhole is gone: up to pgconn's own 15 s bound.
func waitCancelRequests(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		buf := make([]byte, 1<<20)
		if !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "pgconn.(*PgConn).asyncClose") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Log("pgx's cancel requests still dialling after 20 s")
}

// TestMonitorParams: monitor_grace and monitor_timeout reach the monitor;
// monitor_grace=off removes it; a bad value is a ConfigError naming the
// parameter, before any connection.
func TestMonitorParams(t *testing.T) {
	const dsn = "postgres://u@127.0.0.1:1/db?sslmode=disable&"
	cn, err := NewConnector(dsn + "monitor_grace=2s&monitor_timeout=3s")
	if err != nil {
		t.Fatal(err)
	}
	if cn.mon == nil || cn.mon.grace != uint32(2*time.Second/monitorPeriod) || cn.mon.timeout != 3*time.Second {
		t.Errorf("monitor %+v, want grace 8 periods, timeout 3s", cn.mon)
	}
	if cn, err = NewConnector(dsn + "monitor_grace=off"); err != nil || cn.mon != nil {
		t.Errorf("monitor_grace=off: %v, monitor %v; want none", err, cn.mon)
	}
	if cn, err = NewConnector(dsn); err != nil || cn.mon == nil || cn.mon.timeout != defaultMonitorTimeout {
		t.Errorf("bare DSN: %v; want a monitor with the default timeout", err)
	}
	for _, bad := range []string{"monitor_grace=0", "monitor_timeout=-1s", "monitor_timeout=soon", "monitor_grce=1s"} {
		_, err := NewConnector(dsn + bad)
		var ce *ConfigError
		if !errors.As(err, &ce) || !strings.HasPrefix(bad, ce.Param) && ce.Param != "monitor_grce" {
			t.Errorf("%s: %v, want a ConfigError naming the parameter", bad, err)
		}
	}
}
