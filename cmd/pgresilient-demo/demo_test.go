package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgresilient/pgresilient"
	"github.com/pgresilient/pgresilient/pgtest"
)

// shortConfig is the demo with phases short enough for the test suite.
func shortConfig(t *testing.T) *config {
	t.Helper()
	if pgtest.SkipRequested() {
		t.Skip(pgtest.SkipEnv + "=1")
	}
	cfg := defaultConfig()
	cfg.baseline = time.Second
	cfg.outage = 1500 * time.Millisecond
	cfg.observe = 2 * time.Second
	cfg.report = filepath.Join(t.TempDir(), "report.html")
	return &cfg
}

// runDemo runs the demo in-process and returns its results and output. When
// the PostgreSQL binaries are missing the error says how to install them.
func runDemo(t *testing.T, cfg *config) (*results, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	res, err := run(ctx, cfg, &out)
	if err != nil {
		t.Fatalf("the demo failed: %v\noutput:\n%s", err, out.String())
	}
	t.Logf("output:\n%s", out.String())
	return res, out.String()
}

// TestDemo runs the whole fault script against a throwaway cluster.
func TestDemo(t *testing.T) {
	cfg := shortConfig(t)
	res, out := runDemo(t, cfg)

	checkResults(t, res, phaseNames(phaseDefs))
	checkFailover(t, res)
	checkReport(t, cfg.report)
	checkWidth(t, out)
}

// checkFailover asserts that phase "failover" stopped the primary and
// promoted the standby, that pgresilient neither duplicated nor lost a
// transfer in it (synchronous replication: an acknowledged commit is on the
// new primary), and that both pools served again on the new primary.
func checkFailover(t *testing.T, res *results) {
	t.Helper()
	seen := 0
	for _, rw := range res.rows {
		if rw.run.def.name != "failover" {
			continue
		}
		seen++
		r := rw.run
		if r.down == 0 || r.promoted < r.down {
			t.Errorf("failover: primary down at %v, promoted at %v", r.down, r.promoted)
		}
		t.Logf("failover, %s: %d ok, %d errors %v, %d duplicated, %d lost; served again %v after the promotion (%v)",
			rw.pool, rw.ok, rw.errs, rw.kinds, rw.dup, rw.lost, rw.served-r.promoted, rw.hasServed)
		if rw.pool == pgresilient.DriverName && (rw.dup != 0 || rw.lost != 0) {
			t.Errorf("pgresilient, failover: %d duplicated and %d lost transfers, want none", rw.dup, rw.lost)
		}
		if !rw.hasServed {
			t.Errorf("%s, failover: no transfer acknowledged by the new primary", rw.pool)
		}
	}
	if seen != 2 {
		t.Errorf("failover: %d rows, want one per pool", seen)
	}
}

// checkWidth asserts that the output fits an 80-column terminal.
func checkWidth(t *testing.T, out string) {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if n := len([]rune(line)); n > 79 {
			t.Errorf("output line of %d columns, want at most 79: %q", n, line)
		}
	}
}

// TestDemoDSN runs the demo against an existing server given with -dsn: the
// faults that need control of the server are skipped, and the demo's tables
// are gone afterwards.
func TestDemoDSN(t *testing.T) {
	cfg := shortConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := pgtest.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cl.Close(); err != nil {
			t.Error(err)
		}
	}()
	if err := cl.Exec(ctx, "create table someone_elses (id int); insert into someone_elses values (1)"); err != nil {
		t.Fatal(err)
	}
	// Keyword/value form, default sslmode (prefer: pgx adds a fallback).
	cfg.dsn = fmt.Sprintf("host=%s port=%d user=%s dbname=%s", cl.Host(), cl.Port(), pgtest.Superuser, pgtest.Database)
	res, out := runDemo(t, cfg)

	var want []string
	for _, def := range phaseDefs {
		if def.needs != needServer {
			want = append(want, def.name)
		}
	}
	checkResults(t, res, want)
	checkReport(t, cfg.report)
	checkWidth(t, out)
	if !strings.Contains(out, "skipped: needs control of the server") {
		t.Error("the output does not say which phases were skipped and why")
	}
	tables, err := pgtest.QueryValue[int](ctx, cl, "select count(*)::int from pg_tables where tablename like 'demo\\_%'")
	if err != nil {
		t.Fatal(err)
	}
	if tables != 0 {
		t.Errorf("%d demo tables left on the server", tables)
	}
	if n, err := pgtest.QueryValue[int](ctx, cl, "select count(*)::int from someone_elses"); err != nil || n != 1 {
		t.Errorf("another table was touched: %d rows, %v", n, err)
	}
}

func phaseNames(defs []*phaseDef) []string {
	var names []string
	for _, d := range defs {
		names = append(names, d.name)
	}
	return names
}

// checkResults asserts what must hold whatever the timing: a row per phase
// and pool, and pgresilient never duplicating nor losing a transfer.
func checkResults(t *testing.T, res *results, phases []string) {
	t.Helper()
	got := map[string]map[string]row{}
	for _, rw := range res.rows {
		if got[rw.run.def.name] == nil {
			got[rw.run.def.name] = map[string]row{}
		}
		got[rw.run.def.name][rw.pool] = rw
	}
	if len(got) != len(phases) {
		t.Errorf("%d phases in the results, want %d (%v)", len(got), len(phases), phases)
	}
	for _, ph := range phases {
		for _, pool := range []string{"pgx", pgresilient.DriverName} {
			rw, ok := got[ph][pool]
			if !ok {
				t.Errorf("no row for phase %s, pool %s", ph, pool)
				continue
			}
			if pool == pgresilient.DriverName && (rw.dup != 0 || rw.lost != 0) {
				t.Errorf("pgresilient, phase %s: %d duplicated and %d lost transfers, want none", ph, rw.dup, rw.lost)
			}
		}
	}
	for _, pool := range []string{"pgx", pgresilient.DriverName} {
		if rw := got["baseline"][pool]; rw.ok == 0 || rw.errs != 0 {
			t.Errorf("%s baseline: %d ok, %d errors; want some ok and no error", pool, rw.ok, rw.errs)
		}
	}
	for _, p := range res.pools {
		t.Logf("%s: %d ok, %d errors, %d duplicated, %d lost, %d failed yet committed",
			p.name, p.ok, p.errs, p.dup, p.lost, p.unknown)
		if p.name != pgresilient.DriverName {
			continue
		}
		if p.money != p.want || p.mismatched != 0 || p.orphans != 0 {
			t.Errorf("pgresilient ledger: money %d (want %d), %d accounts disagreeing with the transfers, %d orphan rows",
				p.money, p.want, p.mismatched, p.orphans)
		}
		if p.poisoned != 0 {
			t.Errorf("pgresilient: %d transfers failed with 25P02", p.poisoned)
		}
	}
}

var externalRef = regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?\s*(https?:)?//|url\(\s*["']?\s*(https?:)?//|@import|<link|<script`)

// checkReport asserts that the report exists, has a chart per pool as inline
// SVG, and refers to nothing outside itself.
func checkReport(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	html := string(b)
	for _, pool := range []string{"pgx", pgresilient.DriverName} {
		i := strings.Index(html, `<div class="chart" id="chart-`+pool+`">`)
		if i < 0 || !strings.HasPrefix(strings.TrimSpace(html[i+len(`<div class="chart" id="chart-`+pool+`">`):]), "<svg") {
			t.Errorf("the report has no inline SVG chart for %s", pool)
		}
	}
	if n := strings.Count(html, "<svg"); n != 2 {
		t.Errorf("%d SVG documents in the report, want 2", n)
	}
	if m := externalRef.FindString(html); m != "" {
		t.Errorf("the report refers to something outside itself: %q", m)
	}
	if !strings.Contains(html, "money conserved") {
		t.Error("the report has no results table")
	}
}

func TestWithParams(t *testing.T) {
	tests := []struct {
		name, dsn, host string
		port            int
		params          []string
		want            string
	}{
		{"url, address and params", "postgres://u@db:5432/app?sslmode=disable", "127.0.0.1", 6000,
			[]string{"application_name", "x"}, "postgres://u@127.0.0.1:6000/app?application_name=x&sslmode=disable"},
		{"url, host in the query", "postgres://u@/app?host=db&port=5", "127.0.0.1", 6000,
			nil, "postgres://u@127.0.0.1:6000/app"},
		{"url, params only", "postgresql://u@db/app", "", 0,
			[]string{"query_timeout", "1s"}, "postgresql://u@db/app?query_timeout=1s"},
		{"keyword/value", "host=db user=u", "127.0.0.1", 6000,
			[]string{"application_name", "it's"}, `host=db user=u host=127.0.0.1 port=6000 application_name='it\'s'`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := withParams(tt.dsn, tt.host, tt.port, tt.params)
			if err != nil || got != tt.want {
				t.Errorf("withParams = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestWithStandby(t *testing.T) {
	got, err := withStandby("postgres://postgres@127.0.0.1:5000/postgres?sslmode=disable", "127.0.0.1:6000")
	want := "postgres://postgres@127.0.0.1:5000,127.0.0.1:6000/postgres?sslmode=disable&target_session_attrs=read-write"
	if err != nil || got != want {
		t.Fatalf("withStandby = %q, %v; want %q", got, err, want)
	}
	cfg, err := pgconn.ParseConfig(got)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Port != 5000 || len(cfg.Fallbacks) != 1 || cfg.Fallbacks[0].Port != 6000 {
		t.Errorf("pgx reads %d, then %d fallbacks; want 5000 then 6000", cfg.Port, len(cfg.Fallbacks))
	}
	if _, err := withStandby("host=db", "127.0.0.1:6000"); err == nil {
		t.Error("withStandby accepted a keyword/value DSN")
	}
}

// TestMeasure checks the definitions of the table's columns on made-up
// attempts.
func TestMeasure(t *testing.T) {
	ms := time.Millisecond
	r := &phaseRun{def: &phaseDef{name: "restart"}, idx: 1, start: 1000 * ms, faultStart: 1000 * ms, end: 4000 * ms}
	atts := []attempt{
		{start: 1000 * ms, end: 1010 * ms, req: 1, kind: kindOK},      // acknowledged, present once
		{start: 1010 * ms, end: 1020 * ms, req: 2, kind: kindOK},      // acknowledged, present twice: duplicated
		{start: 1020 * ms, end: 1030 * ms, req: 3, kind: kindOK},      // acknowledged, absent: lost
		{start: 1030 * ms, end: 1230 * ms, req: 4, kind: kindLost},    // failed after 200ms, yet committed
		{start: 1240 * ms, end: 1250 * ms, req: 5, kind: kindDisconn}, // failed after 10ms, absent
	}
	rows := map[int64]int{1: 1, 2: 2, 4: 1}
	nb := 40
	okB, errB := make([]int, nb), make([]int, nb)
	for b := range nb {
		okB[b] = 1
	}
	errB[12] = 2 // failures in [1.2s, 1.3s): recovered from 1.3s on
	rw := measure(r, "x", atts, rows, okB, errB)
	if rw.ok != 3 || rw.errs != 2 || rw.dup != 1 || rw.lost != 1 || rw.unknown != 1 {
		t.Errorf("ok %d errs %d dup %d lost %d unknown %d; want 3 2 1 1 1", rw.ok, rw.errs, rw.dup, rw.lost, rw.unknown)
	}
	if rw.kinds[kindLost] != 1 || rw.kinds[kindDisconn] != 1 {
		t.Errorf("kinds %v", rw.kinds)
	}
	if rw.p50 != 10*ms || rw.p99 != 200*ms {
		t.Errorf("p50 %v p99 %v, want 10ms 200ms", rw.p50, rw.p99)
	}
	if !rw.recovered || rw.recovery != 300*ms {
		t.Errorf("recovered %v after %v, want 300ms", rw.recovered, rw.recovery)
	}
	for b := 12; b < nb; b += 5 { // an error every half second: never recovered
		errB[b] = 1
	}
	rw = measure(r, "x", atts, rows, okB, errB)
	if rw.recovered {
		t.Errorf("recovered after %v, want never", rw.recovery)
	}
	if rw.hasServed {
		t.Error("served again measured in a phase without a stopped primary")
	}
	// Phase "failover": the first acknowledged transfer begun once the
	// primary was down.
	r.down = 1025 * ms
	rw = measure(r, "x", atts, rows, okB, errB)
	if rw.hasServed {
		t.Errorf("served again at %v, want never: no success began after the stop", rw.served)
	}
	r.down = 1005 * ms
	rw = measure(r, "x", atts, rows, okB, errB)
	if !rw.hasServed || rw.served != 1020*ms {
		t.Errorf("served again at %v (%v), want 1.02s", rw.served, rw.hasServed)
	}
}

func TestNoProxyReason(t *testing.T) {
	tests := []struct {
		dsn   string
		proxy bool
	}{
		{"host=127.0.0.1 port=5432", true},
		{"host=127.0.0.1 sslmode=disable", true},
		{"host=localhost", true},
		{"postgres://u@[::1]:5432/db", true},
		{"host=10.1.2.3", false},
		{"host=db.internal", false},
		{"host=/var/run/postgresql", false},
		{"host=127.0.0.1,127.0.0.2", false},
	}
	for _, tt := range tests {
		t.Run(tt.dsn, func(t *testing.T) {
			cc, err := pgconn.ParseConfig(tt.dsn)
			if err != nil {
				t.Fatal(err)
			}
			if why := noProxyReason(cc); (why == "") != tt.proxy {
				t.Errorf("noProxyReason = %q, want a proxy: %v", why, tt.proxy)
			}
		})
	}
}

// TestDemoNoBinaries: without the PostgreSQL binaries the demo stops at once
// and says how to install them.
func TestDemoNoBinaries(t *testing.T) {
	t.Setenv(pgtest.BinDirEnv, t.TempDir())
	cfg := defaultConfig()
	var out bytes.Buffer
	_, err := run(context.Background(), &cfg, &out)
	if err == nil || !strings.Contains(err.Error(), "apt-get install postgresql") || !strings.Contains(err.Error(), "-dsn") {
		t.Fatalf("want an error saying how to install PostgreSQL or use -dsn, got %v", err)
	}
}
