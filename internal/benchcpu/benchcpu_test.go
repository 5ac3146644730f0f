package benchcpu

import (
	"testing"
	"time"
)

// TestNowAdvances checks that spinning for a while shows up as CPU time.
func TestNowAdvances(t *testing.T) {
	start, ok := Now()
	if !ok {
		t.Skip("no process CPU time on this platform")
	}
	deadline := time.Now().Add(50 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x++
	}
	end, _ := Now()
	if d := end - start; d < 10*time.Millisecond {
		t.Errorf("50ms of spinning (%d loops) counted %v of CPU time", x, d)
	}
}
