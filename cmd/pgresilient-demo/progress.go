package main

import (
	"fmt"
	"sync"
	"time"
)

const progressEvery = 250 * time.Millisecond

// startProgress rewrites one line on cfg.progress while the phases run:
// the phase, its elapsed time, and each pool's acknowledged and failed
// transfers since the phase started. When a phase ends its last line stays.
// It does nothing without cfg.progress (stdout is not a terminal). stop ends
// it and waits for it.
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
		cur := -1
		var base [2][2]int64 // per pool: ok, failed at the phase's start
		var started time.Duration
		line := func() string {
			pools := d.wl.pools
			var n [2][2]int64
			for i, p := range pools {
				n[i] = [2]int64{p.ok.Load() - base[i][0], p.failed.Load() - base[i][1]}
			}
			s := fmt.Sprintf("%d/%d %-10s %5.1fs  pgx ok %6d err %5d  pgresilient ok %6d err %5d",
				cur+1, len(phaseDefs), phaseDefs[cur].name, (d.wl.since() - started).Seconds(),
				n[0][0], n[0][1], n[1][0], n[1][1])
			if len(s) > 79 {
				s = s[:79]
			}
			return s
		}
		for {
			select {
			case <-done:
				if cur >= 0 {
					fmt.Fprintf(w, "\r%-79s\n", line())
				}
				return
			case <-t.C:
			}
			if p := int(d.wl.phase.Load()); p != cur {
				if cur >= 0 {
					fmt.Fprintf(w, "\r%-79s\n", line())
				}
				cur = p
				started = d.wl.since()
				for i, pl := range d.wl.pools {
					base[i] = [2]int64{pl.ok.Load(), pl.failed.Load()}
				}
			}
			fmt.Fprintf(w, "\r%-79s", line())
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}
