package main

import (
	"context"
	"fmt"
	"time"

	"github.com/pgresilient/pgresilient/pgtest"
)

// need says what a phase's fault requires.
type need uint8

const (
	needNothing need = iota
	needServer       // control of the server: stop, start, restart (the throwaway cluster)
	needProxy        // the fault proxy in front of the server
)

// phaseDef is one step of the fault script. Its fault starts when the phase
// does, unless run sets faultStart later.
type phaseDef struct {
	name  string // short, for the tables and charts
	title string // what happens, one line
	needs need
	run   func(ctx context.Context, d *demo, r *phaseRun) error
}

// phaseRun is what happened during one phase. Times are offsets from the
// start of the workload.
type phaseRun struct {
	def                  *phaseDef
	idx                  int
	skipped              string // why the phase did not run; "" if it ran
	start, end           time.Duration
	faultStart, faultEnd time.Duration // the fault's window; equal for an instantaneous fault
	detail               string        // what the fault did, measured
	down, promoted       time.Duration // phase "failover": when the primary had stopped, when the promotion returned; 0 otherwise
}

func (r *phaseRun) ran() bool { return r.skipped == "" }

// faultWindow reports whether the fault lasted (a window to shade) rather
// than being an instant.
func (r *phaseRun) faultWindow() bool { return r.faultEnd-r.faultStart > 50*time.Millisecond }

var phaseDefs = []*phaseDef{
	{"baseline", "no fault: the workload as it runs every day", needNothing, runBaseline},
	{"terminate", "pg_terminate_backend on every backend of both pools", needNothing, runTerminate},
	{"restart", "pg_ctl restart -m fast", needServer, runRestart},
	{"net cut", "every connection reset at once; then, twice per pool, a reset right after a one-statement transfer reached the server", needProxy, runCut},
	{"blackhole", "the network drops every packet (no reset) for the outage time, then comes back", needProxy, runBlackhole},
	{"stop/start", "pg_ctl stop -m fast, down for the outage time, then started again", needServer, runStopStart},
	{"aborted tx", "an application bug: an overdraft inside a transaction fails the balance check, and the code carries on and commits", needNothing, runAbortedTx},
	{"late start", "both pools opened and the workload started while the server is down; it starts after the outage time", needServer, runLateStart},
	{"failover", "the streaming standby made synchronous, both pools reopened over primary and standby (target_session_attrs=read-write); the primary stopped -m immediate, the standby promoted", needServer, runFailover},
}

// skipReason says why def cannot run in e, or "".
func skipReason(def *phaseDef, e *env) string {
	switch def.needs {
	case needServer:
		if e.cluster == nil {
			return "needs control of the server (run without -dsn)"
		}
	case needProxy:
		if e.proxy == nil {
			return "needs the fault proxy: " + e.noProxy
		}
	}
	return ""
}

// sleepUntil waits until the workload's clock reads t, or ctx ends.
func (d *demo) sleepUntil(ctx context.Context, t time.Duration) error {
	timer := time.NewTimer(t - d.wl.since())
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// observe ends the fault now and watches the recovery for cfg.observe.
func (d *demo) observe(ctx context.Context, r *phaseRun) error {
	r.faultEnd = d.wl.since()
	return d.sleepUntil(ctx, r.faultEnd+d.cfg.observe)
}

func runBaseline(ctx context.Context, d *demo, r *phaseRun) error {
	r.faultStart, r.faultEnd = r.start, r.start
	return d.sleepUntil(ctx, r.start+d.cfg.baseline)
}

func runTerminate(ctx context.Context, d *demo, r *phaseRun) error {
	n, err := d.env.obs.terminate(ctx)
	switch {
	case err != nil && d.env.cluster == nil:
		// A server of someone else's may not let this role terminate
		// backends: say so, and carry on without the fault.
		r.detail = "could not terminate the backends: " + oneLine(err.Error())
	case err != nil:
		return fmt.Errorf("terminating the pools' backends: %w", err)
	default:
		r.detail = fmt.Sprintf("%d backends terminated", n)
	}
	return d.observe(ctx, r)
}

func runRestart(ctx context.Context, d *demo, r *phaseRun) error {
	began := time.Now()
	if err := d.env.cluster.Restart(context.Background(), pgtest.ModeFast); err != nil {
		return err
	}
	r.detail = fmt.Sprintf("the restart took %v", time.Since(began).Round(10*time.Millisecond))
	return d.observe(ctx, r)
}

func runCut(ctx context.Context, d *demo, r *phaseRun) error {
	p := d.env.proxy
	live := p.Live()
	p.Cut()
	// Then cuts of single statements, once the pools have healed: a
	// connection whose statement is cut is replaced while the others serve.
	if err := d.sleepUntil(ctx, r.faultStart+cutSettle); err != nil {
		return err
	}
	fired := 0
	for range 2 {
		for _, pl := range d.wl.pools {
			if armAndWait(ctx, p, pl.led.stmtPrefix) {
				fired++
			}
		}
	}
	r.detail = fmt.Sprintf("%d connections reset, then %d resets right after a statement reached the server", live, fired)
	return d.observe(ctx, r)
}

// cutSettle is how long phase "net cut" lets the pools heal after the mass
// reset before it cuts single statements.
const cutSettle = 500 * time.Millisecond

// armAndWait arms a forwarding CutOn for statements starting with prefix and
// waits for it to fire, up to a second. It reports whether it fired.
func armAndWait(ctx context.Context, p interface {
	CutOn([]byte, bool)
	Armed() bool
}, prefix string) bool {
	p.CutOn([]byte(prefix), true)
	defer p.CutOn(nil, false)
	deadline := time.Now().Add(time.Second)
	for p.Armed() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

func runBlackhole(ctx context.Context, d *demo, r *phaseRun) error {
	p := d.env.proxy
	p.Freeze()
	err := d.sleepUntil(ctx, r.faultStart+d.cfg.outage)
	p.Thaw()
	if err != nil {
		return err
	}
	return d.observe(ctx, r)
}

func runStopStart(ctx context.Context, d *demo, r *phaseRun) error {
	cl := d.env.cluster
	if err := cl.Stop(context.Background(), pgtest.ModeFast); err != nil {
		return err
	}
	stopped := d.wl.since() - r.faultStart
	if err := d.sleepUntil(ctx, r.faultStart+d.cfg.outage); err != nil {
		return err
	}
	began := time.Now()
	if err := cl.Resume(ctx); err != nil {
		return err
	}
	r.detail = fmt.Sprintf("stopping took %v, starting %v", stopped.Round(10*time.Millisecond), time.Since(began).Round(10*time.Millisecond))
	return d.observe(ctx, r)
}

func runAbortedTx(ctx context.Context, d *demo, r *phaseRun) error {
	d.wl.overdraft.Store(true)
	err := d.sleepUntil(ctx, r.faultStart+d.cfg.outage)
	d.wl.overdraft.Store(false)
	if err != nil {
		return err
	}
	return d.observe(ctx, r)
}

// runLateStart pauses the workload, closes both pools and stops the server,
// then opens new pools and resumes the workload while the server is down, as
// an application deployed before its database. The fault starts when the
// workload resumes.
func runLateStart(ctx context.Context, d *demo, r *phaseRun) error {
	wl := d.wl
	wl.gate.Lock()
	err := d.closePools()
	if err == nil {
		err = d.env.cluster.Stop(context.Background(), pgtest.ModeFast)
	}
	if err == nil {
		err = d.openPools()
	}
	r.faultStart = wl.since()
	wl.gate.Unlock()
	if err != nil {
		return err
	}
	if err := d.sleepUntil(ctx, r.faultStart+d.cfg.outage); err != nil {
		return err
	}
	began := time.Now()
	if err := d.env.cluster.Resume(ctx); err != nil {
		return err
	}
	r.detail = fmt.Sprintf("the server started %v after the pools; starting took %v",
		(d.wl.since() - r.faultStart).Round(10*time.Millisecond), time.Since(began).Round(10*time.Millisecond))
	return d.observe(ctx, r)
}

// failoverSettle is how long phase "failover" runs the workload over the
// synchronous pair before it stops the primary.
const failoverSettle = time.Second

// runFailover makes the replication to the standby started with the cluster
// synchronous (a commit is acknowledged once the standby has flushed it) and
// reopens both pools on a multi-host DSN, the primary through the fault proxy
// and then the standby, with target_session_attrs=read-write; then it stops
// the primary -m immediate and promotes the standby, and watches the pools
// find the new primary. It is the last phase: the old primary stays down, and
// the ledgers are read from the new one.
func runFailover(ctx context.Context, d *demo, r *phaseRun) error {
	cl, sb := d.env.cluster, d.env.standby
	began := time.Now()
	if err := cl.SetSynchronous(ctx, true); err != nil {
		return err
	}
	if err := cl.WaitStreaming(ctx, 1); err != nil {
		return err
	}
	synced := time.Since(began)
	base, err := withStandby(d.env.base, sb.Addr())
	if err != nil {
		return err
	}
	wl := d.wl
	wl.gate.Lock()
	err = d.closePools()
	if err == nil {
		d.env.base = base
		err = d.openPools()
	}
	wl.gate.Unlock()
	if err != nil {
		return err
	}
	if err := d.sleepUntil(ctx, wl.since()+failoverSettle); err != nil {
		return err
	}

	r.faultStart = wl.since()
	if err := cl.Stop(context.Background(), pgtest.ModeImmediate); err != nil {
		return err
	}
	r.down = wl.since()
	stopped := r.down - r.faultStart
	began = time.Now()
	if err := sb.Promote(ctx); err != nil {
		return err
	}
	r.promoted = wl.since()
	d.env.obs.setDSN(sb.DSN())
	r.detail = fmt.Sprintf("the standby was synchronous in %v; pools reopened over both servers; "+
		"%v later the primary stopped -m immediate in %v; the promotion took %v",
		synced.Round(10*time.Millisecond), failoverSettle,
		stopped.Round(10*time.Millisecond), time.Since(began).Round(10*time.Millisecond))
	return d.observe(ctx, r)
}
