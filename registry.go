package pgresilient

// This file holds the Connector's registry of its open connections: where
// each is (held by database/sql, idle in its pool, swept), so that the idle
// ones to a server that changed role, or that the host monitor found
// silent, are closed at once rather than at their next reuse.

// A connection's place, for sweep: database/sql holds it (busy, from
// ResetSession or its opening), or it waits in the pool (idle, from
// IsValid), or a sweep closed it while it waited.
const (
	poolBusy int32 = iota
	poolIdle
	poolSwept
)

// track registers a connection of c's, for sweep.
func (c *Connector) track(bc *baseConn) {
	c.liveMu.Lock()
	if c.live == nil {
		c.live = map[*baseConn]struct{}{}
	}
	c.live[bc] = struct{}{}
	c.liveMu.Unlock()
}

// forget removes a closed connection from the registry.
func (c *Connector) forget(bc *baseConn) {
	c.liveMu.Lock()
	delete(c.live, bc)
	c.liveMu.Unlock()
}

// sweep closes, now, every idle pooled connection to the server that wire
// is connected to: a server that changed role, whose idle connections
// would otherwise stay there, and hold its backends, until each is next
// taken from the pool (or forever, while the pool keeps reusing the
// connections opened on the new primary). A connection database/sql holds
// is left alone: it is checked at its next reuse. Closing the socket of an
// idle connection is safe: nothing uses it until database/sql takes it
// again, and ResetSession then refuses it, so it is dropped unused.
func (c *Connector) sweep(wire *countingConn) {
	if wire != nil {
		c.sweepAddr(wire.addr, discardRole)
	}
}

// sweepAddr closes every idle pooled connection to addr now, discarded for
// reason: a server that changed role (sweep), or that the host monitor found
// silent.
func (c *Connector) sweepAddr(addr string, reason discardReason) {
	if addr == "" {
		return
	}
	c.liveMu.Lock()
	var swept []*baseConn
	for bc := range c.live {
		if bc.wire != nil && bc.wire.addr == addr && bc.pooled.CompareAndSwap(poolIdle, poolSwept) {
			c.idle.taken()
			swept = append(swept, bc)
		}
	}
	c.liveMu.Unlock()
	for _, bc := range swept {
		bc.markBroken(reason)
		_ = bc.wire.Conn.Close()
	}
}
