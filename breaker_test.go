package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5/pgconn"
)

// The breaker against a fake driver: when it opens, that only the prober
// closes it, and how its errors unwrap.

// TestBreakerOpensAndRecovers: a server error is a success, a lost
// connection and a refused connection attempt are two failures, which open
// a breaker_failures=2 breaker; while open nothing a user calls reaches the
// driver (only the background probe does), and the first probe that
// connects closes it: no user call is the probe.
func TestBreakerOpensAndRecovers(t *testing.T) {
	var (
		transitions []string
		mu          sync.Mutex
	)
	refused := dialRefused
	// A server error is a success (the server is up); the lost connection is
	// failure 1; reconnecting fails: failure 2.
	fd := &fakeDriver{execErrs: []error{&pgconn.PgError{Severity: "ERROR", Code: "23505"}, io.EOF}}
	c, err := NewConnector("fake?breaker_failures=2&breaker_cooldown=50ms&connect_retries=0", WithDriver(fd),
		WithStateChange(func(from, to BreakerState) {
			mu.Lock()
			transitions = append(transitions, from.String()+"->"+to.String())
			mu.Unlock()
		}))
	if err != nil {
		t.Fatal(err)
	}
	noMinSpan(c)
	db := sql.OpenDB(c)
	defer db.Close()

	if _, err := db.Exec("a"); err == nil {
		t.Fatal("want the unique violation")
	}
	fd.setDown(refused)
	if _, err := db.Exec("a"); !errors.Is(err, ErrConnLost) {
		t.Fatalf("want ErrConnLost, got %v", err)
	}
	if got := c.Stats().Breaker; got != BreakerClosed {
		t.Fatalf("state = %v after 1 failure, want closed", got)
	}
	_, err = db.Exec("a")
	if !errors.Is(err, ErrCircuitOpen) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("want ErrCircuitOpen wrapping the refused connect, got %v", err)
	}
	if s := c.Stats().Breaker; s != BreakerOpen && s != BreakerHalfOpen {
		t.Fatalf("state = %v, want open after 2 consecutive failures", s)
	}
	connects, execs, probes := fd.connects.Load(), fd.execs.Load(), c.Stats().Probes
	// While open, nothing a user calls reaches the driver.
	for range 100 {
		_, err := db.Exec("a")
		if !errors.Is(err, ErrCircuitOpen) || errors.Is(err, driver.ErrBadConn) {
			t.Fatalf("want ErrCircuitOpen and not ErrBadConn, got %v", err)
		}
		if !strings.Contains(err.Error(), "probe") {
			t.Fatalf("message %q does not mention the probe", err)
		}
	}
	gotConnects := fd.connects.Load() - connects
	gotProbes := c.Stats().Probes - probes
	if gotConnects > gotProbes || fd.execs.Load() != execs {
		t.Fatalf("calls reached the driver while open: %d connects for %d probes, execs %d->%d",
			gotConnects, gotProbes, execs, fd.execs.Load())
	}
	// The server comes back: the prober closes the breaker by itself.
	fd.setDown(nil)
	waitBreaker(t, c, BreakerClosed)
	if _, err := db.Exec("a"); err != nil {
		t.Fatalf("after the probe closed the breaker: %v", err)
	}
	mu.Lock()
	got := strings.Join(transitions, " ")
	mu.Unlock()
	if want := "closed->open open->closed"; got != want {
		t.Errorf("transitions %q, want %q", got, want)
	}
	st := c.Stats()
	if st.BreakerRejected != 101 || st.BreakerTransitions != 2 || st.Probes < 1 || st.BreakerOpenDuration <= 0 {
		t.Errorf("stats: rejected %d transitions %d probes %d open for %v, want 101 (100 + the retry loop stopped), 2, >= 1, > 0",
			st.BreakerRejected, st.BreakerTransitions, st.Probes, st.BreakerOpenDuration)
	}
}

// TestBreakerProbeConnectionServes: the connection of the probe that closed
// the breaker serves the first call that needs one, which then does not dial
// again (a pool serves again one connection startup sooner after an
// outage), and a probe's connection that no call takes is closed after
// spareFor.
func TestBreakerProbeConnectionServes(t *testing.T) {
	refused := dialRefused
	fd := &fakeDriver{execErrs: []error{io.EOF}}
	c, err := NewConnector("fake?breaker_failures=2&breaker_cooldown=50ms&connect_retries=0", WithDriver(fd))
	if err != nil {
		t.Fatal(err)
	}
	noMinSpan(c)
	db := sql.OpenDB(c)
	defer db.Close()
	if _, err := db.Exec("a"); !errors.Is(err, ErrConnLost) { // failure 1
		t.Fatalf("want ErrConnLost, got %v", err)
	}
	fd.setDown(refused)
	if _, err := db.Exec("a"); !errors.Is(err, ErrCircuitOpen) { // failure 2
		t.Fatalf("want ErrCircuitOpen, got %v", err)
	}
	fd.setDown(nil)
	waitBreaker(t, c, BreakerClosed)
	connects, opened := fd.connects.Load(), c.Stats().Opened
	if _, err := db.Exec("a"); err != nil {
		t.Fatalf("after the probe closed the breaker: %v", err)
	}
	if n := fd.connects.Load() - connects; n != 0 {
		t.Errorf("the first call after the breaker closed dialled %d times, want 0: the probe's connection serves it", n)
	}
	if n := c.Stats().Opened - opened; n != 1 {
		t.Errorf("Stats.Opened grew by %d, want 1 (the probe's connection, handed over)", n)
	}
	if got := fd.opened.Load() - fd.closed.Load(); got != 1 {
		t.Errorf("%d connections open, want 1 (the pooled one)", got)
	}

	// A probe's connection no call takes is closed.
	if err := c.probe(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c.spare.Load() == nil {
		t.Fatal("no spare kept after a successful probe")
	}
	closed := fd.closed.Load()
	time.Sleep(spareFor + 200*time.Millisecond)
	if c.spare.Load() != nil || fd.closed.Load() != closed+1 {
		t.Errorf("after %v: spare %v, %d connections closed, want none kept and 1 closed", spareFor+200*time.Millisecond, c.spare.Load() != nil, fd.closed.Load()-closed)
	}
}

// TestBreakerProbeFailureReopens: a probe that fails leaves the breaker
// open (it was a user call in half-open before; now the background prober's),
// and the next probes keep looking until one connects.
func TestBreakerProbeFailureReopens(t *testing.T) {
	refused := dialRefused
	fd := &fakeDriver{execErrs: []error{nil, io.EOF}}
	c, err := NewConnector("fake?breaker_failures=1&breaker_cooldown=30ms&connect_retries=0", WithDriver(fd))
	if err != nil {
		t.Fatal(err)
	}
	noMinSpan(c)
	db := sql.OpenDB(c)
	defer db.Close()
	if _, err := db.Exec("a"); err != nil {
		t.Fatal(err)
	}
	fd.setDown(refused)
	if _, err := db.Exec("a"); !errors.Is(err, ErrConnLost) {
		t.Fatalf("want ErrConnLost, got %v", err)
	}
	if s := c.Stats().Breaker; s != BreakerOpen && s != BreakerHalfOpen {
		t.Fatalf("state %v, want open", s)
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.Stats().ProbeFailures < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d probe failures after 10s", c.Stats().ProbeFailures)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s := c.Stats().Breaker; s != BreakerOpen && s != BreakerHalfOpen {
		t.Fatalf("state after failed probes = %v, want open", s)
	}
	if _, err := db.Exec("a"); !errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("while the probes fail: %v, want ErrCircuitOpen", err)
	}
	fd.setDown(nil)
	waitBreaker(t, c, BreakerClosed)
	st := c.Stats()
	if st.BreakerTransitions != 2 || st.Probes < st.ProbeFailures+1 {
		t.Errorf("transitions %d, probes %d, probe failures %d; want 2, and one more probe than failures",
			st.BreakerTransitions, st.Probes, st.ProbeFailures)
	}
	t.Logf("probes %d (%d failed), open for %v", st.Probes, st.ProbeFailures, st.BreakerOpenDuration)
}

func TestBreakerIgnoresCallerCancellation(t *testing.T) {
	db, mock, c := openMock(t, "breaker_failures=1&breaker_cooldown=1h")
	ctx, cancel := context.WithCancel(context.Background())
	mock.ExpectExec("a").WillDelayFor(time.Second).WillReturnResult(sqlmock.NewResult(0, 1))
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	_, err := db.ExecContext(ctx, "a")
	if err == nil {
		t.Fatal("want an error")
	}
	if got := c.Stats().Breaker; got != BreakerClosed {
		t.Fatalf("a caller's cancellation opened the breaker: %v (err %v)", got, err)
	}
}

// TestBreakerLateOutcomeIgnored: the outcome of a call that started before
// the breaker opened, arriving while it is open, changes nothing: a late
// success cannot close it (only a probe does), a late failure is not counted.
func TestBreakerLateOutcomeIgnored(t *testing.T) {
	refused := dialRefused
	b := newBreaker("", 1, time.Hour, slog.New(slog.DiscardHandler), nil)
	b.minSpan = 0
	var probes atomic.Int64
	b.probeFn = func(context.Context) error { probes.Add(1); return refused }
	defer b.close()
	b.fail(tripSpan, refused)
	if s := b.State(); s == BreakerClosed {
		t.Fatal("one failure with breaker_failures=1 left the breaker closed")
	}
	for range 10 {
		b.after(classNone, tripSpan, nil) // late successes
		b.done(context.Background(), nil)
		b.after(classGone, tripNow, errFailure) // late failures
	}
	if s := b.State(); s == BreakerClosed {
		t.Fatalf("late outcomes closed the breaker (%v)", s)
	}
	if n := b.transitions.Load(); n != 1 {
		t.Errorf("%d transitions, want 1 (closed -> open)", n)
	}
	if err := b.before(); !errors.Is(err, ErrCircuitOpen) {
		t.Errorf("before while open: %v", err)
	}
}

// TestCircuitOpenErrorUnwrap: a rejection matches ErrCircuitOpen without
// allocating to say so; a retry loop stopped by the breaker also wraps its
// last connect error.
func TestCircuitOpenErrorUnwrap(t *testing.T) {
	plain := error(&CircuitOpenError{})
	if allocs := testing.AllocsPerRun(100, func() {
		if !errors.Is(plain, ErrCircuitOpen) {
			t.Fatal("no ErrCircuitOpen")
		}
	}); allocs != 0 {
		t.Errorf("errors.Is on a CircuitOpenError allocates %v times", allocs)
	}
	ce := &ConnectError{Attempts: 3, Err: syscall.ECONNREFUSED}
	wrapped := error(&CircuitOpenError{cause: ce})
	var got *ConnectError
	if !errors.Is(wrapped, ErrCircuitOpen) || !errors.As(wrapped, &got) || got != ce || !errors.Is(wrapped, syscall.ECONNREFUSED) {
		t.Errorf("%v: want ErrCircuitOpen and the *ConnectError", wrapped)
	}
	if errors.Is(wrapped, driver.ErrBadConn) || IsDisconnect(wrapped) {
		t.Error("a CircuitOpenError matches driver.ErrBadConn, or IsDisconnect")
	}
	if !strings.Contains(wrapped.Error(), "connect failed after 3 attempt(s)") {
		t.Errorf("message %q does not carry the cause", wrapped)
	}
}

// TestAwaitProbeIgnoresEarlierPeriod: a call waiting for the probe of the
// breaker's current open period is not failed by the outcome of an earlier
// period published late (the breaker closed and opened again in between:
// behind HAProxy at the routed moment, within 2 ms). Before, it failed with
// ErrCircuitOpen at once (TestHAProxySwitchover, 1 run in 9).
func TestAwaitProbeIgnoresEarlierPeriod(t *testing.T) {
	b := newBreaker("127.0.0.1:5432", 5, time.Second, slog.New(slog.DiscardHandler), nil)
	defer b.close()
	b.openedAt.Store(2)
	b.state.Store(int32(BreakerOpen))
	done := make(chan error, 1)
	go func() { done <- b.awaitProbe(context.Background()) }()
	for b.waiters.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	b.publish(1) // the earlier period's outcome
	select {
	case err := <-done:
		t.Fatalf("the call returned %v on an earlier period's outcome", err)
	case <-time.After(50 * time.Millisecond):
	}
	b.state.Store(int32(BreakerClosed))
	b.publish(2) // this period's: closed
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("closed, the call returned %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("the call still waits after its period's outcome")
	}
}
