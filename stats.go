package pgresilient

import "sync/atomic"

// counters are the Connector's event counts: atomics only, cheap enough to
// keep on the query path.
type counters struct {
	opened         atomic.Int64
	discarded      atomic.Int64
	badConnRetries atomic.Int64
	connLost       atomic.Int64
	invalidations  atomic.Int64

	connectFailures atomic.Int64
	connectRetries  atomic.Int64
	autoRollbacks   atomic.Int64
	poolRollbacks   atomic.Int64
	verifications   atomic.Int64
}

// Stats is a snapshot of a Connector's counters since it was created.
type Stats struct {
	Opened         int64 // connections opened
	Discarded      int64 // pooled connections found dead or failing verification on reuse
	Verifications  int64 // pooled connections pinged before reuse: first reuse, idle over 1s, pending data, or a pool invalidation
	BadConnRetries int64 // errors handed to database/sql as driver.ErrBadConn (nothing was sent; it retries)
	ConnLost       int64 // errors returned as ErrConnLost (outcome unknown)
	Invalidations  int64 // pool invalidations: a connection learned that the server went away

	ConnectFailures int64 // failed connection attempts, retried or not
	ConnectRetries  int64 // connection attempts that were retries
	AutoRollbacks   int64 // transactions rolled back at once after a failed statement (tx_autorollback)
	PoolRollbacks   int64 // connections rolled back on their way into the pool, left inside a transaction block

	Breaker            BreakerState
	BreakerTransitions int64 // breaker state changes
	BreakerRejected    int64 // calls failed at once with ErrCircuitOpen
}

// Stats returns a snapshot of the counters.
func (c *Connector) Stats() Stats {
	s := Stats{
		Opened:         c.stats.opened.Load(),
		Discarded:      c.stats.discarded.Load(),
		BadConnRetries: c.stats.badConnRetries.Load(),
		ConnLost:       c.stats.connLost.Load(),
		Invalidations:  c.stats.invalidations.Load(),
		Verifications:  c.stats.verifications.Load(),

		ConnectFailures: c.stats.connectFailures.Load(),
		ConnectRetries:  c.stats.connectRetries.Load(),
		AutoRollbacks:   c.stats.autoRollbacks.Load(),
		PoolRollbacks:   c.stats.poolRollbacks.Load(),
	}
	s.Breaker = c.BreakerState()
	if c.breaker != nil {
		s.BreakerTransitions = c.breaker.transitions.Load()
		s.BreakerRejected = c.breaker.rejected.Load()
	}
	return s
}
