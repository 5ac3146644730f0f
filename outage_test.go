package pgresilient

// Outage tests (issue 3): the server is stopped, starts late, refuses
// connections or rejects the password. Each compares pgresilient with raw
// pgx stdlib where that makes sense, and logs what it measured on lines that
// start with "MEASURE outage/<scenario> <driver>", for the lead to quote.
// Timings are logged, never asserted, except as loose correctness bounds.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgresilient/pgresilient/pgtest"
)

// outageCallTimeout bounds each call of these tests, so a hang fails the test
// instead of stalling the run. No call needs more than a fraction of it.
const outageCallTimeout = 10 * time.Second

// TestOutageServerStopped: the server is down. After breaker_failures failed
// calls, pgresilient fails every call at once with ErrCircuitOpen without
// dialling; raw pgx dials (and fails) on every call.
func TestOutageServerStopped(t *testing.T) {
	const (
		failures = 3
		cooldown = time.Second
		calls    = 100
	)
	c := needCluster(t)
	p := newProxy(t, c)
	params := "&breaker_failures=" + strconv.Itoa(failures) + "&breaker_cooldown=" + cooldown.String() +
		"&connect_retries=1&connect_backoff=5ms&connect_backoff_max=10ms"
	db, cn := outageDB(t, c.DSNAt(p.Addr())+params)
	raw := openDB(t, "pgx", c.DSNAt(p.Addr()))
	rawDirect := openDB(t, "pgx", c.DSN())

	// The path through the proxy works before the outage.
	ctx, cancel := context.WithTimeout(context.Background(), outageCallTimeout)
	defer cancel()
	pc, err := pgx.Connect(ctx, c.DSNAt(p.Addr()))
	if err != nil {
		t.Fatalf("through the proxy before the outage: %v", err)
	}
	if err := pc.Close(ctx); err != nil {
		t.Fatal(err)
	}

	outageStop(t, c)

	t.Run(DriverName, func(t *testing.T) {
		before := p.Accepted()
		tripped := outageTrip(t, db, cn, 10)
		trippedAt := time.Now()
		if tripped != failures {
			t.Errorf("the breaker opened after %d failed calls, want breaker_failures=%d", tripped, failures)
		}
		// The proxy accepts each connection and closes it (nothing
		// behind it); before the Connector's first working connection
		// each failed call waits that out within its deadline (issue 22),
		// not within connect_retries; each attempt dialled, and pgx may
		// dial once more per attempt to send a CancelRequest (see
		// outageSettle). The background probes dial too, once each (+ a
		// CancelRequest).
		accepted := outageSettle(p, 500*time.Millisecond)
		probes := cn.Stats().Probes
		st := cn.Stats()
		if got, attempts := accepted-before, st.ConnectFailures; got < attempts || got > 2*attempts+2*probes {
			t.Errorf("the failing calls reached the proxy %d times, want %d attempts (+ up to %d CancelRequests, + %d probes)", got, attempts, attempts, probes)
		}
		// Each call made several attempts (more than 1 + connect_retries),
		// its last one not a retry.
		if st.ConnectFailures-st.ConnectRetries != int64(tripped) || st.ConnectFailures <= int64(2*tripped) {
			t.Errorf("ConnectFailures %d, ConnectRetries %d, for %d calls: want more than %d, the calls' retries less one per call",
				st.ConnectFailures, st.ConnectRetries, tripped, 2*tripped)
		}

		rejected := st.BreakerRejected
		lat, errs := outageCalls(db, calls)
		_ = trippedAt
		for i, err := range errs {
			var coe *CircuitOpenError
			switch {
			case !errors.Is(err, ErrCircuitOpen) || !errors.As(err, &coe):
				t.Errorf("call %d: want ErrCircuitOpen (*CircuitOpenError), got %v", i+1, err)
			case errors.Is(err, driver.ErrBadConn):
				t.Errorf("call %d: ErrCircuitOpen matches driver.ErrBadConn: %v", i+1, err)
			case !coe.NextProbe.IsZero() && (coe.NextProbe.Before(trippedAt) || coe.NextProbe.After(time.Now().Add(cooldown))):
				t.Errorf("call %d: NextProbe %v, want between the trip %v and the cooldown %v from now",
					i+1, coe.NextProbe, trippedAt, cooldown)
			case coe.Addr != p.Addr() || coe.OpenedAt.After(trippedAt) || coe.Last == nil ||
				!strings.Contains(coe.Error(), p.Addr()) || !strings.Contains(coe.Error(), "last failure: failed to connect"):
				// The error says which server, since when and why.
				t.Errorf("call %d: Addr %q (want %q), OpenedAt %v (tripped by %v), Last %v: %v",
					i+1, coe.Addr, p.Addr(), coe.OpenedAt, trippedAt, coe.Last, err)
			}
		}
		// Nothing but the background probes reaches the proxy: each
		// dials once (and maybe once more for a CancelRequest).
		reached := outageSettle(p, 500*time.Millisecond) - accepted
		if probesOpen := cn.Stats().Probes - probes; reached > 2*probesOpen {
			t.Errorf("the %d calls while open reached the proxy %d times, for %d probes: want only the probes", calls, reached, probesOpen)
		}
		if got := cn.Stats().BreakerRejected - rejected; got != calls {
			t.Errorf("BreakerRejected grew by %d, want %d", got, calls)
		}
		// A call finding the breaker open waits for the prober's next
		// probe (at most probeDemandMax away while calls wait), and fails
		// when it found the server still down: not in microseconds, and
		// not much later than one probe interval.
		if med, slowest := median(lat), outageMax(lat); med < time.Millisecond || slowest > time.Second {
			t.Errorf("rejections: median %v, slowest %v; want them to wait for a probe (~%v), and none over 1s", med, slowest, probeDemandMax)
		}
		t.Logf("MEASURE outage/stopped %s median_reject=%s max_reject=%s reached_proxy=%d/%d failed_before_open=%d",
			DriverName, outageMS(median(lat)), outageMS(outageMax(lat)), reached, calls, tripped)
		t.Logf("%s: first rejection: %v", DriverName, errs[0])
		// Stop the prober (DB.Close would): raw pgx's count of
		// connections to the proxy comes next.
		_ = cn.Close()
	})

	t.Run("pgx", func(t *testing.T) {
		accepted := outageSettle(p, 500*time.Millisecond)
		lat := make([]time.Duration, calls)
		errs := make([]error, calls)
		failed, reached := 0, 0
		for i := range calls {
			// A call's own dial is accepted before the call returns; a
			// CancelRequest of the call before may land in its window too,
			// so reached is an upper bound, and a call with none certainly
			// did not reach the proxy.
			before := p.Accepted()
			began := time.Now()
			errs[i] = outageSelect(raw)
			lat[i] = time.Since(began)
			if p.Accepted() > before {
				reached++
			}
			if errs[i] != nil {
				failed++
			}
		}
		connections := outageSettle(p, 500*time.Millisecond) - accepted
		if failed != calls {
			t.Errorf("raw pgx: %d of %d calls failed against a stopped server", failed, calls)
		}
		// The fault is real: raw pgx dials on every call (and sometimes
		// once more, for its CancelRequest).
		if reached != calls {
			t.Errorf("raw pgx: %d of %d calls reached the proxy, want every one", reached, calls)
		}
		if connections < calls || connections > 2*calls {
			t.Errorf("raw pgx: %d calls made %d connections to the proxy, want %d to %d", calls, connections, calls, 2*calls)
		}
		t.Logf("MEASURE outage/stopped pgx median_fail=%s max_fail=%s reached_proxy=%d/%d proxy_connections=%d",
			outageMS(median(lat)), outageMS(outageMax(lat)), reached, calls, connections)
		t.Logf("pgx: first error: %v", errs[0])

		// Without the proxy: each call dials the stopped server's port and
		// is refused by the kernel.
		lat, errs = outageCalls(rawDirect, calls)
		t.Logf("MEASURE outage/stopped pgx-direct median_fail=%s max_fail=%s", outageMS(median(lat)), outageMS(outageMax(lat)))
		t.Logf("pgx-direct: first error: %v", errs[0])
	})
}

// TestOutageRecovery: the server comes back while the breaker is open.
// pgresilient's first success comes at the latest after the cooldown and one
// round of connect backoff; raw pgx's as soon as the server is up.
func TestOutageRecovery(t *testing.T) {
	const (
		cooldown   = time.Second
		backoffMax = 10 * time.Millisecond
		// A correctness bound for a loaded 2-core machine, not a speed
		// assertion.
		slack = 2 * time.Second
	)
	c := needCluster(t)
	db, cn := outageDB(t, c.DSN()+"&breaker_failures=3&breaker_cooldown="+cooldown.String()+
		"&connect_retries=1&connect_backoff=5ms&connect_backoff_max="+backoffMax.String())
	raw := openDB(t, "pgx", c.DSN())

	outageStop(t, c)
	outageTrip(t, db, cn, 10)
	trippedAt := time.Now()
	if err := outageSelect(raw); err == nil {
		t.Fatal("raw pgx: a query succeeded against a stopped server")
	}

	outageResume(t, c)
	up := time.Now()
	openFor := up.Sub(trippedAt)

	// Poll both every 10ms, from the same moment, until each succeeds.
	bound := cooldown + backoffMax + slack
	dbs := map[string]*sql.DB{DriverName: db, "pgx": raw}
	recovered := map[string]time.Duration{}
	tries := map[string]int{}
	rejects := 0
	lastErr := map[string]error{}
	for len(recovered) < len(dbs) && time.Since(up) < bound+time.Second {
		for name, d := range dbs {
			if _, ok := recovered[name]; ok {
				continue
			}
			tries[name]++
			err := outageSelect(d)
			if err == nil {
				recovered[name] = time.Since(up)
				continue
			}
			lastErr[name] = err
			if name == DriverName && errors.Is(err, ErrCircuitOpen) {
				rejects++
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	for name := range dbs {
		if _, ok := recovered[name]; !ok {
			t.Fatalf("%s: no query succeeded within %v of the server accepting connections (last error: %v)",
				name, time.Since(up).Round(time.Millisecond), lastErr[name])
		}
	}
	if got := recovered[DriverName]; got > bound {
		t.Errorf("pgresilient recovered %v after the server came back, later than cooldown %v + backoff %v + slack %v",
			got, cooldown, backoffMax, slack)
	}
	if s := cn.Stats().Breaker; s != BreakerClosed {
		t.Errorf("breaker %v after the first success, want closed", s)
	}
	t.Logf("MEASURE outage/recovery %s first_success_after_up=%s tries=%d rejected_while_open=%d breaker_open_at_up=%s cooldown=%s",
		DriverName, outageMS(recovered[DriverName]), tries[DriverName], rejects, outageMS(openFor), cooldown)
	t.Logf("MEASURE outage/recovery pgx first_success_after_up=%s tries=%d",
		outageMS(recovered["pgx"]), tries["pgx"])
}

// TestOutageStartup: the app starts before the database. pgresilient's first
// Ping retries until the server is up; raw pgx's fails at once.
func TestOutageStartup(t *testing.T) {
	const delay = 1500 * time.Millisecond
	c := needCluster(t)
	db, cn := outageDB(t, c.DSN()) // the bare DSN: waiting for a database that starts later needs no parameter
	raw := openDB(t, "pgx", c.DSN())
	outageStop(t, c)

	t.Run("pgx", func(t *testing.T) { rawPingFails(t, raw, 10*time.Second, "startup", "against a stopped server") })

	t.Run(DriverName, func(t *testing.T) {
		began := time.Now()
		up := outageResumeLater(t, c, delay)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := db.PingContext(ctx)
		took := time.Since(began)
		if err != nil {
			t.Fatalf("Ping: %v (after %v)", err, took)
		}
		// Resume returns after its own readiness check, which may come
		// just after our first connection.
		var upAfter time.Duration
		select {
		case r := <-up:
			if r.err != nil {
				t.Fatalf("resume the cluster: %v", r.err)
			}
			upAfter = r.at.Sub(began)
		case <-time.After(time.Minute):
			t.Fatal("Resume did not return within a minute")
		}
		// One Ping is one breaker call, however many attempts it made.
		st := cn.Stats()
		if st.Breaker != BreakerClosed || st.BreakerTransitions != 0 {
			t.Errorf("breaker %v after %d transitions, want closed and none", st.Breaker, st.BreakerTransitions)
		}
		if st.ConnectRetries == 0 {
			t.Errorf("ConnectRetries = 0: the server was up before the first attempt")
		}
		t.Logf("MEASURE outage/startup %s ping_ok_after=%s server_resumed_after=%s resume_delay=%s connect_retries=%d connect_failures=%d",
			DriverName, outageMS(took), outageMS(upAfter), delay, st.ConnectRetries, st.ConnectFailures)
	})
}

// TestOutageWrongPassword: a wrong password is a permanent failure, reported
// at once without retries, without the password, and without tripping the
// breaker: the server answered.
func TestOutageWrongPassword(t *testing.T) {
	const calls = 10
	c := needCluster(t)
	password := "wrong-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	dsn := c.PasswordDSN(c.Addr(), password)
	params := "&connect_retries=5&connect_backoff=200ms&breaker_failures=2"
	logs := new(outageLogBuffer)
	db, cn := outageDB(t, dsn+params, WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	raw := openDB(t, "pgx", dsn)

	t.Run(DriverName, func(t *testing.T) {
		var lat []time.Duration
		for i := range calls {
			ctx, cancel := context.WithTimeout(context.Background(), outageCallTimeout)
			began := time.Now()
			err := db.PingContext(ctx)
			lat = append(lat, time.Since(began))
			cancel()
			var ce *ConnectError
			if !errors.As(err, &ce) {
				t.Fatalf("call %d: want a *ConnectError, got %T: %v", i+1, err, err)
			}
			if ce.Attempts != 1 || !ce.Permanent {
				t.Errorf("call %d: Attempts %d, Permanent %v; want 1, true", i+1, ce.Attempts, ce.Permanent)
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
				t.Errorf("call %d: SQLSTATE 28P01 not reachable with errors.As: %v", i+1, err)
			}
			msg := err.Error()
			if strings.Contains(msg, password) || strings.Contains(msg, dsn) {
				t.Errorf("call %d: the error shows the password or the DSN: %q", i+1, msg)
			}
			if !strings.Contains(msg, "password authentication failed") && !strings.Contains(msg, "28P01") {
				t.Errorf("call %d: the error does not say the password was refused: %q", i+1, msg)
			}
			if errors.Is(err, ErrCircuitOpen) || errors.Is(err, driver.ErrBadConn) || IsDisconnect(err) {
				t.Errorf("call %d: a refused password reported as a connectivity problem: %v", i+1, err)
			}
			if i == 0 {
				t.Logf("%s: %v", DriverName, err)
			}
		}
		st := cn.Stats()
		if st.ConnectRetries != 0 || st.ConnectFailures != calls {
			t.Errorf("ConnectRetries %d, ConnectFailures %d; want 0 and %d", st.ConnectRetries, st.ConnectFailures, calls)
		}
		if st.Breaker != BreakerClosed || st.BreakerTransitions != 0 || st.BreakerRejected != 0 {
			t.Errorf("after %d refused passwords with breaker_failures=2: breaker %v, %d transitions, %d rejected; want closed, 0, 0",
				calls, st.Breaker, st.BreakerTransitions, st.BreakerRejected)
		}
		if strings.Contains(logs.String(), password) {
			t.Errorf("the log shows the password:\n%s", logs.String())
		}
		t.Logf("MEASURE outage/wrong-password %s median_fail=%s max_fail=%s attempts=1 retries=%d breaker=%v",
			DriverName, outageMS(median(lat)), outageMS(outageMax(lat)), st.ConnectRetries, st.Breaker)
	})

	t.Run("pgx", func(t *testing.T) {
		var lat []time.Duration
		var first error
		for range calls {
			ctx, cancel := context.WithTimeout(context.Background(), outageCallTimeout)
			began := time.Now()
			err := raw.PingContext(ctx)
			lat = append(lat, time.Since(began))
			cancel()
			if err == nil {
				t.Fatal("raw pgx: a wrong password was accepted")
			}
			if first == nil {
				first = err
			}
		}
		t.Logf("MEASURE outage/wrong-password pgx median_fail=%s max_fail=%s shows_password=%v",
			outageMS(median(lat)), outageMS(outageMax(lat)), strings.Contains(first.Error(), password))
		t.Logf("pgx: %v", first)
	})

	t.Run("right password", func(t *testing.T) {
		good, _ := outageDB(t, c.PasswordDSN(c.Addr(), pgtest.Password)+params)
		ctx, cancel := context.WithTimeout(context.Background(), outageCallTimeout)
		defer cancel()
		var user string
		if err := good.QueryRowContext(ctx, "select current_user").Scan(&user); err != nil {
			t.Fatal(err)
		}
		if user != pgtest.PasswordUser {
			t.Errorf("current_user = %q, want %q", user, pgtest.PasswordUser)
		}
	})
}

// TestOutageTLSRefused: sslmode=require against a server without TLS is a
// configuration mismatch that no retry fixes: one attempt, reported at once
// as permanent, and the breaker stays closed (the server answered). Raw pgx
// fails the same way; before pgresilient knew pgconn's "server refused TLS
// connection", it retried 4 times and opened the breaker.
func TestOutageTLSRefused(t *testing.T) {
	const calls = 6
	c := needCluster(t)
	dsn := strings.Replace(c.DSN(), "sslmode=disable", "sslmode=require", 1)
	if dsn == c.DSN() {
		t.Fatalf("the cluster's DSN has no sslmode=disable to change: %s", dsn)
	}
	db, cn := outageDB(t, dsn+"&connect_retries=5&connect_backoff=200ms&breaker_failures=2")
	raw := openDB(t, "pgx", dsn)

	t.Run(DriverName, func(t *testing.T) {
		for i := range calls {
			ctx, cancel := context.WithTimeout(context.Background(), outageCallTimeout)
			began := time.Now()
			err := db.PingContext(ctx)
			took := time.Since(began)
			cancel()
			var ce *ConnectError
			if !errors.As(err, &ce) {
				t.Fatalf("call %d: want a *ConnectError, got %T: %v", i+1, err, err)
			}
			if ce.Attempts != 1 || !ce.Permanent {
				t.Errorf("call %d: Attempts %d, Permanent %v; want 1, true", i+1, ce.Attempts, ce.Permanent)
			}
			if !strings.Contains(err.Error(), "server refused TLS connection") {
				t.Errorf("call %d: the error does not say the server refused TLS: %v", i+1, err)
			}
			if errors.Is(err, ErrCircuitOpen) || errors.Is(err, driver.ErrBadConn) || IsDisconnect(err) {
				t.Errorf("call %d: a TLS mismatch reported as a connectivity problem: %v", i+1, err)
			}
			if took > time.Second {
				t.Errorf("call %d took %v: a permanent failure must not wait for backoff", i+1, took)
			}
		}
		st := cn.Stats()
		if st.ConnectRetries != 0 || st.Breaker != BreakerClosed || st.BreakerTransitions != 0 {
			t.Errorf("ConnectRetries %d, breaker %v after %d transitions; want 0, closed, 0",
				st.ConnectRetries, st.Breaker, st.BreakerTransitions)
		}
	})
	t.Run("pgx", func(t *testing.T) {
		err := raw.Ping()
		if err == nil || !strings.Contains(err.Error(), "server refused TLS connection") {
			t.Fatalf("raw pgx: want \"server refused TLS connection\", got %v", err)
		}
	})
}

// TestOutageRefused: the server's address refuses connections for a moment
// (the proxy stops listening). pgresilient retries and connects once it
// listens again; raw pgx fails at once.
func TestOutageRefused(t *testing.T) {
	const reopenAfter = 100 * time.Millisecond
	c := needCluster(t)
	p := newProxy(t, c)
	dsn := c.DSNAt(p.Addr())
	db, cn := outageDB(t, dsn+"&connect_retries=20&connect_backoff=20ms&connect_backoff_max=50ms")
	raw := openDB(t, "pgx", dsn)
	if err := p.Refuse(true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Refuse(false); err != nil {
			t.Errorf("proxy: listen again: %v", err)
		}
	})

	t.Run("pgx", func(t *testing.T) {
		rawPingFails(t, raw, outageCallTimeout, "refused", "while the proxy refused connections")
	})

	t.Run(DriverName, func(t *testing.T) {
		reopened := make(chan error, 1)
		began := time.Now()
		go func() {
			time.Sleep(reopenAfter)
			reopened <- p.Refuse(false)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), outageCallTimeout)
		defer cancel()
		err := db.PingContext(ctx)
		took := time.Since(began)
		if rerr := <-reopened; rerr != nil {
			t.Fatalf("proxy: listen again: %v", rerr)
		}
		if err != nil {
			t.Fatalf("Ping: %v (after %v)", err, took)
		}
		st := cn.Stats()
		if st.ConnectRetries == 0 {
			t.Errorf("ConnectRetries = 0: no retry happened")
		}
		if st.Breaker != BreakerClosed {
			t.Errorf("breaker %v, want closed", st.Breaker)
		}
		t.Logf("MEASURE outage/refused %s ping_ok_after=%s reopened_after=%s connect_retries=%d connect_failures=%d",
			DriverName, outageMS(took), reopenAfter, st.ConnectRetries, st.ConnectFailures)
	})
}

// TestOutageStateChange: WithStateChange sees closed -> open -> closed as a
// real server stops and comes back, the background probe closing it.
func TestOutageStateChange(t *testing.T) {
	const cooldown = 300 * time.Millisecond
	// The hook runs under the breaker's lock: send without blocking.
	seen := make(chan outageTransition, 32)
	var dropped atomic.Int64
	hook := func(from, to BreakerState) {
		select {
		case seen <- outageTransition{from, to}:
		default:
			dropped.Add(1)
		}
	}
	c := needCluster(t)
	db, cn := outageDB(t, c.DSN()+"&breaker_failures=2&breaker_cooldown="+cooldown.String()+
		"&connect_retries=1&connect_backoff=5ms&connect_backoff_max=10ms", WithStateChange(hook))
	noMinSpan(cn) // the hook's sequence is the point, not the span
	if err := outageSelect(db); err != nil {
		t.Fatalf("before the outage: %v", err)
	}

	outageStop(t, c)
	began := time.Now()
	outageTrip(t, db, cn, 10)
	trippedAt := time.Now()
	outageResume(t, c)
	up := time.Now()
	waitBreaker(t, cn, BreakerClosed) // the background probe closes it
	recovered := time.Now()
	if err := outageSelect(db); err != nil {
		t.Fatalf("after the probe closed the breaker: %v", err)
	}

	var got []outageTransition
drain:
	for {
		select {
		case tr := <-seen:
			got = append(got, tr)
		default:
			break drain
		}
	}
	// The probes' open <-> half-open moves are not transitions for the
	// hook (they are logged at Debug): closed -> open -> closed.
	want := []outageTransition{{BreakerClosed, BreakerOpen}, {BreakerOpen, BreakerClosed}}
	if n := dropped.Load(); n != 0 {
		t.Errorf("%d transitions dropped", n)
	}
	if len(got) != len(want) {
		t.Fatalf("transitions %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("transition %d: %v, want %v", i, got[i], want[i])
		}
	}
	if n := cn.Stats().BreakerTransitions; n != int64(len(want)) {
		t.Errorf("Stats().BreakerTransitions = %d, want %d", n, len(want))
	}
	t.Logf("MEASURE outage/state-change %s transitions=%v trip_after=%s server_up_after=%s closed_after=%s cooldown=%s",
		DriverName, got, outageMS(trippedAt.Sub(began)), outageMS(up.Sub(began)), outageMS(recovered.Sub(began)), cooldown)
}

// TestOutageCountedOnce: one event that ends every connection at once (a
// network cut, a restart) is one breaker failure, not one per connection:
// with breaker_failures=2, four connections lost together leave the breaker
// closed. Connection attempts that fail afterwards are new evidence and open
// it.
func TestOutageCountedOnce(t *testing.T) {
	const conns = 4
	c := needCluster(t)
	proxy := newProxy(t, c)
	db, cn := outageDB(t, c.DSNAt(proxy.Addr())+"&breaker_failures=2&breaker_cooldown=1h&connect_retries=0")
	noMinSpan(cn) // what counts is the point: two failures open it
	ctx := context.Background()

	held := holdConns(t, db, conns)
	proxy.Cut()
	for i, sc := range held {
		if _, err := sc.ExecContext(ctx, "select 1"); !IsDisconnect(err) {
			t.Errorf("conn %d after the cut: %v, want a disconnect", i, err)
		}
		_ = sc.Close()
	}
	st := cn.Stats()
	if st.Breaker != BreakerClosed || st.BreakerTransitions != 0 {
		t.Errorf("%d connections lost to one cut with breaker_failures=2: breaker %v after %d transitions, want closed",
			conns, st.Breaker, st.BreakerTransitions)
	}
	if st.Invalidations != 1 || st.DiscardedLost != conns {
		t.Errorf("Invalidations %d, DiscardedLost %d; want 1 and %d", st.Invalidations, st.DiscardedLost, conns)
	}

	if err := proxy.Refuse(true); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := proxy.Refuse(false); err != nil {
			t.Error(err)
		}
	}()
	for range 2 {
		if err := db.PingContext(ctx); err == nil {
			t.Fatal("ping through a refusing proxy succeeded")
		}
	}
	if s := cn.Stats().Breaker; s != BreakerOpen {
		t.Errorf("after 2 refused connection attempts: breaker %v, want open", s)
	}
}
