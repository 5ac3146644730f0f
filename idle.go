package pgresilient

import (
	"sync/atomic"
	"time"
)

// When a pooled connection is pinged before reuse.
//
// The peek (sockpeek_unix.go) sees everything the server, or the kernel of
// the host it runs on, said while the connection idled: a FATAL, a FIN, a
// reset. What it cannot see is silence: a host that crashed, a network cut
// or blackholed, an address that moved to another host. Only a round trip
// sees that, and pgx makes one on every reuse of a connection idle for over
// a second, which costs a service that is quiet for a second at a time a
// round trip on nearly every request.
//
// Silence is a property of the path to the server, not of one connection:
// the faults that cause it take every connection to the address at once. So
// pgresilient pings a connection idle for over a second only when nothing
// proves that path alive within the last second: the same bound as pgx's,
// per address instead of per connection. The proof is a use of another
// connection to the same address that began less than a second ago and was
// returned to the pool healthy, so the server answered it after it began.
// A connection is pinged regardless
//   - on its first reuse (pgx's rule, kept);
//   - when a connection to the same address was opened since its last use:
//     a fresh connection proves the address, not the old connections' path
//     (an address that moved to another host answers new connections and
//     resets old ones);
//   - when it idled for over idleProofMax: the state that middleboxes keep
//     per connection (NAT gateways, load balancers) expires by itself, after
//     minutes on the common ones, and the others' traffic does not refresh it.
//
// The proof stands in for the ping only where the peek runs: without it
// (Windows, or a custom DialFunc whose net.Conn does not expose its socket
// through NetConn), a connection the server closed is seen by the ping
// alone, and pgx's per-connection rule applies. Pending bytes, a pool
// invalidation and a server that reported a role change are checked on
// every reuse (ResetSession).
//
// The peek itself is skipped for a connection whose previous use began less
// than peekAfter ago: one in continuous use, which sits in the pool for
// microseconds between two statements. A server's close of it is then almost
// always caught by a statement in flight (ErrConnLost, which no check before
// sending could have prevented), and a restart or a network cut, by the
// first such statement's pool invalidation, which has every pooled
// connection verified before reuse. What the peek would still add is the
// close that lands in those microseconds, before any other connection saw
// it: a few in a hundred closes of a hot connection, for one system call
// (about 0.5 µs, 3 to 4 % of a loopback select 1's client CPU) on every
// statement. A connection that sat in the pool for longer, where a close
// (idle_session_timeout, PgBouncer's, a terminated backend) is the usual
// case, is peeked on every reuse.
const (
	peekAfter     = time.Millisecond
	idlePingAfter = time.Second
	idleProofMax  = 30 * time.Second
	// proofStep: a proof is published only when it is this much newer than
	// the last one, so that under load the shared word is written at most
	// about a thousand times a second, not on every statement.
	proofStep = int64(time.Millisecond)
)

// pathState is what the pool has seen of one server address.
type pathState struct {
	// proof: monoNow at the start of the newest use, on any connection to
	// the address, that was returned to the pool healthy.
	proof atomic.Int64
	// opened: monoNow when the newest connection to the address was opened.
	opened atomic.Int64
}

// monoEpoch anchors monoNow; time.Since of a time with a monotonic reading
// reads only the monotonic clock.
var monoEpoch = time.Now()

// monoNow is a monotonic clock in nanoseconds, always above 0.
func monoNow() int64 { return int64(time.Since(monoEpoch)) + 1 }

// pathFor returns the state of the server address addr ("host:port" as
// dialled), made on first use; nil for "".
func (c *Connector) pathFor(addr string) *pathState {
	if addr == "" {
		return nil
	}
	c.liveMu.Lock()
	defer c.liveMu.Unlock()
	p := c.paths[addr]
	if p == nil {
		if c.paths == nil {
			c.paths = map[string]*pathState{}
		}
		p = new(pathState)
		c.paths[addr] = p
	}
	return p
}

// useClock is a connection's part in the rules above: when its current or
// last use began, whether it was reused, and the state of its server's
// address. Touched only by database/sql's holder of the connection.
type useClock struct {
	path *pathState // its server address's; nil when wrapping another driver
	// lastUse is monoNow at the start of the connection's current or last
	// use: when it was opened, then at each ResetSession.
	lastUse int64
	reused  bool // set by the first ResetSession
}

// openedNow records a connection just opened to its address: the start of its
// first use, and a new connection that the older ones' path is not proven by.
func (u *useClock) openedNow() {
	u.lastUse = monoNow()
	if u.path != nil {
		u.path.opened.Store(u.lastUse)
	}
}

// reuseChecks says, for a reuse at now of a connection of o, whether to peek
// at the socket (if canPeek) and whether to ping (if canPing), by the rules
// above; it records now as the start of this use.
func (u *useClock) reuseChecks(now int64, o *Connector, canPeek, canPing bool) (peek, ping bool) {
	last, reused := u.lastUse, u.reused
	u.lastUse, u.reused = now, true
	peek = canPeek && now-last >= int64(o.peekAfter)
	return peek, canPing && (!reused || u.unproven(now, last, o, canPeek))
}

// unproven reports whether a connection whose previous use began at last
// needs a ping at now: idle for over idlePing, with nothing that proves its
// server's address alive since.
func (u *useClock) unproven(now, last int64, o *Connector, canPeek bool) bool {
	idle := now - last
	if idle <= int64(o.idlePing) {
		return false
	}
	p := u.path
	if p == nil || !canPeek || idle > int64(o.idleProofMax) {
		return true // without the peek, a closed connection too is only seen by a ping
	}
	return now-p.proof.Load() > int64(o.idlePing) || p.opened.Load() > last
}

// proveAlive publishes, when the connection goes back to the pool healthy,
// that its server answered after the start of its last use.
func (u *useClock) proveAlive() {
	if p := u.path; p != nil && u.lastUse-p.proof.Load() >= proofStep {
		p.proof.Store(u.lastUse)
	}
}
