package benchcpu

import (
	"testing"
	"time"
)

// TestNowAdvances checks that spinning shows up as CPU time. It spins until
// 20ms of CPU time are counted, however loaded the machine (a loaded machine
// only makes it take longer), and fails if that has not happened after 10s
// of wall time, in which even a shared core gives the process far more.
func TestNowAdvances(t *testing.T) {
	start, ok := Now()
	if !ok {
		t.Skip("no process CPU time on this platform")
	}
	deadline := time.Now().Add(10 * time.Second)
	x := 0
	for {
		for range 1 << 16 {
			x++
		}
		now, _ := Now()
		if now-start >= 20*time.Millisecond {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("10s of spinning (%d loops) counted only %v of CPU time", x, now-start)
		}
	}
}
