package main

import (
	"fmt"
	"io"
	"sync"
	"time"
)

const progressEvery = 250 * time.Millisecond

// progressMark is the state of the counters when a phase started.
type progressMark struct {
	phase      int
	at         time.Duration
	ok, failed []int64 // per pool
}

// markPhase records the counters at the start of phase i, for the progress
// line.
func (w *workload) markPhase(i int) {
	m := &progressMark{phase: i, at: w.since()}
	for _, p := range w.pools {
		m.ok = append(m.ok, p.ok.Load())
		m.failed = append(m.failed, p.failed.Load())
	}
	w.mark.Store(m)
}

// startProgress rewrites one line on cfg.progress while the phases run: the
// phase, its elapsed time, and each pool's acknowledged and failed transfers
// since the phase started. When a phase ends its last line stays. It does
// nothing without cfg.progress (stdout is not a terminal). stop ends it and
// waits for it.
func (d *demo) startProgress() (stop func()) {
	w := d.cfg.progress
	if w == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		var cur *progressMark
		for {
			select {
			case <-done:
				if cur != nil {
					d.progressLine(w, cur, nil, "\n")
				}
				return
			case <-t.C:
			}
			m := d.wl.mark.Load()
			if m == nil {
				continue
			}
			if cur != nil && m.phase != cur.phase {
				d.progressLine(w, cur, m, "\n") // the phase that ended, to its last transfer
			}
			cur = m
			d.progressLine(w, cur, nil, "")
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// progressLine writes the line of the phase that started at from, counted up
// to next (nil: now), within 79 columns.
func (d *demo) progressLine(w io.Writer, from, next *progressMark, end string) {
	var ok, failed [2]int64
	at := d.wl.since()
	for i, p := range d.wl.pools[:2] {
		if next != nil {
			ok[i], failed[i] = next.ok[i], next.failed[i]
		} else {
			ok[i], failed[i] = p.ok.Load(), p.failed.Load()
		}
		ok[i] -= from.ok[i]
		failed[i] -= from.failed[i]
	}
	if next != nil {
		at = next.at
	}
	s := fmt.Sprintf("%d/%d %-10s %5.1fs  pgx ok %6d err %5d  pgresilient ok %6d err %5d",
		from.phase+1, len(phaseDefs), phaseDefs[from.phase].name, (at - from.at).Seconds(),
		ok[0], failed[0], ok[1], failed[1])
	if len(s) > 79 {
		s = s[:79]
	}
	fmt.Fprintf(w, "\r%-79s%s", s, end)
}
