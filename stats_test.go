package pgresilient

// Tests of Connector.Stats: every counter is provoked by a real fault against
// the test cluster, and the difference of two snapshots is compared with what
// that fault must do. The growth is exact where the fault makes it
// deterministic, a lower bound where it depends on timing, and every counter a
// case does not name must not move at all.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgresilient/pgresilient/faultproxy"
)

// TestStatsOpenedClosed: Opened counts connections dialled; Closed those
// database/sql closes, however it decides to.
func TestStatsOpenedClosed(t *testing.T) {
	c := needCluster(t)

	t.Run("db.Close", func(t *testing.T) {
		db, cn := outageDB(t, c.DSN())
		db.SetMaxIdleConns(3)
		releaseConns(holdConns(t, db, 3)) // three distinct connections
		opened := cn.Stats()
		checkStats(t, Stats{}, opened, statsWant{"Opened": exactly(3)})
		closeAndCheck(t, db)
		checkStats(t, opened, cn.Stats(), statsWant{"Closed": exactly(3)})
	})

	t.Run("SetMaxIdleConns(0)", func(t *testing.T) {
		db, cn := outageDB(t, c.DSN())
		db.SetMaxIdleConns(0) // every connection is closed on its way back
		if failed, first := runQueries(db, 3); failed != 0 {
			t.Fatal(first)
		}
		checkStats(t, Stats{}, cn.Stats(), statsWant{"Opened": exactly(3), "Closed": exactly(3)})
	})

	t.Run("SetConnMaxLifetime", func(t *testing.T) {
		db, cn := outageDB(t, c.DSN())
		db.SetMaxOpenConns(1)
		db.SetConnMaxLifetime(200 * time.Millisecond)
		if failed, first := runQueries(db, 1); failed != 0 {
			t.Fatal(first)
		}
		// Until database/sql retires the connection: on a checkout, or by
		// its cleaner.
		deadline := time.Now().Add(5 * time.Second)
		for db.Stats().MaxLifetimeClosed == 0 {
			if time.Now().After(deadline) {
				t.Fatal("database/sql closed no connection for its age within 5s")
			}
			if failed, first := runQueries(db, 1); failed != 0 {
				t.Fatal(first)
			}
			time.Sleep(10 * time.Millisecond)
		}
		// A checkout that finds the connection expired closes it and dials
		// another; database/sql's cleaner closes it without one. Either way
		// the next statement runs on a new connection.
		if failed, first := runQueries(db, 1); failed != 0 {
			t.Fatal(first)
		}
		expired := db.Stats().MaxLifetimeClosed
		// The old connection's reuses before it expired were verified (the
		// first always is).
		checkStats(t, Stats{}, cn.Stats(), statsWant{
			"Opened":        exactly(1 + expired),
			"Closed":        exactly(expired),
			"Verifications": atLeast(0),
		})
	})
}

// TestStatsConnLost: a connection that breaks during a statement is
// discarded as lost and counted in ConnLost (outcome unknown). A network or
// server failure also invalidates the pool; the caller's own deadline does
// not, since it says nothing about the server.
func TestStatsConnLost(t *testing.T) {
	c := needCluster(t)
	lost := statsWant{
		"ConnLost":      exactly(1),
		"DiscardedLost": exactly(1),
		"Discarded":     exactly(1),
		"Invalidations": exactly(1),
		"Closed":        exactly(1), // database/sql closes what IsValid rejects
		"Verifications": idleVerify,
	}
	callerDeadline := statsMerge(lost, statsWant{"Invalidations": exactly(0)})

	cases := []struct {
		name  string
		fault func(t *testing.T, db *sql.DB, p *faultproxy.Proxy) error
		want  statsWant
	}{
		{"reset after the statement was sent", func(t *testing.T, db *sql.DB, p *faultproxy.Proxy) error {
			// One simple-protocol message: forwarded, then the client is
			// reset before any reply.
			p.CutOn([]byte("stats_sent_then_reset"), true)
			_, err := db.Exec("select 'stats_sent_then_reset'")
			if p.Armed() {
				t.Fatal("the proxy never saw the statement")
			}
			return err
		}, lost},
		{"reset inside a transaction", func(t *testing.T, db *sql.DB, p *faultproxy.Proxy) error {
			tx, err := db.Begin()
			if err != nil {
				t.Fatal(err)
			}
			p.CutOn([]byte("stats_tx_reset"), true)
			_, err = tx.Exec("select 'stats_tx_reset'")
			// The transaction is gone: its next statement and its Commit say
			// so again, sending nothing, and the loss is counted once.
			if _, err := tx.Exec("select 1"); !errors.Is(err, ErrConnLost) {
				t.Errorf("next statement of the transaction: want ErrConnLost, got %v", err)
			}
			// COMMIT is never sent: the transaction did not commit, and
			// Commit says so rather than "outcome unknown".
			if err := tx.Commit(); !errors.Is(err, ErrNotCommitted) || errors.Is(err, ErrConnLost) || errors.Is(err, driver.ErrBadConn) {
				t.Errorf("commit: want ErrNotCommitted, not ErrConnLost nor ErrBadConn, got %v", err)
			}
			return err
		}, statsMerge(lost, statsWant{"CommitsNotCommitted": exactly(1)})},
		{"backend terminated mid-statement", func(t *testing.T, db *sql.DB, _ *faultproxy.Proxy) error {
			pid := backendPID(t, db)
			done := make(chan error, 1)
			go func() {
				_, err := db.Exec("select pg_sleep(10)")
				done <- err
			}()
			deadline := time.Now().Add(5 * time.Second)
			for backendState(t, pid) != "active" {
				if time.Now().After(deadline) {
					t.Fatal("the statement did not start within 5s")
				}
				time.Sleep(10 * time.Millisecond)
			}
			statsKill(t, pid)
			err := <-done
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "57P01" {
				t.Errorf("want the server's 57P01, got %v", err)
			}
			return err
		}, lost},
		{"caller's deadline mid-statement, the cancel unanswered", func(t *testing.T, db *sql.DB, p *faultproxy.Proxy) error {
			// A cancel that the server answers keeps the connection and
			// says ErrCanceled (TestCancelBeforeClose); here the network
			// goes silent first, so the cancel cannot land.
			pid := backendPID(t, db)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			freeze := time.AfterFunc(100*time.Millisecond, p.Freeze)
			_, err := db.ExecContext(ctx, "select pg_sleep(10)")
			freeze.Stop()
			p.Thaw()
			statsKill(t, pid) // still sleeping: the cancel never reached the server
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("want the caller's DeadlineExceeded, got %v", err)
			}
			return err
		}, callerDeadline},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newProxy(t, c)
			db, cn := outageDB(t, c.DSNAt(p.Addr()))
			statsWarm(t, db)
			before := cn.Stats()
			err := tc.fault(t, db, p)
			wantConnLost(t, err)
			checkStats(t, before, cn.Stats(), tc.want)
		})
	}
}

// TestStatsBadConnRetries: a statement on a connection whose socket was reset
// before anything was sent fails with driver.ErrBadConn; database/sql retries
// it on a new connection, and the caller sees success. The insert runs once.
func TestStatsBadConnRetries(t *testing.T) {
	c := needCluster(t)
	table := freshTable(t, c, "tstats_badconn", DriverName, "(id int)", "")
	p := newProxy(t, c)
	var bc *baseConn
	reset := statsResetBefore{marker: table, once: new(sync.Once), fault: func() {
		p.Cut()
		statsWaitDead(t, bc)
	}}
	db, cn := outageDB(t, c.DSNAt(p.Addr()), WithInterceptor(reset))
	statsWarm(t, db)
	bc = statsBase(t, db)
	before := cn.Stats()
	if _, err := db.Exec("insert into " + table + " values (1)"); err != nil {
		t.Fatalf("want database/sql's retry to succeed, got %v", err)
	}
	checkStats(t, before, cn.Stats(), statsWant{
		"BadConnRetries": exactly(1),
		"DiscardedLost":  exactly(1),
		"Discarded":      exactly(1),
		"Invalidations":  exactly(1),
		"Closed":         exactly(1),
		"Opened":         exactly(1), // the retry's connection
		"Verifications":  idleVerify,
	})
	if n, err := countRows(context.Background(), c, table); err != nil || n != 1 {
		t.Errorf("the insert ran %d times (%v), want once", n, err)
	}
}

// TestStatsDiscardedIdle: pooled connections reset by the network while idle
// are found dead by the socket peek on reuse, and discarded before anything
// is sent, without a verification.
func TestStatsDiscardedIdle(t *testing.T) {
	c := needCluster(t)
	p := newProxy(t, c)
	db, cn := outageDB(t, c.DSNAt(p.Addr()))
	db.SetMaxOpenConns(2)
	var bcs []*baseConn
	held := holdConns(t, db, 2) // two distinct connections
	for _, sc := range held {
		if err := sc.Raw(func(dc any) error { bcs = append(bcs, dc.(*conn).base); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	releaseConns(held)
	before := cn.Stats()
	p.Cut()
	statsWaitDead(t, bcs...)
	// In the pool long enough to be peeked: a connection whose previous use
	// began less than peekAfter ago is in continuous use, and not peeked
	// (idle.go); its first-reuse ping would catch it instead.
	time.Sleep(2 * cn.peekAfter)
	// Both pooled connections are tried, discarded, and a third is dialled.
	if failed, first := runQueries(db, 1); failed != 0 {
		t.Fatal(first)
	}
	checkStats(t, before, cn.Stats(), statsWant{
		"DiscardedIdle": exactly(2),
		"Discarded":     exactly(2),
		"Closed":        exactly(2),
		"Opened":        exactly(1),
	})
}

// TestStatsDiscardedVerify: pooled connections that fail their verification
// ping before reuse.
func TestStatsDiscardedVerify(t *testing.T) {
	c := needCluster(t)

	// The server terminates idle pooled connections: each one holds the
	// server's FATAL, so the peek sees bytes pending (not a closed socket)
	// and the verification ping reads the FATAL.
	t.Run("terminated while idle", func(t *testing.T) {
		db, cn := outageDB(t, c.DSN())
		db.SetMaxOpenConns(2)
		warmPool(t, db, 2)
		before := cn.Stats()
		n, err := c.TerminateBackends(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n < 2 { // and any backend another test left behind
			t.Fatalf("terminated %d backends, want at least the pool's 2", n)
		}
		if failed, first := runQueries(db, 1); failed != 0 {
			t.Fatal(first)
		}
		checkStats(t, before, cn.Stats(), statsWant{
			"Verifications":   exactly(2),
			"DiscardedVerify": exactly(2),
			"Discarded":       exactly(2),
			"Closed":          exactly(2),
			"Opened":          exactly(1),
		})
	})

	// A statement on a frozen network times out and invalidates the pool;
	// the other pooled connection, used a moment ago, is verified before
	// its reuse, and its ping times out too. The retry's connect then times
	// out against the frozen network.
	t.Run("frozen after a pool invalidation", func(t *testing.T) {
		p := newProxy(t, c)
		db, cn := outageDB(t, c.DSNAt(p.Addr())+"&query_timeout=300ms&breaker=off&connect_retries=0")
		warmPool(t, db, 2)
		before := cn.Stats()
		p.Freeze()
		defer p.Thaw()
		if _, err := db.Exec("select 1"); !errors.Is(err, ErrConnLost) {
			t.Fatalf("first statement: want ErrConnLost, got %v", err)
		}
		_, err := db.Exec("select 1")
		var ce *ConnectError
		if !errors.As(err, &ce) || ce.Permanent {
			t.Fatalf("second statement: want a transient *ConnectError after the verification failed, got %v", err)
		}
		checkStats(t, before, cn.Stats(), statsWant{
			"ConnLost":        exactly(1),
			"DiscardedLost":   exactly(1),
			"Invalidations":   exactly(1),
			"Verifications":   exactly(1),
			"DiscardedVerify": exactly(1),
			"Discarded":       exactly(2),
			"Closed":          exactly(2),
			"ConnectFailures": exactly(1), // a timeout: not retried
		})
	})
}

// TestStatsVerifications: a pooled connection is verified on its first
// reuse, and after a pool invalidation; a healthy one passes and is kept.
func TestStatsVerifications(t *testing.T) {
	c := needCluster(t)

	t.Run("first reuse", func(t *testing.T) {
		db, cn := outageDB(t, c.DSN())
		db.SetMaxOpenConns(1)
		if failed, first := runQueries(db, 3); failed != 0 {
			t.Fatal(first)
		}
		// Dialled by the first, verified by the second, reused as is by
		// the third.
		checkStats(t, Stats{}, cn.Stats(), statsWant{"Opened": exactly(1), "Verifications": statsSpan{1, 2}})
	})

	t.Run("after a pool invalidation", func(t *testing.T) {
		p := newProxy(t, c)
		db, cn := outageDB(t, c.DSNAt(p.Addr()))
		warmPool(t, db, 2)
		before := cn.Stats()
		p.CutOn([]byte("stats_invalidate"), true)
		if _, err := db.Exec("select 'stats_invalidate'"); !errors.Is(err, ErrConnLost) {
			t.Fatalf("want ErrConnLost, got %v", err)
		}
		backendPID(t, db) // the other pooled connection serves
		checkStats(t, before, cn.Stats(), statsWant{
			"ConnLost":      exactly(1),
			"DiscardedLost": exactly(1),
			"Discarded":     exactly(1),
			"Invalidations": exactly(1),
			"Closed":        exactly(1),
			"Verifications": exactly(1), // the other one, which passes
		})
	})
}

// TestStatsRollbacks: a connection that comes back to the pool inside a
// transaction block (BEGIN sent by hand) is rolled back on its way in; if the
// rollback fails, it is discarded.
func TestStatsRollbacks(t *testing.T) {
	c := needCluster(t)
	cases := []struct {
		name   string
		frozen bool
		want   statsWant
	}{
		{"rolled back", false, statsWant{"PoolRollbacks": exactly(1)}},
		{"rollback on a frozen network", true, statsWant{
			"DiscardedRollback": exactly(1),
			"Discarded":         exactly(1),
			"Closed":            exactly(1),
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newProxy(t, c)
			db, cn := outageDB(t, c.DSNAt(p.Addr())+"&query_timeout=300ms")
			statsWarm(t, db)
			ctx := context.Background()
			before := cn.Stats()
			sc, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := sc.ExecContext(ctx, "begin"); err != nil {
				t.Fatal(err)
			}
			if tc.frozen {
				p.Freeze()
				defer p.Thaw()
			}
			sc.Close() // back to the pool, inside the block
			after := cn.Stats()
			want := statsMerge(tc.want, statsWant{"Verifications": idleVerify})
			checkStats(t, before, after, want)
		})
	}
}

// TestStatsAutoRollbacks: a unique violation inside a sql.Tx is rolled back
// at once, unless tx_autorollback=off.
func TestStatsAutoRollbacks(t *testing.T) {
	c := needCluster(t)
	cases := []struct {
		name, params string
		want         int64
	}{
		{"on", "", 1},
		{"off", "&tx_autorollback=off", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			table := freshTable(t, c, "tstats_auto", DriverName, "(id int primary key)", "(1)")
			db, cn := outageDB(t, c.DSN()+tc.params)
			statsWarm(t, db)
			before := cn.Stats()
			tx, err := db.Begin()
			if err != nil {
				t.Fatal(err)
			}
			_, err = tx.Exec("insert into " + table + " values (1)")
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
				t.Errorf("want a unique violation, got %v", err)
			}
			if err := tx.Rollback(); err != nil {
				t.Errorf("rollback: %v", err)
			}
			checkStats(t, before, cn.Stats(), statsWant{"AutoRollbacks": exactly(tc.want), "Verifications": idleVerify})
		})
	}
}

// TestStatsConnect: failed connection attempts, and the retries among them.
func TestStatsConnect(t *testing.T) {
	c := needCluster(t)

	t.Run("refused, retries exhausted", func(t *testing.T) {
		p := newProxy(t, c)
		db, cn := outageDB(t, c.DSNAt(p.Addr())+"&connect_retries=2&connect_backoff=1ms&connect_backoff_max=2ms")
		// Connected once: before that, a refusal is waited out within the
		// deadline (a database starting after the application), not
		// counted against connect_retries (TestOutageStartup).
		db.SetMaxIdleConns(0)
		if err := db.Ping(); err != nil {
			t.Fatal(err)
		}
		before := cn.Stats()
		if err := p.Refuse(true); err != nil {
			t.Fatal(err)
		}
		err := db.Ping()
		var ce *ConnectError
		if !errors.As(err, &ce) || ce.Attempts != 3 {
			t.Fatalf("want a *ConnectError after 3 attempts, got %v", err)
		}
		checkStats(t, before, cn.Stats(), statsWant{"ConnectFailures": exactly(3), "ConnectRetries": exactly(2)})
	})

	t.Run("refused, then listening again", func(t *testing.T) {
		p := newProxy(t, c)
		db, cn := outageDB(t, c.DSNAt(p.Addr())+"&connect_retries=100&connect_backoff=5ms&connect_backoff_max=20ms")
		if err := p.Refuse(true); err != nil {
			t.Fatal(err)
		}
		// Listen again once two attempts have failed: the retries are
		// under way.
		reopened := make(chan error, 1)
		go func() {
			deadline := time.Now().Add(10 * time.Second)
			for cn.Stats().ConnectFailures < 2 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			reopened <- p.Refuse(false)
		}()
		err := db.Ping()
		if rerr := <-reopened; rerr != nil {
			t.Fatalf("proxy: listen again: %v", rerr)
		}
		if err != nil {
			t.Fatalf("Ping: %v", err)
		}
		st := cn.Stats()
		checkStats(t, Stats{}, st, statsWant{"Opened": exactly(1), "ConnectFailures": atLeast(2), "ConnectRetries": atLeast(2)})
		if st.ConnectRetries != st.ConnectFailures {
			t.Errorf("ConnectRetries %d, ConnectFailures %d: every failure before the success is retried", st.ConnectRetries, st.ConnectFailures)
		}
	})

	t.Run("wrong password, not retried", func(t *testing.T) {
		db, cn := outageDB(t, c.PasswordDSN(c.Addr(), "not-the-password")+"&connect_retries=3")
		var ce *ConnectError
		if err := db.Ping(); !errors.As(err, &ce) || !ce.Permanent {
			t.Fatalf("want a permanent *ConnectError, got %v", err)
		}
		checkStats(t, Stats{}, cn.Stats(), statsWant{"ConnectFailures": exactly(1)})
	})
}

// TestStatsBreaker: the server stops; with breaker_failures=1 one failed
// connect opens the breaker (before the first working connection, a call
// counts once), which then rejects calls; the background prober closes it
// once the server is back, and counts its probes.
func TestStatsBreaker(t *testing.T) {
	const cooldown = 300 * time.Millisecond
	c := needCluster(t)

	t.Run("off", func(t *testing.T) {
		db, cn := outageDB(t, c.DSN()+"&breaker=off")
		if err := db.Ping(); err != nil {
			t.Fatal(err)
		}
		if s := cn.Stats().Breaker; s != BreakerDisabled {
			t.Errorf("Breaker = %v with breaker=off, want disabled", s)
		}
	})

	t.Run("server stopped", func(t *testing.T) {
		db, cn := outageDB(t, c.DSN()+"&breaker_failures=1&connect_retries=0&breaker_cooldown="+cooldown.String())
		if s := cn.Stats().Breaker; s != BreakerClosed {
			t.Fatalf("Breaker = %v before any call, want closed", s)
		}
		outageStop(t, c)

		// The pool never connected: the call waits for a database that may
		// be starting, within its deadline (1 s here), then fails, and
		// counts once.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := db.ExecContext(ctx, "select 1")
		cancel()
		if !IsDisconnect(err) || errors.Is(err, ErrCircuitOpen) {
			t.Fatalf("first call: want a connect failure, got %v", err)
		}
		tripped := cn.Stats()
		checkStats(t, Stats{}, tripped, statsWant{"ConnectFailures": atLeast(1), "ConnectRetries": atLeast(0), "BreakerTransitions": exactly(1),
			"Probes": atLeast(0), "ProbeFailures": atLeast(0)}) // the prober starts on the trip
		if tripped.Breaker != BreakerOpen && tripped.Breaker != BreakerHalfOpen {
			t.Errorf("Breaker = %v after the failure, want open", tripped.Breaker)
		}

		for i := range 3 {
			if err := outageSelect(db); !errors.Is(err, ErrCircuitOpen) {
				t.Fatalf("call %d while open: want ErrCircuitOpen, got %v", i+2, err)
			}
		}
		rejected := cn.Stats()
		checkStats(t, tripped, rejected, statsWant{"BreakerRejected": exactly(3), "Probes": atLeast(0), "ProbeFailures": atLeast(0)})
		if rejected.Breaker != BreakerOpen && rejected.Breaker != BreakerHalfOpen {
			t.Errorf("Breaker = %v while rejecting, want open", rejected.Breaker)
		}

		outageResume(t, c)
		// The background prober closes the breaker by itself once the
		// server is up; its connections are not Opened (they are closed at
		// once), and no user call is the probe.
		waitBreaker(t, cn, BreakerClosed)
		closed := cn.Stats()
		checkStats(t, rejected, closed, statsWant{"BreakerTransitions": exactly(1),
			"Probes": atLeast(1), "ProbeFailures": atLeast(0)})
		// One successful probe closes it; hedged probes under way then
		// (maxProbes at most) may succeed too.
		if ok := closed.Probes - closed.ProbeFailures; ok < 1 || ok > maxProbes {
			t.Errorf("Probes %d, ProbeFailures %d: want 1 to %d successful probes", closed.Probes, closed.ProbeFailures, maxProbes)
		}
		if closed.BreakerOpenDuration <= 0 || closed.BreakerOpenDuration > time.Minute {
			t.Errorf("BreakerOpenDuration %v", closed.BreakerOpenDuration)
		}
		if err := outageSelect(db); err != nil {
			t.Fatalf("after the probe closed the breaker: %v", err)
		}
		checkStats(t, closed, cn.Stats(), statsWant{"Opened": exactly(1)})
		if closed.Breaker != BreakerClosed {
			t.Errorf("Breaker = %v after the probe succeeded, want closed", closed.Breaker)
		}
	})
}
