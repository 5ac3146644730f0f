package pgresilient

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgresilient/pgresilient/pgtest"
	"github.com/pgresilient/pgresilient/pgtest/patroni"
)

// The failover scenarios of issue 12: a change of primary under 8
// concurrent writers per driver, raw pgx and pgresilient writing at once
// through the same multi-host DSN (target_session_attrs=read-write), each
// into its own table, during the same fault. Every write inserts a
// client-side id never used again, into a table without a unique
// constraint: a row present twice was run twice by a driver, and an
// acknowledged id missing on the new primary was lost.
//
// A probe writes to the candidate every 10 ms: its first success is when
// the new primary accepted writes. A failed write is in flight (ErrConnLost,
// ErrRoleChanged), or refused during the outage (it ended before the new
// primary accepted writes, give or take foGrace: no driver can succeed
// then, and a Patroni failover leaves no primary for over patroni.TTL, longer
// than any write's deadline), or other: a write that failed while a server
// accepted writes. pgresilient may have no other failure.
//
//	go test -race -count=1 -run 'TestFailover' -v .

const (
	foWriters   = 8                     // concurrent writers per driver
	foDeadline  = 2 * time.Second       // each write's deadline
	foFailPause = 20 * time.Millisecond // a writer's pause after a failure, as an application's retry loop would
	foSteady    = time.Second           // writing before the fault
	foAfter     = 3 * time.Second       // writing after the new primary accepts writes
	// foGrace is how late after the probe saw the new primary accept
	// writes a failure still counts as the outage's: the probe's own
	// resolution (it writes every 10 ms), a connection attempt that found
	// the server still a standby just before, and, since issue 21, a call
	// that found the breaker open and waited for its next probe (up to
	// breakerWaitMax), which had begun before the new primary accepted.
	foGrace = 100*time.Millisecond + breakerWaitMax
	// foResumeBound is the generous bound on the first successful write
	// after the new primary accepts writes; the target is 500 ms.
	foResumeBound = 5 * time.Second
)

// foParamsEnv names extra DSN parameters for pgresilient's pool in the
// failover tests ("&breaker=off"), for measuring.
const (
	foParamsEnv = "PGRESILIENT_FAILOVER_PARAMS"
)

// foFail is one failed write.
type foFail struct {
	start, end time.Time
	err        error
}

// foDriver is one driver's writers and what they saw.
type foDriver struct {
	name  string
	db    *sql.DB
	table string
	base  int64 // ids are base + writer<<32 + n

	mu      sync.Mutex
	acked   []int64
	fails   []foFail
	firstOK map[int]time.Time // by server port: the first acknowledged write after the fault began
}

// foResult is one driver's numbers in one scenario.
type foResult struct {
	writes, failed, connLost, roleChanged, outage, other int
	duplicated, lost                                     int
	firstAfter                                           time.Duration
	resumed                                              bool
	otherErrs                                            []string
	otherBreaker                                         int // of other, ErrCircuitOpen
	outageKinds                                          map[string]int
}

// failoverBed is what a scenario needs of its test bed: a multi-host DSN,
// the primary's and the candidate's DSNs, and the fault, which returns once
// the candidate has been made the primary (or has become it).
type failoverBed struct {
	dsn                string // multi-host, without target_session_attrs
	primary, candidate string // single-host DSNs
	candidatePort      int
	fault              func(t *testing.T)
}

// runFailover runs both drivers' writers at once through bed's fault, then
// measures and checks each, side by side, and logs the scenario's summary.
func runFailover(t *testing.T, scenario string, bed failoverBed) {
	ctx := context.Background()
	setup := "drop table if exists fo_probe; create table fo_probe (at timestamptz)"
	drv := map[string]*foDriver{}
	for i, name := range drivers {
		d := &foDriver{name: name, table: "fo_" + strings.ReplaceAll(name, DriverName, "pgr"), base: int64(i+1) << 48, firstOK: map[int]time.Time{}}
		setup += "; drop table if exists " + d.table + "; create table " + d.table + " (id bigint)"
		drv[name] = d
	}
	if err := pgxExec(ctx, bed.primary, setup); err != nil {
		t.Fatal(err)
	}
	for _, d := range drv {
		dsn := bed.dsn + "&target_session_attrs=read-write"
		if d.name == DriverName {
			dsn += os.Getenv(foParamsEnv)
		}
		d.db = openDB(t, d.name, dsn)
		warmPool(t, d.db, foWriters)
	}
	// The probe writes to the candidate until it accepts a write.
	accepted := make(chan time.Time, 1)
	probeCtx, stopProbe := context.WithCancel(ctx)
	var probeWG sync.WaitGroup
	probeWG.Go(func() { probeWritable(probeCtx, bed.candidate, accepted) })
	defer func() { stopProbe(); probeWG.Wait() }()

	var faultAt time.Time
	var faultMu sync.Mutex
	faultBegan := func() (time.Time, bool) {
		faultMu.Lock()
		defer faultMu.Unlock()
		return faultAt, !faultAt.IsZero()
	}
	stop := make(chan struct{})
	var stopOnce sync.Once
	var wg sync.WaitGroup
	halt := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	defer halt() // also when the fault fails the test
	for _, d := range drv {
		for w := range foWriters {
			wg.Go(func() { d.write(stop, int64(w), faultBegan) })
		}
	}
	time.Sleep(foSteady)
	faultMu.Lock()
	faultAt = time.Now()
	faultMu.Unlock()
	bed.fault(t)
	faultDone := time.Now()
	var acceptAt time.Time
	select {
	case acceptAt = <-accepted:
	case <-time.After(30 * time.Second):
		halt()
		t.Fatal("the new primary accepted no write within 30 s of the fault")
	}
	stopProbe()
	time.Sleep(foAfter)
	halt()
	t.Logf("%s: fault %v; the new primary accepted a write %v after the fault began",
		scenario, faultDone.Sub(faultAt).Round(time.Millisecond), acceptAt.Sub(faultAt).Round(time.Millisecond))

	if cn, ok := ConnectorOf(drv[DriverName].db); ok {
		st := cn.Stats()
		t.Logf("%s: pgresilient's Stats: breaker transitions %d, connect failures %d, retries %d, discarded %d (lost %d, verify %d, idle %d)",
			scenario, st.BreakerTransitions, st.ConnectFailures, st.ConnectRetries, st.Discarded, st.DiscardedLost, st.DiscardedVerify, st.DiscardedIdle)
	}
	results := map[string]foResult{}
	sideBySide(t, func(t *testing.T, name string) {
		d := drv[name]
		r := d.result(t, bed, acceptAt)
		results[name] = r
		t.Logf("%s: %d writes, %d failed: %d ErrConnLost, %d ErrRoleChanged, %d refused while no server accepted writes, %d other; %d duplicated, %d acknowledged lost; first write %s after the new primary accepted writes",
			name, r.writes, r.failed, r.connLost, r.roleChanged, r.outage, r.other, r.duplicated, r.lost, foMs(r))
		if len(r.outageKinds) > 0 {
			t.Logf("%s: refused while no server accepted writes: %v", name, r.outageKinds)
		}
		for _, e := range r.otherErrs {
			t.Logf("%s: other failure: %s", name, e)
		}
		if name != DriverName {
			return
		}
		if r.duplicated != 0 {
			t.Errorf("pgresilient: %d rows present twice", r.duplicated)
		}
		if r.lost != 0 {
			t.Errorf("pgresilient: %d acknowledged rows missing on the new primary", r.lost)
		}
		if !r.resumed || r.firstAfter > foResumeBound {
			t.Errorf("pgresilient: first write on the new primary %s after it accepted writes, want under %v", foMs(r), foResumeBound)
		}
		switch {
		case r.other == 0:
		default:
			t.Errorf("pgresilient: %d failed writes neither in flight (ErrConnLost, ErrRoleChanged) nor refused before the new primary accepted writes", r.other)
		}
	})
	p, g := results["pgx"], results[DriverName]
	t.Logf("%s: failed writes pgx %d, pgresilient %d (%d ErrConnLost/ErrRoleChanged, %d refused while no server accepted writes, %d other); duplicated pgx %d, pgresilient %d; acknowledged lost pgx %d, pgresilient %d; first write after promotion pgx %s, pgresilient %s",
		scenario, p.failed, g.failed, g.connLost+g.roleChanged, g.outage, g.other, p.duplicated, g.duplicated, p.lost, g.lost, foMs(p), foMs(g))
}

// foKind names an error's class for the logs: pgresilient's error types,
// else the first words of the message.
func foKind(err error) string {
	var ce *ConnectError
	switch {
	case errors.Is(err, ErrCircuitOpen):
		return "ErrCircuitOpen"
	case errors.As(err, &ce):
		last := ce.Err.Error()
		if i := strings.LastIndex(last, ": "); i >= 0 {
			last = last[i+2:]
		}
		return fmt.Sprintf("ConnectError(%d attempts, permanent %v): ...%s", ce.Attempts, ce.Permanent, last)
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline exceeded"
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = "..." + msg[i+2:]
	}
	return msg
}

func foMs(r foResult) string {
	if !r.resumed {
		return "never"
	}
	return fmt.Sprintf("%d ms", r.firstAfter.Milliseconds())
}

// write inserts fresh ids until stop is closed, each under foDeadline,
// pausing foFailPause after a failure.
func (d *foDriver) write(stop <-chan struct{}, w int64, faultBegan func() (time.Time, bool)) {
	for n := int64(0); ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		id := d.base + w<<32 + n
		ctx, cancel := context.WithTimeout(context.Background(), foDeadline)
		start := time.Now()
		var port int
		err := d.db.QueryRowContext(ctx, "insert into "+d.table+" values ($1) returning inet_server_port()", id).Scan(&port)
		end := time.Now()
		cancel()
		d.mu.Lock()
		if err == nil {
			d.acked = append(d.acked, id)
			if at, ok := faultBegan(); ok && end.After(at) {
				if _, seen := d.firstOK[port]; !seen {
					d.firstOK[port] = end
				}
			}
		} else {
			d.fails = append(d.fails, foFail{start: start, end: end, err: err})
		}
		d.mu.Unlock()
		if err != nil {
			time.Sleep(foFailPause)
		}
	}
}

// result reads the driver's table on the new primary and sorts its failures.
func (d *foDriver) result(t *testing.T, bed failoverBed, acceptAt time.Time) foResult {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seen := map[int64]int{}
	conn, err := pgx.Connect(ctx, bed.candidate)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "select id from "+d.table)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		seen[id]++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	r := foResult{writes: len(d.acked) + len(d.fails), failed: len(d.fails), outageKinds: map[string]int{}}
	for _, n := range seen {
		if n > 1 {
			r.duplicated += n - 1
		}
	}
	for _, id := range d.acked {
		if seen[id] == 0 {
			r.lost++
		}
	}
	type span struct {
		n           int
		first, last time.Duration
	}
	others := map[string]span{}
	for _, f := range d.fails {
		switch {
		case errors.Is(f.err, ErrConnLost):
			r.connLost++
		case errors.Is(f.err, ErrRoleChanged):
			r.roleChanged++
		case f.end.Before(acceptAt.Add(foGrace)):
			r.outage++ // no server accepted writes during all of it but the last foGrace
			r.outageKinds[foKind(f.err)]++
		default:
			r.other++
			if errors.Is(f.err, ErrCircuitOpen) {
				r.otherBreaker++
			}
			k := foKind(f.err)
			after := f.end.Sub(acceptAt)
			if o, ok := others[k]; !ok || after < o.first {
				o.first = after
				others[k] = o
			}
			o := others[k]
			o.n++
			if after > o.last {
				o.last = after
			}
			others[k] = o
		}
	}
	for k, o := range others {
		r.otherErrs = append(r.otherErrs, fmt.Sprintf("%d× %s, from %v to %v after the new primary accepted writes",
			o.n, k, o.first.Round(time.Millisecond), o.last.Round(time.Millisecond)))
	}
	sort.Strings(r.otherErrs)
	if at, ok := d.firstOK[bed.candidatePort]; ok {
		r.resumed, r.firstAfter = true, at.Sub(acceptAt)
	}
	return r
}

// probeWritable inserts into fo_probe on dsn every 10 ms, reconnecting as
// needed, and sends the time of the first insert that succeeded.
func probeWritable(ctx context.Context, dsn string, accepted chan<- time.Time) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			_ = conn.Close(context.Background())
		}
	}()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			c, err := pgx.Connect(cctx, dsn)
			cancel()
			if err != nil {
				continue
			}
			conn = c
		}
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := conn.Exec(qctx, "insert into fo_probe values (now())")
		cancel()
		if err == nil {
			accepted <- time.Now()
			return
		}
		if conn.IsClosed() {
			conn = nil
		}
	}
}

// pgxExec runs sql on dsn with a connection of its own.
func pgxExec(ctx context.Context, dsn, sql string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// TestFailoverPromotion: primary P with a synchronous standby S, P stopped
// (immediate) and S promoted.
func TestFailoverPromotion(t *testing.T) {
	t.Parallel()
	pgtest.Require(t, cluster)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := pgtest.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	s, err := pgtest.StartStandby(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	// Synchronous after the standby's copy, so that S, once promoted,
	// does not wait for a standby of its own.
	if err := p.SetSynchronous(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitStreaming(ctx, 1); err != nil {
		t.Fatal(err)
	}
	runFailover(t, "promotion", failoverBed{
		dsn:           fmt.Sprintf("postgres://%s@%s,%s/%s?sslmode=disable", pgtest.Superuser, p.Addr(), s.Addr(), pgtest.Database),
		primary:       p.DSN(),
		candidate:     s.DSN(),
		candidatePort: s.Port(),
		fault: func(t *testing.T) {
			if err := p.Stop(context.Background(), pgtest.ModeImmediate); err != nil {
				t.Fatal(err)
			}
			if err := s.Promote(ctx); err != nil {
				t.Fatal(err)
			}
		},
	})
}

// patroniBed is a 2-node Patroni cluster's bed: the leader and the other
// node, the candidate.
func patroniBed(t *testing.T) (*patroni.Cluster, string, *patroni.Node, failoverBed) {
	p := patroni.NewT(t, 2)
	leader, err := p.Leader(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var cand *patroni.Node
	for _, n := range p.Nodes() {
		if n.Name != leader {
			cand = n
		}
	}
	return p, leader, cand, failoverBed{
		dsn:           p.DSN(),
		primary:       p.Node(leader).DSN(),
		candidate:     cand.DSN(),
		candidatePort: cand.Port,
	}
}

// TestFailoverSwitchover: a planned Patroni switchover.
func TestFailoverSwitchover(t *testing.T) {
	t.Parallel()
	p, leader, cand, bed := patroniBed(t)
	bed.fault = func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		got, err := p.Switchover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got != cand.Name {
			t.Fatalf("switchover from %s: new leader %s, want %s", leader, got, cand.Name)
		}
	}
	runFailover(t, "switchover", bed)
}

// TestFailoverKill: an unplanned Patroni failover: the leader killed
// (Patroni and PostgreSQL, SIGKILL); the other node takes over once the
// leader key expires.
func TestFailoverKill(t *testing.T) {
	t.Parallel()
	p, leader, cand, bed := patroniBed(t)
	bed.fault = func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := p.KillNode(ctx, leader); err != nil {
			t.Fatal(err)
		}
		got, err := p.WaitLeader(ctx, leader)
		if err != nil {
			t.Fatal(err)
		}
		if got != cand.Name {
			t.Fatalf("failover from %s: new leader %s, want %s", leader, got, cand.Name)
		}
	}
	runFailover(t, "failover", bed)
}
