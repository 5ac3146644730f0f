package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// The waiting rules of wait.go against scripted drivers: what says "not
// yet", that a call waits it out within its deadline and not within
// connect_retries, that it never counts for the breaker, that a pooled
// connection coming free ends the wait, the cap on attempts under way, and
// that Close releases every wait.

var (
	// dialRefused is a dial to a stopped server's port.
	dialRefused = &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	tooMany     = &pgconn.PgError{Severity: "FATAL", Code: "53300", Message: "sorry, too many clients already"}
	starting    = &pgconn.PgError{Severity: "FATAL", Code: "57P03", Message: "the database system is starting up"}
)

// acceptClose listens on loopback, accepts every connection and closes it
// at once, as HAProxy does with no server UP; it returns the address.
func acceptClose(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}

func TestWaitRules(t *testing.T) {
	ctx := context.Background()
	closedErr := func() error {
		pc, err := pgconn.Connect(ctx, "postgres://u@"+acceptClose(t)+"/d?sslmode=disable&connect_timeout=5")
		if err == nil {
			_ = pc.Close(ctx)
			t.Fatal("connected to a listener that closes every connection")
		}
		return err
	}()
	refused := dialRefused
	bouncer := func(msg string) error { return &pgconn.PgError{Severity: "FATAL", Code: "08P01", Message: msg} }
	for _, tc := range []struct {
		name string
		err  error
		want refusal
	}{
		{"too many clients", tooMany, refusalNotYet},
		{"superuser slots only", &pgconn.PgError{Severity: "FATAL", Code: "53300", Message: "remaining connection slots are reserved for non-replication superuser connections"}, refusalNotYet},
		{"starting up", starting, refusalNotYet},
		{"wrapped by a connect error", &ConnectError{Attempts: 1, Err: starting}, refusalNotYet},
		{"pgbouncer login failing", bouncer(bouncerLoginFailing), refusalNotYet},
		{"pgbouncer full", bouncer(bouncerFull), refusalNotYet},
		{"pgbouncer query_wait_timeout", bouncer(bouncerQueueTimeout), refusalNotYet},
		{"pgbouncer client_login_timeout", bouncer("client_login_timeout (server down)"), refusalNotYet},
		{"target_session_attrs", &wrongRoleError{errors.New("read only connection")}, refusalNotYet},
		{"proxy accepted and closed", closedErr, refusalProxyClosed},
		{"connection refused", refused, refusalNone},
		{"terminated (57P01)", &pgconn.PgError{Severity: "FATAL", Code: "57P01"}, refusalNone},
		{"pgbouncer server conn crashed", bouncer("server conn crashed?"), refusalNone},
		{"an ERROR 08P01 (not PgBouncer's FATAL)", &pgconn.PgError{Severity: "ERROR", Code: "08P01", Message: bouncerLoginFailing}, refusalNone},
		{"plain EOF (not at connect)", io.EOF, refusalNone},
		{"timeout", context.DeadlineExceeded, refusalNone},
		{"password", &pgconn.PgError{Severity: "FATAL", Code: "28P01"}, refusalNone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := refusalOf(tc.err); got != tc.want {
				t.Errorf("refusalOf(%v) = %d, want %d", tc.err, got, tc.want)
			}
			// A "not yet" is never evidence for the breaker.
			class := breakerConnectClass(connectClass(ctx, tc.err), tc.err)
			if tc.want == refusalNotYet && class == classGone {
				t.Errorf("a not-yet counts for the breaker: %v", tc.err)
			}
			if tc.want == refusalProxyClosed && class != classGone {
				t.Errorf("a proxy's close does not count for the breaker: %v", tc.err)
			}
		})
	}
}

func TestWaitLimit(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name     string
		deadline time.Duration // 0: none
		want     time.Duration
	}{
		{"no deadline", 0, notYetCeiling},
		{"2s: 100ms of headroom", 2 * time.Second, 1900 * time.Millisecond},
		{"500ms: a tenth", 500 * time.Millisecond, 450 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithDeadline(ctx, now.Add(tc.deadline))
				defer cancel()
			}
			if got := waitLimit(ctx, now).Sub(now); got != tc.want {
				t.Errorf("waitLimit = now + %v, want + %v", got, tc.want)
			}
		})
	}
}

// scriptConnector is a driver whose Connect calls connect, for the tests
// that need it to block or count.
type scriptConnector struct {
	fakeDriver
	connect func(ctx context.Context) error
}

func (s *scriptConnector) OpenConnector(string) (driver.Connector, error) { return s, nil }

func (s *scriptConnector) Connect(ctx context.Context) (driver.Conn, error) {
	if err := s.connect(ctx); err != nil {
		s.connects.Add(1)
		return nil, err
	}
	return s.fakeDriver.Connect(ctx)
}

// TestConnectWaitsNotYet: a server full (53300) for 300 ms: with
// connect_retries=0 the call waits it out within its deadline, and the
// breaker (breaker_failures=1) counts nothing; a deadline too short to wait
// fails at once with the refusal, classified.
func TestConnectWaitsNotYet(t *testing.T) {
	var until atomic.Int64
	sc := &scriptConnector{}
	sc.connect = func(context.Context) error {
		if time.Now().UnixNano() < until.Load() {
			return tooMany
		}
		return nil
	}
	c, err := NewConnector("fake?breaker_failures=1&connect_retries=0&connect_backoff=10ms&connect_backoff_max=50ms", WithDriver(sc))
	if err != nil {
		t.Fatal(err)
	}
	noMinSpan(c)
	db := sql.OpenDB(c)
	defer db.Close()
	if _, err := db.Exec("a"); err != nil { // a working connection: attempts count from now on
		t.Fatal(err)
	}
	db.SetMaxIdleConns(0)

	until.Store(time.Now().Add(300 * time.Millisecond).UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	began := time.Now()
	if _, err := db.ExecContext(ctx, "a"); err != nil {
		t.Fatalf("a call with 2s to spare did not wait out 300ms of 53300: %v", err)
	}
	took := time.Since(began)
	st := c.Stats()
	if st.Breaker != BreakerClosed || st.BreakerTransitions != 0 {
		t.Errorf("53300 opened the breaker: %v, %d transitions", st.Breaker, st.BreakerTransitions)
	}
	if took < 250*time.Millisecond || st.ConnectRetries < 2 {
		t.Errorf("took %v with %d retries: want it to have waited the refusals out", took, st.ConnectRetries)
	}
	t.Logf("MEASURE wait/not-yet succeeded after %v, %d retries", took, st.ConnectRetries)

	// Too short a deadline: the refusal, classified, within it.
	until.Store(time.Now().Add(time.Hour).UnixNano())
	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel2()
	began = time.Now()
	_, err = db.ExecContext(ctx2, "a")
	var ce *ConnectError
	if !errors.As(err, &ce) || ce.Permanent || !errors.Is(err, tooMany) || errors.Is(err, ErrCircuitOpen) {
		t.Errorf("want a transient ConnectError wrapping the 53300, got %v", err)
	}
	if d := time.Since(began); d > 200*time.Millisecond {
		t.Errorf("a call with a 30ms deadline took %v", d)
	}
	if s := c.Stats().Breaker; s != BreakerClosed {
		t.Errorf("breaker %v after 53300s", s)
	}
}

// TestConnectWaitEndsWhenServed: a call sleeping out a backoff after a
// "not yet" tries again the moment another call's connection attempt
// succeeds: the server serves again, and nothing says the sleeper's backoff
// is still due (writers of TestFailoverSwitchover slept through the new
// primary's first second).
func TestConnectWaitEndsWhenServed(t *testing.T) {
	sc := &scriptConnector{}
	sc.connect = func(context.Context) error { return nil }
	c, err := NewConnector("fake", WithDriver(sc))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	woke := make(chan error, 1)
	go func() { woke <- c.connectWait(ctx, time.Hour, false) }()
	for c.served.waiters.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	dc, err := c.Connect(ctx) // another call's attempt, served
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	select {
	case err := <-woke:
		if err != nil {
			t.Errorf("the wait ended with %v, want nil (try again now)", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a call still sleeps out its backoff 5s after another call connected")
	}
}

// TestConnectNotYetBackoffCap: with the default connect_backoff_max (5 s), a
// call refused with "not yet" for 3 s tries again at least every
// notYetBackoffMax (full jitter): at least 10 attempts, where 5 s backoffs
// make about 7, the last of them up to 5 s after the refusals ended.
func TestConnectNotYetBackoffCap(t *testing.T) {
	var until atomic.Int64
	sc := &scriptConnector{}
	sc.connect = func(context.Context) error {
		if time.Now().UnixNano() < until.Load() {
			return starting
		}
		return nil
	}
	c, err := NewConnector("fake", WithDriver(sc))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	until.Store(time.Now().Add(3 * time.Second).UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dc, err := c.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	late := time.Since(time.Unix(0, until.Load()))
	if n := sc.connects.Load(); n < 10 {
		t.Errorf("%d attempts in 3s of 57P03, want at least 10 (one per %v at most)", n, notYetBackoffMax)
	}
	t.Logf("MEASURE wait/not-yet-cap attempts=%d served %v after the refusals ended", sc.connects.Load(), late.Round(time.Millisecond))
}

// TestConnectPoolFree: while a call waits out 53300 for a new connection,
// the pool's one connection comes free: the call takes it (database/sql's
// retry, nothing sent) instead of waiting out its deadline.
func TestConnectPoolFree(t *testing.T) {
	var full atomic.Bool
	sc := &scriptConnector{}
	sc.connect = func(context.Context) error {
		if full.Load() {
			return tooMany
		}
		return nil
	}
	c, err := NewConnector("fake?connect_backoff=2s&connect_backoff_max=2s", WithDriver(sc))
	if err != nil {
		t.Fatal(err)
	}
	c.notYetMax = 2 * time.Second // the waits this test ends early
	db := sql.OpenDB(c)
	defer db.Close()
	held, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	full.Store(true)
	done := make(chan error, 1)
	began := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := db.ExecContext(ctx, "a")
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	_ = held.Close() // back to the pool
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the call did not take the freed connection: %v", err)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("the call still waits 4s after a pooled connection came free")
	}
	if d := time.Since(began); d > time.Second {
		t.Errorf("served %v after it began, want soon after the connection came free (100ms)", d)
	}
	if n := sc.opened.Load(); n != 1 {
		t.Errorf("%d connections opened, want 1", n)
	}
}

// TestConnectPoolFreeCrossing: the pool's one connection comes back after
// database/sql looked in the pool and before the call's refusal: the call
// takes it on database/sql's next try instead of waiting out a backoff it
// would have no signal to end (it waited out its deadline before).
func TestConnectPoolFreeCrossing(t *testing.T) {
	var full atomic.Bool
	var held *sql.Conn
	sc := &scriptConnector{}
	sc.connect = func(context.Context) error {
		if !full.Load() {
			return nil
		}
		if c := held; c != nil {
			held = nil
			_ = c.Close() // back to the pool while this attempt is under way
		}
		return tooMany
	}
	c, err := NewConnector("fake?connect_backoff=2s&connect_backoff_max=2s", WithDriver(sc))
	if err != nil {
		t.Fatal(err)
	}
	c.notYetMax = 2 * time.Second // the waits this test ends early
	db := sql.OpenDB(c)
	defer db.Close()
	if held, err = db.Conn(context.Background()); err != nil {
		t.Fatal(err)
	}
	full.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	began := time.Now()
	if _, err := db.ExecContext(ctx, "a"); err != nil {
		t.Fatalf("the call did not take the connection that came back: %v", err)
	}
	if d := time.Since(began); d > time.Second {
		t.Errorf("served after %v, want at once (the backoff is 2s)", d)
	}
	if n := sc.opened.Load(); n != 1 {
		t.Errorf("%d connections opened, want 1", n)
	}
}

// TestConnectAttemptCap: 3*maxConnecting calls dial at once against a
// server that takes 50ms to answer: at most maxConnecting attempts are under
// way at any moment, and every call is served.
func TestConnectAttemptCap(t *testing.T) {
	var now, peak atomic.Int32
	sc := &scriptConnector{}
	sc.connect = func(ctx context.Context) error {
		n := now.Add(1)
		defer now.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		select {
		case <-time.After(50 * time.Millisecond):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c, err := NewConnector("fake", WithDriver(sc))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range 3 * maxConnecting {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := db.Conn(ctx) // a connection each: every call dials
			if err != nil {
				failed.Add(1)
				return
			}
			time.Sleep(200 * time.Millisecond)
			_ = conn.Close()
		})
	}
	wg.Wait()
	if p := peak.Load(); p > maxConnecting || p < 2 {
		t.Errorf("peak of %d attempts under way, want at most %d", p, maxConnecting)
	}
	if n := failed.Load(); n != 0 {
		t.Errorf("%d calls failed", n)
	}
	t.Logf("MEASURE wait/attempt-cap peak=%d cap=%d attempt_waits=%d", peak.Load(), maxConnecting, c.Stats().AttemptWaits)
}

// TestCloseReleasesWaiters: calls waiting out a refusal, a slot, or a
// probe return promptly when the Connector is closed.
func TestCloseReleasesWaiters(t *testing.T) {
	sc := &scriptConnector{}
	sc.connect = func(context.Context) error { return starting }
	c, err := NewConnector("fake?connect_backoff=1s&connect_backoff_max=1s", WithDriver(sc))
	if err != nil {
		t.Fatal(err)
	}
	c.notYetMax = time.Second // the waits this test ends early
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := c.Connect(ctx)
			errs <- err
		}()
	}
	time.Sleep(100 * time.Millisecond)
	began := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		select {
		case err := <-errs:
			if err == nil || !errors.Is(err, errConnectorClosed) {
				t.Errorf("want the Connector's close, got %v", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("a waiting call did not return within 2s of Close")
		}
	}
	if d := time.Since(began); d > 500*time.Millisecond {
		t.Errorf("waiters released %v after Close", d)
	}
}

// openBreaker returns a fake server that refuses connections, and a pool
// whose breaker (breaker_failures=1, breaker_cooldown=10s, no connect
// retries, no idle connections) it opened.
func openBreaker(t *testing.T) (*fakeDriver, *Connector, *sql.DB) {
	t.Helper()
	fd := &fakeDriver{}
	c, err := NewConnector("fake?breaker_failures=1&breaker_cooldown=10s&connect_retries=0", WithDriver(fd))
	if err != nil {
		t.Fatal(err)
	}
	noMinSpan(c)
	db := sql.OpenDB(c)
	t.Cleanup(func() { _ = db.Close() })
	db.SetMaxIdleConns(0)
	if _, err := db.Exec("a"); err != nil {
		t.Fatal(err)
	}
	fd.setDown(dialRefused)
	if _, err := db.Exec("a"); err == nil {
		t.Fatal("no error with the server down")
	}
	waitBreaker(t, c, BreakerOpen)
	return fd, c, db
}

// TestBreakerWaitsForProbe: a call that finds the breaker open waits for the
// prober's next probe: when the server serves again, the call made right
// after succeeds (it was ErrCircuitOpen until the probe, before issue 21);
// while it does not, the call fails with ErrCircuitOpen after that probe,
// and a deadline too short for the wait fails at once.
func TestBreakerWaitsForProbe(t *testing.T) {
	fd, c, db := openBreaker(t)
	time.Sleep(3 * time.Second) // a long outage: unattended, the probes back off (20ms + elapsed/30)

	failed := c.Stats().ProbeFailures
	began := time.Now()
	_, err := db.Exec("a")
	took := time.Since(began)
	if !errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("server down: want ErrCircuitOpen, got %v", err)
	}
	// Rejected once a probe's outcome, in while it waited, found the server
	// down: the probe it pulled forward (within probeDemandMax of the last
	// one's start), or one already under way when it came (counted in
	// ProbeFailures, not Probes, which counts starts).
	if c.Stats().ProbeFailures == failed || took > breakerWaitMax+probeDemandMax+200*time.Millisecond {
		t.Errorf("rejected after %v and %d failed probes, want after the next probe (within ~%v)", took, c.Stats().ProbeFailures-failed, probeDemandMax)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	began = time.Now()
	if _, err := db.ExecContext(ctx, "a"); !errors.Is(err, ErrCircuitOpen) {
		t.Errorf("a 1ms deadline: want ErrCircuitOpen at once, got %v", err)
	}
	if d := time.Since(began); d > 50*time.Millisecond {
		t.Errorf("a call whose deadline cannot cover the wait took %v", d)
	}

	fd.setDown(nil)
	up := time.Now()
	if _, err := db.Exec("a"); err != nil {
		t.Fatalf("the server serves again: the call right after got %v", err)
	}
	t.Logf("MEASURE wait/breaker rejected_after=%s served_after_up=%s probes=%d", outageMS(took), outageMS(time.Since(up)), c.Stats().Probes)
	if d := time.Since(up); d > time.Second {
		t.Errorf("served %v after the server came back", d)
	}
}

// acceptHold listens on loopback, accepts every connection and holds it
// without a word until the test ends, as HAProxy does while it has no server
// to route to; it returns the address.
func acceptHold(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		held []net.Conn
	)
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
		for _, c := range held {
			_ = c.Close()
		}
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	})
	return ln.Addr().String()
}

// heldConnectErr returns the error pgx gives for a connection attempt that
// something accepted and held until the attempt's deadline.
func heldConnectErr(t *testing.T) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	pc, err := pgconn.Connect(ctx, "postgres://u@"+acceptHold(t)+"/d?sslmode=disable")
	if err == nil {
		_ = pc.Close(context.Background())
		t.Fatal("a listener that never answers let pgx connect")
	}
	return err
}

// TestBreakerWaitsWhileMoving: while the breaker is open, the probes meet a
// server in transition (57P03, as a standby refused by
// target_session_attrs or a server shutting down would say) for 600 ms; a
// call with a 2 s deadline waits on from probe to probe and is served once
// the server is, where it failed with ErrCircuitOpen after the first probe
// before (behind HAProxy, a Patroni leader killed: 48 writes failed so).
// The same for probes that something accepted and held until they timed out
// (HAProxy before it routes to the new primary), for a call with a deadline
// only: a call without one fails after the probe, as one whose probes a
// frozen network holds must. A refusal fails the call after one probe.
func TestBreakerWaitsWhileMoving(t *testing.T) {
	held := heldConnectErr(t)
	moving := func(b *breaker) bool { return b.moving.Load() }
	holding := func(b *breaker) bool { return b.held.Load() }
	for _, tc := range []struct {
		name     string
		err      error
		flag     func(*breaker) bool // the breaker's note of tc.err
		deadline bool                // whether the call has one (2 s)
		serve    bool                // whether the call is served
	}{
		{"in transition: waits", starting, moving, true, true},
		{"held, with a deadline: waits", held, holding, true, true},
		{"held, no deadline: fails after a probe", held, holding, false, false},
		{"refused: fails after a probe", dialRefused, func(b *breaker) bool { return !moving(b) && !holding(b) }, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fd, c, db := openBreaker(t)
			fd.setDown(tc.err)
			for i := 0; !tc.flag(c.breaker) || c.Stats().ProbeFailures < 2; i++ {
				// A call pulls the probes forward until one meets tc.err.
				if i == 100 {
					t.Fatalf("no probe met %v", tc.err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				_, _ = db.ExecContext(ctx, "a")
				cancel()
			}
			up := time.AfterFunc(600*time.Millisecond, func() { fd.setDown(nil) })
			defer up.Stop()
			ctx := context.Background()
			if tc.deadline {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
			}
			began := time.Now()
			_, err := db.ExecContext(ctx, "a")
			took := time.Since(began)
			t.Logf("MEASURE wait/moving %s err=%v after %v", tc.name, err, took.Round(time.Millisecond))
			switch {
			case tc.serve && err != nil:
				t.Errorf("want the call served once the server is (600 ms), got %v after %v", err, took)
			case !tc.serve && !errors.Is(err, ErrCircuitOpen):
				t.Errorf("want ErrCircuitOpen, got %v", err)
			case !tc.serve && took > 500*time.Millisecond:
				t.Errorf("the call waited %v, want one probe's wait", took)
			}
		})
	}
}

// TestBreakerProbeCadence: while calls wait, the prober probes every
// ~probeDemandMax, whatever breaker_cooldown says; unattended, it backs off
// toward it. It measures the probe rate per Connector.
func TestBreakerProbeCadence(t *testing.T) {
	refused := dialRefused
	fd := &fakeDriver{}
	c, err := NewConnector("fake?breaker_failures=1&breaker_cooldown=2s&connect_retries=0", WithDriver(fd))
	if err != nil {
		t.Fatal(err)
	}
	noMinSpan(c)
	db := sql.OpenDB(c)
	defer db.Close()
	if _, err := db.Exec("a"); err != nil {
		t.Fatal(err)
	}
	db.SetMaxIdleConns(0)
	fd.setDown(refused)
	_, _ = db.Exec("a")
	waitBreaker(t, c, BreakerOpen)
	time.Sleep(4 * time.Second) // unattended: the interval grows past 100ms
	p0 := c.Stats().Probes
	time.Sleep(2 * time.Second)
	idle := c.Stats().Probes - p0
	// Calls keep coming: 4 goroutines, back to back.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = db.Exec("a")
			}
		})
	}
	p1 := c.Stats().Probes
	time.Sleep(2 * time.Second)
	busy := c.Stats().Probes - p1
	close(stop)
	wg.Wait()
	t.Logf("MEASURE wait/probe-rate unattended=%.1f/s with_waiting_calls=%.1f/s", float64(idle)/2, float64(busy)/2)
	if idle*2 > busy {
		t.Errorf("%d probes in 2s unattended, 4s into an outage, %d with calls waiting: want the interval backed off (~150ms) unattended", idle, busy)
	}
	// One every 80 to 100% of probeDemandMax: 20 to 25 in 2 s at 100 ms.
	if lo, hi := int64(2*time.Second/probeDemandMax)*3/4, int64(2*time.Second/probeDemandMax)*3/2; busy < lo || busy > hi {
		t.Errorf("%d probes in 2s with calls waiting: want one every 80-100%% of %v (%d to %d)", busy, probeDemandMax, lo, hi)
	}
	if fmt.Sprint(c.Stats().Breaker) == "closed" {
		t.Error("closed while the server refused")
	}
}

// TestSilentFailure: which timeouts make calls fail at once while the
// breaker is open (the server's path went silent), and which do not (a
// connection something accepted, then held: HAProxy until it routes).
func TestSilentFailure(t *testing.T) {
	held := heldConnectErr(t)
	dialTimeout := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ETIMEDOUT)}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"the host monitor's verdict", &HostSilentError{Addr: "h:5432", Err: context.DeadlineExceeded}, true},
		{"a reuse check's ping timed out", fmt.Errorf("ping: %w", context.DeadlineExceeded), true},
		{"a dial timed out", dialTimeout, true},
		{"accepted, then held past the deadline", held, false},
		{"refused", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := silentFailure(tc.err); got != tc.want {
				t.Errorf("silentFailure(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// TestBreakerDemandPullsProbe: long into an outage, unattended probes are
// far apart (here 10 s); a call that finds the breaker open brings the next
// probe forward (within probeDemandMax of the last), and its outcome, not
// breakerWaitMax, ends the call's wait.
func TestBreakerDemandPullsProbe(t *testing.T) {
	refused := dialRefused
	b := newBreaker("", 1, time.Hour, slog.New(slog.DiscardHandler), nil)
	b.minSpan = 0
	b.interval = func(time.Duration) time.Duration { return 10 * time.Second }
	var probes atomic.Int64
	b.probeFn = func(context.Context) error { probes.Add(1); return refused }
	defer b.close()
	b.fail(tripSpan, refused)
	if b.State() == BreakerClosed {
		t.Fatal("the breaker did not open")
	}
	time.Sleep(2 * probeDemandMax) // the last probe's start (the opening) is over probeDemandMax ago
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	began := time.Now()
	err := b.wait(ctx, nil)
	took := time.Since(began)
	if !errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("want ErrCircuitOpen, got %v", err)
	}
	if probes.Load() != 1 || took >= breakerWaitMax {
		t.Errorf("%d probes, call rejected after %v: want the call's demand to start a probe at once, and its outcome to end the wait", probes.Load(), took)
	}
	t.Logf("MEASURE wait/demand rejected_after=%s probes=%d", outageMS(took), probes.Load())
}
