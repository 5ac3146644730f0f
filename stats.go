package pgresilient

import (
	"sync/atomic"
	"time"
)

// discardReason says why pgresilient took a connection out of use.
type discardReason int

const (
	discardLost     discardReason = iota // an error during use: the network, a shutdown, canceled I/O
	discardIdle                          // closed while idle in the pool, without a message (socket peek)
	discardVerify                        // failed the ping before reuse
	discardRollback                      // inside a transaction block whose rollback failed
	discardRole                          // its server no longer has the role it was opened for (failover)
	numDiscardReasons
)

// counters are the Connector's event counts: atomics only, cheap enough to
// keep on the query path (they move only on rare events, and never contend
// with a statement).
type counters struct {
	opened         atomic.Int64
	closed         atomic.Int64
	discarded      [numDiscardReasons]atomic.Int64
	badConnRetries atomic.Int64
	connLost       atomic.Int64
	notCommitted   atomic.Int64

	resolvedCommitted atomic.Int64
	resolvedAborted   atomic.Int64
	unresolved        atomic.Int64
	invalidations     atomic.Int64

	connectFailures atomic.Int64
	connectRetries  atomic.Int64
	autoRollbacks   atomic.Int64
	poolRollbacks   atomic.Int64
	verifications   atomic.Int64
	staleRetries    atomic.Int64
	canceled        atomic.Int64

	// wait.go and stale.go (issue 21)
	notYetWaits      atomic.Int64
	attemptWaits     atomic.Int64
	execModeSwitches atomic.Int64
}

// Stats is a snapshot of a Connector's counters since it was created. All
// but Breaker only grow, so the difference of two snapshots counts what
// happened in between.
type Stats struct {
	Opened int64 // connections opened (a probe's once a call takes it)
	Closed int64 // connections closed, by database/sql (SetConnMaxLifetime, SetMaxIdleConns, db.Close) or after a discard

	// Discarded counts the connections pgresilient took out of use, each
	// once; the five Discarded* fields below say why, and add up to it.
	Discarded         int64
	DiscardedLost     int64 // broken by an error during use: the network, a server shutdown, I/O canceled by a context
	DiscardedIdle     int64 // found closed while idle in the pool, without a word from the server (socket peek on reuse: a reset, a cut)
	DiscardedVerify   int64 // failed the ping before reuse; this includes backends terminated or restarted while idle, whose FATAL message waits on the socket
	DiscardedRollback int64 // left inside a transaction block whose rollback failed
	DiscardedRole     int64 // its server changed role: a primary demoted or turned standby (ErrRoleChanged, or seen before reuse)

	Verifications  int64 // pooled connections pinged before reuse: first reuse, idle over 1s with its address not proven alive (idle.go), pending data, or a pool invalidation
	BadConnRetries int64 // errors handed to database/sql as driver.ErrBadConn (nothing was sent; it retries on another connection)
	ConnLost       int64 // connections lost with an operation's outcome unknown (ErrConnLost): once per connection, though a lost transaction's later calls return ErrConnLost too
	Invalidations  int64 // pool invalidations: a connection learned that the server went away

	// CommitsNotCommitted counts Commits that lost their connection but
	// whose outcome the wire told: COMMIT never written, refused by the
	// server before it ran, or the connection broken before Commit
	// (ErrNotCommitted; not counted in ConnLost).
	CommitsNotCommitted int64

	// Lost COMMITs looked up with ResolveCommit (RunTx does it) through a
	// pool of this Connector: found committed, found not committed, or
	// still unknown (the caller got ErrConnLost).
	ResolvedCommitted int64
	ResolvedAborted   int64
	Unresolved        int64

	ConnectFailures int64 // failed connection attempts, retried or not
	ConnectRetries  int64 // connection attempts that were retries
	AutoRollbacks   int64 // transactions rolled back at once after a failed statement (tx_autorollback)
	PoolRollbacks   int64 // connections rolled back on their way into the pool, left inside a transaction block

	StaleStatementRetries int64 // statements refused as stale (0A000 cached plan, 26000) and run again on a fresh plan, their transaction begun again if nothing but BEGIN had run

	NotYetWaits      int64 // statements PgBouncer refused before forwarding them (login failing, query_wait_timeout) held until it served again, before database/sql's retry
	AttemptWaits     int64 // connection attempts that waited for one of the Connector's 8 slots (at most 8 under way at once)
	ExecModeSwitches int64 // 1 once a transaction pooler refused pgx's cached statements (42P05, 26000 on stmtcache_...): new connections use default_query_exec_mode=exec

	Canceled int64 // statements a deadline ended that the server canceled when asked (ErrCanceled; the connection kept)

	// The host monitor: checks of a server's address started while
	// statements waited on it past monitor_grace, and servers declared
	// silent (their statements ended with ErrConnLost).
	HostChecks    int64
	SilentServers int64

	Breaker            BreakerState
	BreakerTransitions int64 // breaker state changes
	BreakerRejected    int64 // calls failed at once with ErrCircuitOpen

	Probes              int64         // background probes of the server while the breaker was open (a connection: the last one serves the next call, or is closed)
	ProbeFailures       int64         // probes that found the server still unreachable
	BreakerOpenDuration time.Duration // time the breaker has spent open (half-open included), the current period too
}

// Stats returns a snapshot of the counters. It takes no lock: each counter
// is read atomically, but the snapshot as a whole is not one instant.
func (c *Connector) Stats() Stats {
	s := Stats{
		Opened: c.stats.opened.Load(),
		Closed: c.stats.closed.Load(),

		DiscardedLost:     c.stats.discarded[discardLost].Load(),
		DiscardedIdle:     c.stats.discarded[discardIdle].Load(),
		DiscardedVerify:   c.stats.discarded[discardVerify].Load(),
		DiscardedRollback: c.stats.discarded[discardRollback].Load(),
		DiscardedRole:     c.stats.discarded[discardRole].Load(),

		BadConnRetries: c.stats.badConnRetries.Load(),
		ConnLost:       c.stats.connLost.Load(),

		CommitsNotCommitted: c.stats.notCommitted.Load(),
		ResolvedCommitted:   c.stats.resolvedCommitted.Load(),
		ResolvedAborted:     c.stats.resolvedAborted.Load(),
		Unresolved:          c.stats.unresolved.Load(),
		Invalidations:       c.stats.invalidations.Load(),
		Verifications:       c.stats.verifications.Load(),

		ConnectFailures: c.stats.connectFailures.Load(),
		ConnectRetries:  c.stats.connectRetries.Load(),
		AutoRollbacks:   c.stats.autoRollbacks.Load(),
		PoolRollbacks:   c.stats.poolRollbacks.Load(),

		StaleStatementRetries: c.stats.staleRetries.Load(),
		Canceled:              c.stats.canceled.Load(),

		NotYetWaits:      c.stats.notYetWaits.Load(),
		AttemptWaits:     c.stats.attemptWaits.Load(),
		ExecModeSwitches: c.stats.execModeSwitches.Load(),
	}
	if c.mon != nil {
		s.HostChecks = c.mon.checks.Load()
		s.SilentServers = c.mon.silence.Load()
	}
	s.Discarded = s.DiscardedLost + s.DiscardedIdle + s.DiscardedVerify + s.DiscardedRollback + s.DiscardedRole
	s.Breaker = BreakerDisabled
	if c.breaker != nil {
		s.Breaker = c.breaker.State()
		s.BreakerTransitions = c.breaker.transitions.Load()
		s.BreakerRejected = c.breaker.rejected.Load()
		s.Probes = c.breaker.probes.Load()
		s.ProbeFailures = c.breaker.probeFails.Load()
		s.BreakerOpenDuration = c.breaker.openTime()
	}
	return s
}
