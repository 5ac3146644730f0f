package pgresilient

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgresilient/pgresilient/pgtest"
)

// TestRunTxSoak is issue 23's done-when soak: two-statement transactions
// through RunTx while the primary's connections are cut (the fault proxy's
// reset), its backends terminated (pg_terminate_backend) and the primary
// restarted (fast) every 2 s; then it is stopped (immediate) and its
// synchronous standby promoted. Side by side, at the same time, the loop an
// application writes over raw pgx: BeginTx, the same two inserts, Commit,
// no retry. Both pools use one multi-host DSN (the proxy, then the standby;
// target_session_attrs=read-write).
//
// Each transaction inserts a client-side id never used again into each of
// two tables without a unique constraint, under a 2 s deadline. Afterwards
// the tables are read on the promoted standby, and for pgresilient:
//
//   - every success is in both tables exactly once;
//   - every other error but CommitUnknown (RunTxError's word: no attempt
//     committed) leaves its id in neither table;
//   - nothing is there twice, or in one table only;
//   - a CommitUnknown is allowed only when no server could answer before
//     the deadline: the lookup says no server answered (or only a standby,
//     or no time was left; or, while every COMMIT waited for the
//     synchronous standby, still in progress), and the transaction ended
//     while the primary was down or COMMITs waited for the standby, or
//     less than soakSlack after. Anything else is a failure.
//
// For raw pgx it counts the ambiguous COMMITs (an error that is not the
// server's ERROR) and how many of them had committed: the MEASURE line.
//
// The standby keeps PostgreSQL's wal_retrieve_retry_interval (5 s): after a
// restart of the primary it streams again only that late, and meanwhile
// every COMMIT waits for it. The failover comes while it has not yet
// streamed again after the last restart (soakFailover), as when a primary
// dies soon after a restart.
//
// Run it alone with
//
//	go test -race -count=1 -run TestRunTxSoak -v .
func TestRunTxSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two servers and runs for about 20 s")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The bed: a primary, a synchronous standby, a proxy in front of the
	// primary (the standby replicates directly, so a cut hits clients only).
	p := pgtest.NewT(t)
	s, err := pgtest.StartStandby(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	// Synchronous after the standby's copy, so that the standby, once
	// promoted, does not wait for a standby of its own.
	if err := p.SetSynchronous(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitStreaming(ctx, 1); err != nil {
		t.Fatal(err)
	}
	proxy := newProxy(t, p)
	dsn := fmt.Sprintf("postgres://%s@%s,%s/%s?sslmode=disable&target_session_attrs=read-write",
		pgtest.Superuser, proxy.Addr(), s.Addr(), pgtest.Database)

	drv := make([]*soakDriver, len(drivers))
	setup := ""
	for i, name := range drivers {
		short := strings.ReplaceAll(name, DriverName, "pgr")
		d := &soakDriver{name: name, ta: "soak_a_" + short, tb: "soak_b_" + short, base: int64(i+1) << 48}
		setup += fmt.Sprintf("create table %s (id bigint not null); create table %s (id bigint not null);", d.ta, d.tb)
		drv[i] = d
	}
	if err := p.Exec(ctx, setup); err != nil {
		t.Fatal(err)
	}
	for _, d := range drv {
		d.db = openDB(t, d.name, dsn)
		warmPool(t, d.db, soakWorkers)
	}

	// The workers, stopped by halt also when the test fails on the way.
	stop := make(chan struct{})
	var stopOnce sync.Once
	var wg sync.WaitGroup
	halt := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	defer halt()
	for _, d := range drv {
		for w := range soakWorkers {
			wg.Go(func() { d.work(stop, int64(w)) })
		}
	}

	// The faults, on a fixed schedule from the start of the traffic.
	var out soakOutages
	var bg sync.WaitGroup // the waits for the standby after a restart
	defer bg.Wait()
	// The failover ends those waits: the old primary is gone.
	stallCtx, endStalls := context.WithCancel(ctx)
	defer endStalls()
	began := time.Now()
	restart := func() error {
		from := time.Now()
		if err := p.Restart(context.Background(), pgtest.ModeFast); err != nil {
			return err
		}
		back := time.Now()
		out.add("restart", soakDown, from, back)
		// Until the synchronous standby streams again (it retries every
		// wal_retrieve_retry_interval, 5 s by default), every COMMIT waits
		// for it: the server answers, but no COMMIT completes, and a lost
		// one is still in progress.
		bg.Go(func() {
			err := p.WaitStreaming(stallCtx, 1)
			end := time.Now()
			out.add("restart", soakStall, back, end)
			if err != nil {
				out.note("restart at %v: the synchronous standby did not stream again before the failover, %v after the primary accepted connections",
					from.Sub(began).Round(time.Millisecond), end.Sub(back).Round(time.Millisecond))
				return
			}
			out.note("restart at %v: the synchronous standby streamed again %v after the primary accepted connections",
				from.Sub(began).Round(time.Millisecond), end.Sub(back).Round(time.Millisecond))
		})
		return nil
	}
	cut := func() error { proxy.Cut(); return nil }
	terminate := func() error {
		n, err := p.TerminateBackends(ctx)
		out.note("terminate: %d backends", n)
		return err
	}
	faults := []struct {
		name string
		do   func() error
	}{
		{"cut", cut}, {"terminate", terminate}, {"restart", restart},
		{"cut", cut}, {"terminate", terminate}, {"restart", restart},
	}
	for i, f := range faults {
		time.Sleep(time.Until(began.Add(soakSteady + time.Duration(i)*soakEvery)))
		at := time.Now()
		if err := f.do(); err != nil {
			t.Fatalf("fault %s: %v", f.name, err)
		}
		out.note("%s at %v, took %v", f.name, at.Sub(began).Round(time.Millisecond), time.Since(at).Round(time.Millisecond))
	}
	time.Sleep(time.Until(began.Add(soakSteady + time.Duration(len(faults)-1)*soakEvery + soakFailover)))
	from := time.Now()
	endStalls()
	if err := p.Stop(context.Background(), pgtest.ModeImmediate); err != nil {
		t.Fatal(err)
	}
	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()
	out.add("failover", soakDown, from, promoted)
	out.note("failover at %v: primary stopped (immediate), standby promoted %v later",
		from.Sub(began).Round(time.Millisecond), promoted.Sub(from).Round(time.Millisecond))
	time.Sleep(soakAfter)
	halt()
	bg.Wait()
	for _, n := range out.notes {
		t.Log(n)
	}
	// The old primary's own word on COMMITs whose wait for the standby a
	// cancel ended: committed there, perhaps not on the standby.
	if text, err := os.ReadFile(p.LogFile()); err == nil {
		for _, l := range strings.Split(string(text), "\n") {
			if strings.Contains(l, "canceling wait for synchronous replication") {
				out.syncCanceled = append(out.syncCanceled, l)
			}
		}
	}

	// Read both tables of each driver on the new primary.
	if ok, err := s.IsPrimary(ctx); err != nil || !ok {
		t.Fatalf("the promoted standby is not a primary: %v, %v", ok, err)
	}
	res := map[string]soakResult{}
	for _, d := range drv {
		a, b := soakCounts(ctx, t, s, d.ta), soakCounts(ctx, t, s, d.tb)
		res[d.name] = d.check(t, a, b, &out, began)
	}
	sideBySide(t, func(t *testing.T, name string) {
		r := res[name]
		for _, l := range r.logs {
			t.Log(l)
		}
		if name != DriverName {
			for _, e := range r.errs {
				t.Log("not pgresilient's: " + e)
			}
			return
		}
		for _, e := range r.errs {
			t.Error(e)
		}
		// A soak that met no fault proves nothing: some attempt must have
		// been run again, or have failed, or have had its COMMIT looked up.
		st := r.stats
		if hit := r.attempts - r.txs + r.failed + int(st.ResolvedCommitted+st.ResolvedAborted+st.Unresolved); r.txs < 200 || hit == 0 {
			t.Errorf("pgresilient: %d transactions, %d attempts, %d failed, no COMMIT looked up: the faults did not hit the traffic", r.txs, r.attempts, r.failed)
		}
	})
	g, x := res[DriverName], res["pgx"]
	st := g.stats
	t.Logf("MEASURE RunTx soak (8 workers per driver, two inserts each, 2 s deadlines; cut, terminate, restart every 2 s, then the synchronous standby promoted): "+
		"raw pgx: %d transactions, %d committed, %d failed, %d ambiguous COMMITs (%d of them had committed), %d twice, %d acknowledged lost; "+
		"pgresilient RunTx: %d transactions (%d runs of fn), %d committed, %d failed and not committed, %d unknown (%d while no server answered, %d other), %d twice, %d acknowledged lost; "+
		"lost COMMITs asked: %d committed, %d aborted, %d unresolved",
		x.txs, x.ok, x.failed, x.unknown, x.unknownCommitted, x.twice, x.lost,
		g.txs, g.attempts, g.ok, g.failed-g.unknown, g.unknown, g.excused, g.unknown-g.excused, g.twice, g.lost,
		st.ResolvedCommitted, st.ResolvedAborted, st.Unresolved)
}

const (
	soakWorkers  = 8                     // concurrent transactions per driver
	soakDeadline = 2 * time.Second       // each transaction's deadline
	soakPause    = 20 * time.Millisecond // a worker's pause after a failure, as an application's loop would
	soakSteady   = time.Second           // traffic before the first fault
	soakEvery    = 2 * time.Second       // between two faults
	soakAfter    = 3 * time.Second       // traffic after the promotion
	soakBound    = time.Second           // no transaction ends later than its deadline and this
	// soakFailover is the time from the last restart to the failover:
	// past a transaction's deadline, so that transactions begun once the
	// primary is back reach their deadline while their COMMIT waits for the
	// synchronous standby, which has not streamed again yet.
	soakFailover = soakEvery + soakEvery/4
	// soakSlack is how long after the primary answered again an unknown
	// outcome still counts as the outage's: RunTx's lookup waits up to
	// resolveBackoffMax between tries and does not start a wait its
	// deadline would cut, and the breaker's probe (at most probeDemandMax apart while
	// calls wait) must find the server first.
	soakSlack = resolveBackoffMax + 100*time.Millisecond
)

// soakOutcome is what a transaction's caller was told.
type soakOutcome uint8

const (
	soakOK           soakOutcome = iota
	soakNotCommitted             // failed, and did not commit: RunTx's word, or raw pgx failing before COMMIT or the server refusing it
	soakUnknown                  // RunTx's CommitUnknown; raw pgx's COMMIT lost without the server's answer
)

// soakTx is one transaction, as its caller saw it.
type soakTx struct {
	id         int64
	start, end time.Time
	outcome    soakOutcome
	err        error
	reason     string // an unknown outcome: the UnresolvedError's reason
}

// soakDriver is one driver's workers and what they saw.
type soakDriver struct {
	name   string
	db     *sql.DB
	ta, tb string
	base   int64 // ids are base + worker<<32 + n

	mu       sync.Mutex
	txs      []soakTx
	attempts int // RunTx's calls of fn
}

// work runs transactions with fresh ids until stop is closed.
func (d *soakDriver) work(stop <-chan struct{}, w int64) {
	for n := int64(0); ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		tx := soakTx{id: d.base + w<<32 + n, start: time.Now()}
		ctx, cancel := context.WithTimeout(context.Background(), soakDeadline)
		if d.name == DriverName {
			d.runTx(ctx, &tx)
		} else {
			d.naive(ctx, &tx)
		}
		cancel()
		tx.end = time.Now()
		d.mu.Lock()
		d.txs = append(d.txs, tx)
		d.mu.Unlock()
		if tx.err != nil {
			time.Sleep(soakPause)
		}
	}
}

// runTx is the transaction through RunTx.
func (d *soakDriver) runTx(ctx context.Context, tx *soakTx) {
	tx.err = RunTx(ctx, d.db, nil, func(ctx context.Context, sqlTx *sql.Tx) error {
		d.mu.Lock()
		d.attempts++
		d.mu.Unlock()
		if _, err := sqlTx.ExecContext(ctx, "insert into "+d.ta+" values ($1)", tx.id); err != nil {
			return err
		}
		_, err := sqlTx.ExecContext(ctx, "insert into "+d.tb+" values ($1)", tx.id)
		return err
	})
	var re *RunTxError
	var ue *UnresolvedError
	switch {
	case tx.err == nil:
		tx.outcome = soakOK
	case errors.As(tx.err, &re) && re.CommitUnknown:
		tx.outcome, tx.reason = soakUnknown, "not asked"
		if errors.As(tx.err, &ue) {
			tx.reason = ue.Reason
		}
	case errors.Is(tx.err, ErrConnLost) && re == nil:
		// Not RunTx's documented shape of a lost connection: the caller
		// can only read it as unknown.
		tx.outcome, tx.reason = soakUnknown, "ErrConnLost outside a RunTxError"
	default:
		// Every other error of RunTx, a RunTxError without CommitUnknown
		// included (even one matching ErrConnLost), says that no attempt
		// committed.
		tx.outcome = soakNotCommitted
	}
}

// naive is the transaction as an application writes it over raw pgx.
func (d *soakDriver) naive(ctx context.Context, tx *soakTx) {
	sqlTx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		tx.err, tx.outcome = err, soakNotCommitted
		return
	}
	if _, err = sqlTx.ExecContext(ctx, "insert into "+d.ta+" values ($1)", tx.id); err == nil {
		_, err = sqlTx.ExecContext(ctx, "insert into "+d.tb+" values ($1)", tx.id)
	}
	if err != nil {
		_ = sqlTx.Rollback()
		tx.err, tx.outcome = err, soakNotCommitted // no COMMIT was sent
		return
	}
	tx.err = sqlTx.Commit()
	switch {
	case tx.err == nil:
		tx.outcome = soakOK
	case soakServerRefused(tx.err):
		tx.outcome = soakNotCommitted
	default:
		tx.outcome = soakUnknown
	}
}

// soakServerRefused reports whether a raw pgx COMMIT error is the server's
// answer that it rolled back: an ERROR (not a FATAL, which may follow a
// commit), or a COMMIT answered with ROLLBACK.
func soakServerRefused(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.SeverityUnlocalized == "ERROR" || errors.Is(err, pgx.ErrTxCommitRollback)
}

// soakOutages records when the primary was down, and what the faults did.
type soakOutages struct {
	mu    sync.Mutex
	spans []soakSpan
	notes []string
	// syncCanceled are the old primary's log lines of COMMITs whose wait
	// for the synchronous standby a cancel ended.
	syncCanceled []string
}

// soakSpan is a time when no server could say whether a COMMIT committed.
type soakSpan struct {
	what     string
	kind     soakSpanKind
	from, to time.Time
}

type soakSpanKind uint8

const (
	soakDown  soakSpanKind = iota // no primary accepted connections: from the fault's start until one did
	soakStall                     // the primary answered, but every COMMIT waited for the synchronous standby
)

func (o *soakOutages) add(what string, kind soakSpanKind, from, to time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.spans = append(o.spans, soakSpan{what, kind, from, to})
}

func (o *soakOutages) note(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.notes = append(o.notes, fmt.Sprintf(format, args...))
}

// excuse names the outage that excuses tx's unknown outcome, or "": no
// server could answer before its deadline. The lookup must have said so (no
// server answered, only a standby, no time left to ask; while COMMITs waited
// for the synchronous standby, also still in progress), and tx must have
// ended during the outage, or less than soakSlack after it.
func (o *soakOutages) excuse(tx soakTx, began time.Time) string {
	unreachable := tx.reason == reasonUnreachable || tx.reason == reasonStandby || strings.HasPrefix(tx.reason, "no time left")
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, sp := range o.spans {
		// While the synchronous standby streams no WAL, a COMMIT cannot be
		// confirmed: "in progress" (still waiting) and "committed on the
		// primary, not confirmed by the standby" (the wait cut short) are
		// the truth, not a failure to ask.
		stalled := tx.reason == reasonInProgress || tx.reason == reasonUnreplicated
		if !unreachable && (sp.kind != soakStall || !stalled) {
			continue
		}
		if tx.end.Before(sp.from) || !tx.end.Before(sp.to.Add(soakSlack)) {
			continue
		}
		what := "the primary down"
		if sp.kind == soakStall {
			what = "COMMITs waiting for the synchronous standby"
		}
		return fmt.Sprintf("%s at %v, %s until %v",
			sp.what, sp.from.Sub(began).Round(time.Millisecond), what, sp.to.Sub(began).Round(time.Millisecond))
	}
	return ""
}

// soakResult is one driver's figures, the failures found (pgresilient's
// are errors of the test) and the lines to log.
type soakResult struct {
	txs, attempts, ok, failed, unknown, unknownCommitted, excused int
	twice, lost, partial, stray                                   int
	stats                                                         Stats
	errs, logs                                                    []string
}

// soakCounts returns how many rows each id has in table.
func soakCounts(ctx context.Context, t *testing.T, c *pgtest.Cluster, table string) map[int64]int {
	t.Helper()
	counts := map[int64]int{}
	err := c.WithConn(ctx, func(conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, "select id, count(*)::int from "+table+" group by id")
		if err != nil {
			return err
		}
		for rows.Next() {
			var id int64
			var n int
			if err := rows.Scan(&id, &n); err != nil {
				return err
			}
			counts[id] = n
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatalf("read %s: %v", table, err)
	}
	return counts
}

// check compares what the callers were told with the rows in tables a and b.
func (d *soakDriver) check(t *testing.T, a, b map[int64]int, out *soakOutages, began time.Time) soakResult {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	r := soakResult{txs: len(d.txs), attempts: d.attempts}
	if cn, ok := ConnectorOf(d.db); ok {
		r.stats = cn.Stats()
	}
	seen := map[int64]bool{}
	kinds := map[string]int{}
	at := func(tx soakTx) string {
		return fmt.Sprintf("id %#x, %v to %v after the start", tx.id,
			tx.start.Sub(began).Round(time.Millisecond), tx.end.Sub(began).Round(time.Millisecond))
	}
	fail := func(format string, args ...any) {
		if len(r.errs) < 20 {
			r.errs = append(r.errs, d.name+": "+fmt.Sprintf(format, args...))
		}
	}
	for _, tx := range d.txs {
		seen[tx.id] = true
		na, nb := a[tx.id], b[tx.id]
		if tx.end.Sub(tx.start) > soakDeadline+soakBound {
			fail("%s: took %v, past its %v deadline: %v", at(tx), tx.end.Sub(tx.start).Round(time.Millisecond), soakDeadline, tx.err)
		}
		switch {
		case na > 1 || nb > 1:
			r.twice++
			fail("%s: run twice (%d and %d rows), told %v", at(tx), na, nb, tx.err)
		case na != nb:
			r.partial++
			fail("%s: %d row(s) in %s but %d in %s: half a transaction committed; told %v", at(tx), na, d.ta, nb, d.tb, tx.err)
		}
		if tx.err != nil {
			r.failed++
			kinds[soakKind(tx)]++
		}
		switch tx.outcome {
		case soakOK:
			r.ok++
			if na == 0 {
				r.lost++
				fail("%s: reported committed, not on the new primary", at(tx))
			}
		case soakNotCommitted:
			if na > 0 {
				fail("%s: reported not committed, but its rows are there: %v", at(tx), tx.err)
			}
		case soakUnknown:
			r.unknown++
			if na > 0 {
				r.unknownCommitted++
			}
			if d.name != DriverName {
				break
			}
			if why := out.excuse(tx, began); why != "" {
				r.excused++
				r.logs = append(r.logs, fmt.Sprintf("unknown outcome while no server answered (%s): %s, committed %v: %v", why, at(tx), na > 0, tx.err))
			} else {
				fail("%s: outcome unknown although a server answered within its deadline (committed: %v): %v", at(tx), na > 0, tx.err)
			}
		}
	}
	for id := range a {
		if !seen[id] {
			r.stray++
		}
	}
	for id := range b {
		if !seen[id] && a[id] == 0 {
			r.stray++
		}
	}
	if r.stray > 0 {
		fail("%d ids in the tables that no transaction wrote", r.stray)
	}
	if r.lost > 0 && len(out.syncCanceled) > 0 {
		fail("%d acknowledged transactions are missing on the new primary, and the old primary logged %d COMMITs whose wait for the synchronous standby was canceled "+
			"(committed there only; the server still answers COMMIT, with a WARNING); the last: %s",
			r.lost, len(out.syncCanceled), out.syncCanceled[len(out.syncCanceled)-1])
	}
	keys := slices.SortedFunc(maps.Keys(kinds), func(x, y string) int { return kinds[y] - kinds[x] })
	for i, k := range keys {
		if i == 12 {
			r.logs = append(r.logs, fmt.Sprintf("failures: %d more kinds", len(keys)-i))
			break
		}
		r.logs = append(r.logs, fmt.Sprintf("failures: %d× %s", kinds[k], k))
	}
	r.logs = append(r.logs, fmt.Sprintf("%d transactions, %d committed, %d failed, %d with an unknown outcome (%d of them had committed), %d twice, %d half, %d acknowledged lost",
		r.txs, r.ok, r.failed, r.unknown, r.unknownCommitted, r.twice, r.partial, r.lost))
	if d.name == DriverName {
		st := r.stats
		r.logs = append(r.logs, fmt.Sprintf("%d runs of fn; lost COMMITs asked: %d committed, %d aborted, %d unresolved; %d COMMITs known not committed; %d ErrConnLost, %d ErrBadConn retries, %d breaker rejections",
			r.attempts, st.ResolvedCommitted, st.ResolvedAborted, st.Unresolved, st.CommitsNotCommitted, st.ConnLost, st.BadConnRetries, st.BreakerRejected))
	}
	return r
}

// soakKind names a failed transaction's error for the logs.
func soakKind(tx soakTx) string {
	k := foKind(tx.err)
	switch tx.outcome {
	case soakUnknown:
		k = "UNKNOWN " + k
		if tx.reason != "" {
			k += " (" + tx.reason + ")"
		}
	case soakNotCommitted:
		var re *RunTxError
		if errors.As(tx.err, &re) {
			k = fmt.Sprintf("RunTxError(%d attempts) %s", re.Attempts, k)
		}
	}
	return k
}
