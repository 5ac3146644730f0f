package pgresilient

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestSweep: a sweep closes, at once, the idle pooled connections to the
// address it is given, and only those: one that database/sql holds is
// checked at its next reuse instead, and another address's are untouched.
// A swept connection is marked broken (ResetSession refuses it unused) and
// counted once, by its reason.
func TestSweep(t *testing.T) {
	c, err := NewConnector("fake?breaker=off", WithDriver(&fakeDriver{}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	type conn struct {
		bc  *baseConn
		far net.Conn // the server's end
	}
	mk := func(addr string, pooled int32) conn {
		near, far := net.Pipe()
		t.Cleanup(func() { _ = near.Close(); _ = far.Close() })
		bc := &baseConn{owner: c, wire: &countingConn{Conn: near, addr: addr}}
		bc.pooled.Store(pooled)
		c.track(bc)
		if pooled == poolIdle {
			c.idle.idle.Add(1) // as IsValid does when it puts one back
		}
		return conn{bc, far}
	}
	idle := mk("10.0.0.1:5432", poolIdle)
	busy := mk("10.0.0.1:5432", poolBusy)
	elsewhere := mk("10.0.0.2:5432", poolIdle)

	c.sweep(nil)       // another driver's connection: nothing
	c.sweepAddr("", 0) // no address: nothing
	c.sweep(idle.bc.wire)
	c.sweep(idle.bc.wire) // twice: swept once

	closed := func(x conn) bool {
		_ = x.far.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := x.far.Read(make([]byte, 1))
		return err == io.EOF
	}
	if got := idle.bc.pooled.Load(); got != poolSwept || !idle.bc.broken.Load() || !closed(idle) {
		t.Errorf("idle connection to the address: pooled %d, broken %v, closed %v; want swept, broken, closed",
			got, idle.bc.broken.Load(), closed(idle))
	}
	for name, x := range map[string]conn{"held by database/sql": busy, "to another address": elsewhere} {
		if x.bc.broken.Load() || closed(x) || x.bc.pooled.Load() == poolSwept {
			t.Errorf("connection %s swept", name)
		}
	}
	if s := c.Stats(); s.DiscardedRole != 1 {
		t.Errorf("DiscardedRole = %d, want 1", s.DiscardedRole)
	}
	if got := c.idle.idle.Load(); got != 1 {
		t.Errorf("idle connections counted: %d, want 1 (the other address's)", got)
	}
	c.forget(idle.bc)
	c.liveMu.Lock()
	_, still := c.live[idle.bc]
	n := len(c.live)
	c.liveMu.Unlock()
	if still || n != 2 {
		t.Errorf("after forget: swept one still registered %v, %d registered; want false, 2", still, n)
	}
}
