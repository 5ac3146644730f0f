package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/pgresilient/pgresilient"
)

const (
	bucket         = 100 * time.Millisecond // resolution of the timelines and of the recovery time
	recoveryWindow = 10                     // buckets: recovered = one second of success without an error
)

// results is what the run measured.
type results struct {
	workload time.Duration // how long the workload ran
	rows     []row         // per phase that ran, per pool, in phase order
	pools    []poolResult  // per pool
}

// row is one phase of one pool.
type row struct {
	run  *phaseRun
	pool string

	ok, errs int           // transfers acknowledged, and failed as the application saw them
	kinds    [numKinds]int // errs by kind
	dup      int           // transfers whose request id is in the ledger more than once
	dupStmt  int           // ... of which single statements (the rest are transactions)
	lost     int           // acknowledged, absent from the ledger
	unknown  int           // failed, yet present in the ledger: the outcome was unknown, and it committed

	failed   int           // failures counted for p50/p99 (not deliberate ones)
	p50, p99 time.Duration // latency of those failures
	// recovery is from the fault's start to the first of recoveryWindow
	// buckets that each acknowledged a transfer and failed none; recovered
	// is false when no such second came before the phase ended (limit is the
	// time there was to recover).
	recovery, limit time.Duration
	recovered       bool

	// served is when (an offset from the workload's start) the first
	// transfer begun after the primary had stopped was acknowledged, if one
	// was (hasServed): in phase "failover", the first served by the new
	// primary.
	served    time.Duration
	hasServed bool
}

// poolResult is one pool over the whole run.
type poolResult struct {
	name       string
	ok, errs   int
	money      int64 // sum of the balances at the end
	want       int64 // ... and at the start
	mismatched int   // accounts whose balance disagrees with the transfers table
	rowCount   int   // rows in the transfers table
	orphans    int   // rows whose request id no attempt made
	dup, lost  int
	dupStmt    int
	unknown    int
	poisoned   int64              // transfers that failed with 25P02 other than the deliberate ones
	okBuckets  []int              // acknowledged per bucket, by end time
	errBuckets []int              // failed per bucket, by end time
	faultErrs  []int              // errBuckets without the deliberate failures of phase "aborted tx"
	stats      *pgresilient.Stats // pgresilient only: its counters, summed over the run's Connectors
	abort      *abortObservations
	samples    map[sampleKey]string
}

// results reads both ledgers and measures every phase.
func (d *demo) results(ctx context.Context, total time.Duration) (*results, error) {
	res := &results{workload: total}
	nb := int(total/bucket) + 1
	for _, p := range d.wl.pools {
		st, err := p.led.read(ctx, d.env.obs)
		if err != nil {
			return nil, fmt.Errorf("reading the %s ledger: %w", p.name, err)
		}
		pr := poolResult{
			name:       p.name,
			money:      st.total,
			want:       p.led.total(),
			mismatched: st.mismatched,
			rowCount:   st.rowCount,
			poisoned:   p.poisoned.Load(),
			okBuckets:  make([]int, nb),
			errBuckets: make([]int, nb),
			faultErrs:  make([]int, nb),
			abort:      &p.abortObs,
			samples:    map[sampleKey]string{},
		}
		p.samples.Range(func(k, v any) bool {
			pr.samples[k.(sampleKey)] = v.(string)
			return true
		})
		if p.name == pgresilient.DriverName {
			pr.stats = sumStats(p.conns)
		}
		byPhase := make([][]attempt, len(phaseDefs))
		seen := 0
		for _, recs := range p.recs {
			for _, a := range recs {
				byPhase[a.phase] = append(byPhase[a.phase], a)
				b := min(int(a.end/bucket), nb-1)
				if a.kind == kindOK {
					pr.okBuckets[b]++
				} else {
					pr.errBuckets[b]++
					if !a.overdraft {
						pr.faultErrs[b]++
					}
				}
				if st.rows[a.req] > 0 {
					seen++
				}
			}
		}
		pr.orphans = len(st.rows) - seen
		for _, r := range d.runs {
			if !r.ran() {
				continue
			}
			rw := measure(r, p.name, byPhase[r.idx], st.rows, pr.okBuckets, pr.faultErrs)
			res.rows = append(res.rows, rw)
			pr.ok += rw.ok
			pr.errs += rw.errs
			pr.dup += rw.dup
			pr.dupStmt += rw.dupStmt
			pr.lost += rw.lost
			pr.unknown += rw.unknown
		}
		res.pools = append(res.pools, pr)
	}
	// Phase order, pools side by side.
	slices.SortStableFunc(res.rows, func(a, b row) int { return a.run.idx - b.run.idx })
	return res, nil
}

// measure computes one phase's row for one pool from its attempts, the
// ledger's rows per request id and the pool's timelines (errB without the
// deliberate failures).
func measure(r *phaseRun, poolName string, atts []attempt, rows map[int64]int, okB, errB []int) row {
	rw := row{run: r, pool: poolName}
	var lat []time.Duration
	for _, a := range atts {
		n := rows[a.req]
		if n > 1 {
			rw.dup++
			if a.shape == shapeStmt {
				rw.dupStmt++
			}
		}
		if a.kind == kindOK {
			if r.down > 0 && a.start >= r.down && (!rw.hasServed || a.end < rw.served) {
				rw.served, rw.hasServed = a.end, true
			}
			rw.ok++
			if n == 0 {
				rw.lost++
			}
			continue
		}
		rw.errs++
		rw.kinds[a.kind]++
		if n > 0 {
			rw.unknown++
		}
		if !a.overdraft && a.end >= r.faultStart {
			lat = append(lat, a.latency())
		}
	}
	rw.failed = len(lat)
	if len(lat) > 0 {
		slices.Sort(lat)
		rw.p50 = percentile(lat, 50)
		rw.p99 = percentile(lat, 99)
	}
	rw.limit = r.end - r.faultStart
	first := int(r.faultStart / bucket)
	last := min(int(r.end/bucket), len(okB)) // exclusive
	for b := first; b+recoveryWindow <= last; b++ {
		good := true
		for i := b; i < b+recoveryWindow; i++ {
			if okB[i] == 0 || errB[i] > 0 {
				good = false
				break
			}
		}
		if good {
			rw.recovered = true
			rw.recovery = max(0, time.Duration(b)*bucket-r.faultStart)
			break
		}
	}
	return rw
}

// percentile returns the p-th percentile of sorted, nearest rank.
func percentile(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(0, min(i-1, len(sorted)-1))]
}

func sumStats(cns []*pgresilient.Connector) *pgresilient.Stats {
	var s pgresilient.Stats
	for _, cn := range cns {
		c := cn.Stats()
		s.Opened += c.Opened
		s.Discarded += c.Discarded
		s.DiscardedLost += c.DiscardedLost
		s.DiscardedIdle += c.DiscardedIdle
		s.DiscardedVerify += c.DiscardedVerify
		s.DiscardedRollback += c.DiscardedRollback
		s.Verifications += c.Verifications
		s.BadConnRetries += c.BadConnRetries
		s.ConnLost += c.ConnLost
		s.Invalidations += c.Invalidations
		s.ConnectFailures += c.ConnectFailures
		s.ConnectRetries += c.ConnectRetries
		s.AutoRollbacks += c.AutoRollbacks
		s.PoolRollbacks += c.PoolRollbacks
		s.BreakerTransitions += c.BreakerTransitions
		s.BreakerRejected += c.BreakerRejected
	}
	return &s
}
