package pgresilientprom_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgresilient/pgresilient"
	"github.com/pgresilient/pgresilient/faultproxy"
	"github.com/pgresilient/pgresilient/pgresilientprom"
	"github.com/pgresilient/pgresilient/pgtest"
)

// cluster is the throwaway PostgreSQL of the integration test, started by
// TestMain unless PGRESILIENT_SKIP_INTEGRATION=1.
var cluster *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m, &cluster)) }

// fakeSource returns fixed Stats and counts the snapshots taken.
type fakeSource struct {
	stats pgresilient.Stats
	calls atomic.Int64
}

func (f *fakeSource) Stats() pgresilient.Stats {
	f.calls.Add(1)
	return f.stats
}

// sample has a distinct value in every counter, so that two metrics swapped
// would show.
var sample = pgresilient.Stats{
	Opened:             11,
	Closed:             12,
	Discarded:          13 + 14 + 15 + 16 + 27,
	DiscardedLost:      13,
	DiscardedIdle:      14,
	DiscardedVerify:    15,
	DiscardedRollback:  16,
	DiscardedRole:      27,
	Verifications:      17,
	BadConnRetries:     18,
	ConnLost:           19,
	Invalidations:      20,
	ConnectFailures:    21,
	ConnectRetries:     22,
	AutoRollbacks:      23,
	PoolRollbacks:      24,
	Breaker:            pgresilient.BreakerOpen,
	BreakerTransitions: 25,
	BreakerRejected:    26,

	Probes:              28,
	ProbeFailures:       29,
	BreakerOpenDuration: 2500 * time.Millisecond,

	StaleStatementRetries: 30,
	CommitsNotCommitted:   31,
	ResolvedCommitted:     32,
	ResolvedAborted:       33,
	Unresolved:            34,
	Canceled:              35,
	HostChecks:            36,
	SilentServers:         37,
	NotYetWaits:           38,
	AttemptWaits:          39,
	ExecModeSwitches:      40,
}

// sampleText is sample's exposition.
const sampleText = `
# HELP pgresilient_not_yet_waits_total Statements PgBouncer refused before forwarding them (login failing, query_wait_timeout), held until it served again before database/sql's retry.
# TYPE pgresilient_not_yet_waits_total counter
pgresilient_not_yet_waits_total 38
# HELP pgresilient_connect_attempt_waits_total Connection attempts that waited for one of the Connector's slots (at most 8 attempts under way at once).
# TYPE pgresilient_connect_attempt_waits_total counter
pgresilient_connect_attempt_waits_total 39
# HELP pgresilient_exec_mode_switches_total Switches of new connections to default_query_exec_mode=exec after a transaction pooler refused pgx's cached statements (42P05, 26000): at most 1.
# TYPE pgresilient_exec_mode_switches_total counter
pgresilient_exec_mode_switches_total 40
# HELP pgresilient_commits_not_committed_total Commits that lost their connection but certainly did not commit (COMMIT never written, or refused before it ran): the caller got ErrNotCommitted.
# TYPE pgresilient_commits_not_committed_total counter
pgresilient_commits_not_committed_total 31
# HELP pgresilient_commits_resolved_committed_total Lost COMMITs that ResolveCommit (RunTx calls it) found committed on the primary: RunTx returned success without running the transaction again.
# TYPE pgresilient_commits_resolved_committed_total counter
pgresilient_commits_resolved_committed_total 32
# HELP pgresilient_commits_resolved_aborted_total Lost COMMITs that ResolveCommit found not committed: RunTx ran the transaction again.
# TYPE pgresilient_commits_resolved_aborted_total counter
pgresilient_commits_resolved_aborted_total 33
# HELP pgresilient_commits_unresolved_total Lost COMMITs whose outcome ResolveCommit could not learn (deadline, only a standby, an id possibly reused): the caller got ErrConnLost with the reason.
# TYPE pgresilient_commits_unresolved_total counter
pgresilient_commits_unresolved_total 34
# HELP pgresilient_statements_canceled_total Statements a deadline (query_timeout or the caller's) ended that the server canceled when asked: the caller got ErrCanceled, and the connection was kept.
# TYPE pgresilient_statements_canceled_total counter
pgresilient_statements_canceled_total 35
# HELP pgresilient_host_checks_total Checks of a server's address by the host monitor, started while statements waited on it past monitor_grace.
# TYPE pgresilient_host_checks_total counter
pgresilient_host_checks_total 36
# HELP pgresilient_silent_servers_total Servers the host monitor declared silent: the statements waiting on them ended with ErrConnLost.
# TYPE pgresilient_silent_servers_total counter
pgresilient_silent_servers_total 37
# HELP pgresilient_badconn_retries_total Failures returned to database/sql as driver.ErrBadConn because nothing had been sent: database/sql retried the operation on another connection.
# TYPE pgresilient_badconn_retries_total counter
pgresilient_badconn_retries_total 18
# HELP pgresilient_breaker_open_seconds_total Seconds the circuit breaker has spent open (calls refused), the current open period included.
# TYPE pgresilient_breaker_open_seconds_total counter
pgresilient_breaker_open_seconds_total 2.5
# HELP pgresilient_breaker_probe_failures_total Background probes that found the server still unreachable.
# TYPE pgresilient_breaker_probe_failures_total counter
pgresilient_breaker_probe_failures_total 29
# HELP pgresilient_breaker_probes_total Background probes of the server while the circuit breaker was open: a connection, startup included, closed again. The first that succeeds closes the breaker.
# TYPE pgresilient_breaker_probes_total counter
pgresilient_breaker_probes_total 28
# HELP pgresilient_breaker_rejected_total Calls failed at once with ErrCircuitOpen by the open circuit breaker, without dialling or sending anything.
# TYPE pgresilient_breaker_rejected_total counter
pgresilient_breaker_rejected_total 26
# HELP pgresilient_breaker_state Circuit breaker state: 1 for the current state, 0 for the others. Not exported with breaker=off.
# TYPE pgresilient_breaker_state gauge
pgresilient_breaker_state{state="closed"} 0
pgresilient_breaker_state{state="half-open"} 0
pgresilient_breaker_state{state="open"} 1
# HELP pgresilient_breaker_transitions_total Circuit breaker state changes.
# TYPE pgresilient_breaker_transitions_total counter
pgresilient_breaker_transitions_total 25
# HELP pgresilient_conn_lost_total Connections lost during an operation whose outcome is unknown, counted once each: the caller got ErrConnLost, and the statement or COMMIT may have reached the server.
# TYPE pgresilient_conn_lost_total counter
pgresilient_conn_lost_total 19
# HELP pgresilient_connect_failures_total Failed connection attempts, retried or not.
# TYPE pgresilient_connect_failures_total counter
pgresilient_connect_failures_total 21
# HELP pgresilient_connect_retries_total Connection attempts that were retries of a transient failure (connect_retries).
# TYPE pgresilient_connect_retries_total counter
pgresilient_connect_retries_total 22
# HELP pgresilient_connection_verifications_total Pooled connections pinged before reuse: on their first reuse, after over 1s idle, with unread bytes pending, or after a pool invalidation.
# TYPE pgresilient_connection_verifications_total counter
pgresilient_connection_verifications_total 17
# HELP pgresilient_connections_closed_total Connections closed: by database/sql (SetConnMaxLifetime, SetConnMaxIdleTime, SetMaxIdleConns, DB.Close) or after pgresilient discarded them.
# TYPE pgresilient_connections_closed_total counter
pgresilient_connections_closed_total 12
# HELP pgresilient_connections_discarded_total Connections pgresilient took out of use, each counted once, by reason: lost (broke during use), idle (seen closed or reset by the socket peek on reuse), verify (failed the ping before reuse: terminated by the server while idle, or a silent network), rollback (left inside a transaction block whose rollback failed), role (its server changed role: a demoted primary).
# TYPE pgresilient_connections_discarded_total counter
pgresilient_connections_discarded_total{reason="idle"} 14
pgresilient_connections_discarded_total{reason="lost"} 13
pgresilient_connections_discarded_total{reason="role"} 27
pgresilient_connections_discarded_total{reason="rollback"} 16
pgresilient_connections_discarded_total{reason="verify"} 15
# HELP pgresilient_connections_opened_total Connections opened to the server.
# TYPE pgresilient_connections_opened_total counter
pgresilient_connections_opened_total 11
# HELP pgresilient_pool_invalidations_total Pool invalidations: a connection learned that the server went away, so every pooled connection is verified before its next use.
# TYPE pgresilient_pool_invalidations_total counter
pgresilient_pool_invalidations_total 20
# HELP pgresilient_pool_rollbacks_total Connections returned to the pool inside a transaction block and rolled back on the way in.
# TYPE pgresilient_pool_rollbacks_total counter
pgresilient_pool_rollbacks_total 24
# HELP pgresilient_stale_statement_retries_total Statements refused as stale cached plans (0A000, 26000: a schema change) and run again on a fresh plan.
# TYPE pgresilient_stale_statement_retries_total counter
pgresilient_stale_statement_retries_total 30
# HELP pgresilient_tx_autorollbacks_total Transactions rolled back on the server as soon as one of their statements failed (tx_autorollback).
# TYPE pgresilient_tx_autorollbacks_total counter
pgresilient_tx_autorollbacks_total 23
`

func TestCollect(t *testing.T) {
	src := &fakeSource{stats: sample}
	c := pgresilientprom.NewCollector(src)
	if err := testutil.CollectAndCompare(c, strings.NewReader(sampleText)); err != nil {
		t.Error(err)
	}
	// CollectAndCompare registers the collector, which describes it, then
	// collects once.
	if n := src.calls.Load(); n != 1 {
		t.Errorf("one scrape took %d Stats snapshots, want 1", n)
	}
}

func TestBreakerState(t *testing.T) {
	const head = `
# HELP pgresilient_breaker_state Circuit breaker state: 1 for the current state, 0 for the others. Not exported with breaker=off.
# TYPE pgresilient_breaker_state gauge
`
	cases := []struct {
		state pgresilient.BreakerState
		want  string // the series, or none
	}{
		{pgresilient.BreakerClosed, head + `pgresilient_breaker_state{state="closed"} 1
pgresilient_breaker_state{state="half-open"} 0
pgresilient_breaker_state{state="open"} 0
`},
		{pgresilient.BreakerHalfOpen, head + `pgresilient_breaker_state{state="closed"} 0
pgresilient_breaker_state{state="half-open"} 1
pgresilient_breaker_state{state="open"} 0
`},
		{pgresilient.BreakerOpen, head + `pgresilient_breaker_state{state="closed"} 0
pgresilient_breaker_state{state="half-open"} 0
pgresilient_breaker_state{state="open"} 1
`},
		{pgresilient.BreakerDisabled, ""},
	}
	for _, tc := range cases {
		t.Run(tc.state.String(), func(t *testing.T) {
			st := sample
			st.Breaker = tc.state
			c := pgresilientprom.NewCollector(&fakeSource{stats: st})
			if err := testutil.CollectAndCompare(c, strings.NewReader(tc.want), "pgresilient_breaker_state"); err != nil {
				t.Error(err)
			}
			wantSeries := 3
			if tc.state == pgresilient.BreakerDisabled {
				wantSeries = 0
			}
			if n := testutil.CollectAndCount(c, "pgresilient_breaker_state"); n != wantSeries {
				t.Errorf("%d breaker_state series, want %d", n, wantSeries)
			}
		})
	}
}

func TestLint(t *testing.T) {
	for _, state := range []pgresilient.BreakerState{pgresilient.BreakerClosed, pgresilient.BreakerDisabled} {
		st := sample
		st.Breaker = state
		c := pgresilientprom.NewCollector(&fakeSource{stats: st}, pgresilientprom.WithConstLabels(prometheus.Labels{"db_name": "orders"}))
		problems, err := testutil.CollectAndLint(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("breaker %v: %s: %s", state, p.Metric, p.Text)
		}
	}
}

// TestRegistry: the collectors of two Connectors, told apart by a constant
// label, live in one registry; a second one with the same labels is refused.
func TestRegistry(t *testing.T) {
	orders, users := sample, sample
	orders.ConnLost, users.ConnLost = 1, 2
	users.Breaker = pgresilient.BreakerClosed
	reg := prometheus.NewPedanticRegistry()
	for name, st := range map[string]pgresilient.Stats{"orders": orders, "users": users} {
		c := pgresilientprom.NewCollector(&fakeSource{stats: st}, pgresilientprom.WithConstLabels(prometheus.Labels{"db_name": name}))
		if err := reg.Register(c); err != nil {
			t.Fatalf("register %s: %v", name, err)
		}
	}
	want := `
# HELP pgresilient_conn_lost_total Connections lost during an operation whose outcome is unknown, counted once each: the caller got ErrConnLost, and the statement or COMMIT may have reached the server.
# TYPE pgresilient_conn_lost_total counter
pgresilient_conn_lost_total{db_name="orders"} 1
pgresilient_conn_lost_total{db_name="users"} 2
# HELP pgresilient_breaker_state Circuit breaker state: 1 for the current state, 0 for the others. Not exported with breaker=off.
# TYPE pgresilient_breaker_state gauge
pgresilient_breaker_state{db_name="orders",state="closed"} 0
pgresilient_breaker_state{db_name="orders",state="half-open"} 0
pgresilient_breaker_state{db_name="orders",state="open"} 1
pgresilient_breaker_state{db_name="users",state="closed"} 1
pgresilient_breaker_state{db_name="users",state="half-open"} 0
pgresilient_breaker_state{db_name="users",state="open"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "pgresilient_conn_lost_total", "pgresilient_breaker_state"); err != nil {
		t.Error(err)
	}
	dup := pgresilientprom.NewCollector(&fakeSource{}, pgresilientprom.WithConstLabels(prometheus.Labels{"db_name": "orders"}))
	if err := reg.Register(dup); err == nil {
		t.Error("a second collector labelled db_name=orders was registered")
	}
}

func TestNamespace(t *testing.T) {
	cases := []struct{ ns, name string }{
		{"app", "app_conn_lost_total"},
		{"", "conn_lost_total"},
	}
	for _, tc := range cases {
		c := pgresilientprom.NewCollector(&fakeSource{stats: sample}, pgresilientprom.WithNamespace(tc.ns))
		if n := testutil.CollectAndCount(c, tc.name); n != 1 {
			t.Errorf("namespace %q: %d series named %s, want 1", tc.ns, n, tc.name)
		}
	}
}

// TestInvalidOptions: a constant label named like one of the Collector's
// variable labels is reported by Register, as client_golang does for its own
// collectors, not by a panic.
func TestInvalidOptions(t *testing.T) {
	cases := []struct {
		name string
		opt  pgresilientprom.Option
	}{
		{"reason", pgresilientprom.WithConstLabels(prometheus.Labels{"reason": "x"})},
		{"state", pgresilientprom.WithConstLabels(prometheus.Labels{"state": "x"})},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := pgresilientprom.NewCollector(&fakeSource{stats: sample}, tc.opt)
			if err := prometheus.NewPedanticRegistry().Register(c); err == nil {
				t.Error("registered")
			}
		})
	}
}

// wrappingConnector stands for an instrumenting wrapper of the driver, such
// as the one otelsql.Open puts between database/sql and pgresilient: the
// pool's driver is the wrapper's, so pgresilient.ConnectorOf cannot find the
// Connector beneath.
type wrappingConnector struct{ driver.Connector }

func (w wrappingConnector) Driver() driver.Driver { return wrappingDriver{w.Connector.Driver()} }

type wrappingDriver struct{ driver.Driver }

// TestNilSource: NewCollector refuses a nil source, typed or not, when it is
// called, rather than returning a Collector that fails every scrape. The
// typed one is what pgresilient.ConnectorOf returns, with false, for a pool
// opened through a wrapper of the driver.
func TestNilSource(t *testing.T) {
	cn, err := pgresilient.NewConnector("postgres://app@127.0.0.1:1/app")
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(wrappingConnector{cn})
	t.Cleanup(func() { db.Close() })
	wrapped, ok := pgresilient.ConnectorOf(db)
	if ok {
		t.Fatal("ConnectorOf found a Connector beneath a wrapping driver")
	}

	cases := []struct {
		name string
		src  pgresilientprom.Source
		want string // in the panic's message
	}{
		{"nil", nil, "nil Source"},
		{"nil Connector", (*pgresilient.Connector)(nil), "pgresilient.ConnectorOf"},
		{"ConnectorOf of a wrapped pool", wrapped, "pgresilient.ConnectorOf"},
		{"nil pointer", (*fakeSource)(nil), "nil Source (*pgresilientprom_test.fakeSource)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, r := newCollector(tc.src)
			if r == nil {
				reg := prometheus.NewRegistry()
				reg.MustRegister(c)
				_, err := reg.Gather()
				t.Fatalf("NewCollector(%T) did not panic; a scrape of its Collector returns: %v", tc.src, err)
			}
			if msg := fmt.Sprint(r); !strings.Contains(msg, tc.want) {
				t.Errorf("panic %q does not say %q", msg, tc.want)
			}
		})
	}
}

// newCollector calls NewCollector and returns what it panicked with, if it
// did.
func newCollector(src pgresilientprom.Source) (c *pgresilientprom.Collector, panicked any) {
	defer func() { panicked = recover() }()
	return pgresilientprom.NewCollector(src), nil
}

// scrape collects c once and returns every series' value by its name and
// labels, written as in the exposition: name{label="value",...}.
func scrape(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			slices.Sort(labels)
			key := mf.GetName()
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.GetCounter() != nil:
				out[key] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[key] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

// checkScrape compares a scrape with want: every series want names must
// have its value, every other series must be 0.
// anyPositive, as a value checkScrape wants, accepts any value above 0 (a
// duration that grows while it is scraped).
var anyPositive = math.Inf(1)

func checkScrape(t *testing.T, c prometheus.Collector, want map[string]float64) {
	t.Helper()
	got := scrape(t, c)
	for k, v := range want {
		if _, ok := got[k]; !ok {
			t.Errorf("no series %s; scraped: %v", k, got)
		} else if v == anyPositive {
			if got[k] <= 0 {
				t.Errorf("%s = %v, want > 0", k, got[k])
			}
		} else if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok && v != 0 {
			t.Errorf("%s = %v, want 0", k, v)
		}
	}
}

// TestRealFaults scrapes a real Connector while real faults happen: a
// connection reset after a statement was sent, then the server stopped.
func TestRealFaults(t *testing.T) {
	c := pgtest.Require(t, cluster)
	p, err := faultproxy.New(c.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	cn, err := pgresilient.NewConnector(c.DSNAt(p.Addr()) + "&breaker_failures=3&breaker_cooldown=1m&connect_retries=0")
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(cn)
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(1)
	coll := pgresilientprom.NewCollector(cn, pgresilientprom.WithConstLabels(prometheus.Labels{"db_name": "it"}))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	checkScrape(t, coll, map[string]float64{
		`pgresilient_connections_opened_total{db_name="it"}`:     1,
		`pgresilient_breaker_state{db_name="it",state="closed"}`: 1,
	})

	// Reset after the statement reached the server: outcome unknown.
	p.CutOn([]byte("prom_cut"), true)
	if _, err := db.ExecContext(ctx, "select 'prom_cut'"); !errors.Is(err, pgresilient.ErrConnLost) {
		t.Fatalf("want ErrConnLost, got %v", err)
	}
	checkScrape(t, coll, map[string]float64{
		`pgresilient_connections_opened_total{db_name="it"}`:                  1,
		`pgresilient_connection_verifications_total{db_name="it"}`:            1, // the first reuse
		`pgresilient_conn_lost_total{db_name="it"}`:                           1,
		`pgresilient_connections_discarded_total{db_name="it",reason="lost"}`: 1,
		`pgresilient_pool_invalidations_total{db_name="it"}`:                  1,
		`pgresilient_connections_closed_total{db_name="it"}`:                  1,
		`pgresilient_breaker_state{db_name="it",state="closed"}`:              1, // one failure of 2
	})

	// The server stops: two failed connects, after the reset, make the three
	// consecutive failures that open the breaker, which then rejects the
	// next call.
	t.Cleanup(func() {
		if !c.Running() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := c.Resume(ctx); err != nil {
				t.Errorf("start the cluster again: %v", err)
			}
		}
	})
	if err := c.Stop(context.Background(), pgtest.ModeFast); err != nil {
		t.Fatal(err)
	}
	// Every failed connection attempt counts now; the breaker opens once
	// three of them span the minimum (500ms): ping until it refuses.
	var pings int
	for pings = 1; ; pings++ {
		err := db.PingContext(ctx)
		if errors.Is(err, pgresilient.ErrCircuitOpen) {
			break
		}
		if !pgresilient.IsDisconnect(err) {
			t.Fatalf("ping %d with the server stopped: want a connect failure, got %v", pings, err)
		}
		if pings > 200 {
			t.Fatal("the breaker did not open after 200 failed pings")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Stop the prober (DB.Close would), so that the counts hold still.
	if err := cn.Close(); err != nil {
		t.Fatal(err)
	}
	st := cn.Stats()
	if st.Breaker != pgresilient.BreakerOpen || st.BreakerOpenDuration <= 0 {
		t.Fatalf("after Close: breaker %v, open for %v", st.Breaker, st.BreakerOpenDuration)
	}
	t.Logf("opened after %d pings; %d probes, %d failed", pings, st.Probes, st.ProbeFailures)
	checkScrape(t, coll, map[string]float64{
		`pgresilient_connections_opened_total{db_name="it"}`:                  1,
		`pgresilient_connection_verifications_total{db_name="it"}`:            1,
		`pgresilient_conn_lost_total{db_name="it"}`:                           1,
		`pgresilient_connections_discarded_total{db_name="it",reason="lost"}`: 1,
		`pgresilient_pool_invalidations_total{db_name="it"}`:                  1,
		`pgresilient_connections_closed_total{db_name="it"}`:                  1,
		`pgresilient_connect_failures_total{db_name="it"}`:                    float64(st.ConnectFailures),
		// Retries of the refused attempts within the pings' deadline (a
		// proxy's accept-then-close is retried soon: wait.go), however many.
		`pgresilient_connect_retries_total{db_name="it"}`:        float64(st.ConnectRetries),
		`pgresilient_connect_attempt_waits_total{db_name="it"}`:  float64(st.AttemptWaits),
		`pgresilient_breaker_state{db_name="it",state="open"}`:   1,
		`pgresilient_breaker_transitions_total{db_name="it"}`:    1,
		`pgresilient_breaker_rejected_total{db_name="it"}`:       float64(st.BreakerRejected),
		`pgresilient_breaker_probes_total{db_name="it"}`:         float64(st.Probes),
		`pgresilient_breaker_probe_failures_total{db_name="it"}`: float64(st.ProbeFailures),
		`pgresilient_breaker_open_seconds_total{db_name="it"}`:   anyPositive, // still open: it grows
	})
}

// TestEveryStatsCounter: every int64 field of pgresilient.Stats but the
// computed Discarded reaches a metric: sample gives each a distinct value, and
// that value must appear in sampleText. A counter added to Stats without a
// metric (four were, the day they were added) fails here.
func TestEveryStatsCounter(t *testing.T) {
	v := reflect.ValueOf(sample)
	for i := range v.NumField() {
		f := v.Type().Field(i)
		if f.Type.Kind() != reflect.Int64 || f.Name == "Discarded" || f.Type != reflect.TypeFor[int64]() {
			continue
		}
		n := v.Field(i).Int()
		if n == 0 {
			t.Errorf("sample leaves Stats.%s at 0: give it a distinct value and a metric", f.Name)
			continue
		}
		if !strings.Contains(sampleText, " "+strconv.FormatInt(n, 10)+"\n") {
			t.Errorf("Stats.%s (%d in sample) reaches no metric of sampleText", f.Name, n)
		}
	}
}
