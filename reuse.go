package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
	"log/slog"
	"time"
)

// ResetSession runs when database/sql takes the connection from the pool
// again. It returns driver.ErrBadConn (nothing was sent: database/sql retries
// on another connection) for a connection that is broken, that the server
// already closed, or that fails verification after a pool invalidation.
//
// Its one possible round trip, verify's ping (after a second idle with no
// proof that the server's address is alive, on the first reuse, when bytes
// are pending, after a pool invalidation: idle.go), is bounded
// by the verification timeout, 2s or query_timeout if shorter, or by ctx's
// deadline if that comes first. A blackholed connection then costs that
// much, not forever.
func (c *baseConn) ResetSession(ctx context.Context) error {
	if c.pooled.CompareAndSwap(poolIdle, poolBusy) {
		c.owner.idle.taken()
	} else if c.pooled.Load() == poolSwept {
		return driver.ErrBadConn // closed by a sweep while idle
	}
	if c.broken.Load() || c.innerClosed() {
		return driver.ErrBadConn
	}
	if c.cancelPending() {
		// A cancel request went out that no 57014 answered: it could
		// still land on this backend's next statement.
		c.markBroken(discardLost)
		return driver.ErrBadConn
	}
	c.endTx() // database/sql reuses a connection only after its Tx ended

	// Whether to peek and whether to ping depend on how long the connection
	// sat in the pool and on what the pool saw of its server (idle.go).
	// pgx's own ping is turned off with OptionShouldPing, so that every
	// round trip of a reuse goes through verify and its deadline.
	peek, verify := c.reuseChecks(monoNow(), c.owner, c.peek != nil, c.pgx != nil)
	if peek {
		switch c.peek.state() {
		case peekDead:
			c.discard(ctx, discardIdle, "closed while idle")
			if c.owner.reuseFailed() {
				c.owner.breaker.after(classGone, tripSpan, errIdleClosed)
			}
			return driver.ErrBadConn
		case peekPending:
			// The server said something while we were idle: a notice, a
			// notification, or, most often, a FATAL before it closed.
			verify = true
		}
	}
	if pc := c.pgConn(); pc != nil && pc.Frontend().ReadBufferLen() > 0 {
		verify = true // pgx read more than the last reply: same as pending
	}
	gen := c.owner.gen.Load()
	if gen != c.gen {
		verify = true
	}
	asked := false
	if b := c.owner.breaker; b.isOpen() {
		if b.silent.Load() {
			// The server went silent: no ping, which could only wait.
			// database/sql hands the connection out and the breaker's
			// gate rejects the statement at once; closing the breaker
			// bumps the generation, so the connection is verified on a
			// reuse after that.
			verify = false
			gen = c.gen
		} else {
			// The breaker is open on refused or dropped connections, but
			// this one may still be served (a proxy or a server refusing
			// only new connections): ask it, for no longer than a call
			// would wait for the next probe. An answer from a server of
			// the role the connection was opened for lets its calls
			// through the breaker for this open period (openPass, below:
			// a standby's answer is no evidence for read-write); a dead
			// connection is discarded before anything of the statement
			// is sent. The breaker itself stays open until a probe
			// connects: new connections are what it guards.
			verify, asked = true, true
		}
	}
	if verify {
		if err := c.verify(ctx, asked); err != nil {
			return err
		}
		c.gen = gen
	}
	// Without target_session_attrs a new connection goes to the same
	// server whatever its role: nothing to gain from discarding this one
	// before use, for a map lookup on every checkout (docs/performance.md).
	// A write it refuses still returns ErrRoleChanged (failStmt).
	if c.owner.role != roleAny && c.roleChanged() {
		// What the server reported (on the ping, or earlier) says it is
		// no longer what the connection was opened for: a new connection
		// goes where target_session_attrs says.
		c.discard(ctx, discardRole, "server changed role")
		c.owner.sweep(c.wire)
		return driver.ErrBadConn
	}
	if !c.clean(ctx) {
		return driver.ErrBadConn
	}
	c.openPass = 0
	if asked {
		c.openPass = c.owner.breaker.openedAt.Load()
	}
	// Over pgx, stdlib.Conn.ResetSession's checks (closed, outside a
	// transaction block, whether to ping: never, see neverPing) were made
	// above; pgresilient sets no OptionResetSession. Only another driver's
	// own is run (0.12 to 0.17 µs a checkout, measured in docs/performance.md).
	if c.resetter != nil && c.pgx == nil {
		if err := c.resetter.ResetSession(ctx); err != nil {
			c.markBroken(discardLost)
			return driver.ErrBadConn
		}
	}
	return nil
}

// verify pings the connection within the verification timeout, or ctx's
// deadline if sooner; on failure it marks it broken and returns
// driver.ErrBadConn. It is the only round trip of a reuse. whileOpen is the
// breaker's open-period check: no longer than a call would wait for a probe
// (breakerWaitMax), and its failure is only this connection's: it spends
// nothing of the call's query_timeout budget and counts nothing for the
// breaker, whose probes decide.
func (c *baseConn) verify(ctx context.Context, whileOpen bool) error {
	pc := c.pgConn()
	if pc == nil {
		return nil
	}
	limit := c.owner.verifyTimeout
	if whileOpen {
		limit = min(limit, breakerWaitMax)
	}
	d, ok := c.owner.budgetLeft(ctx, limit)
	if !ok {
		// Another reuse check of this call timed out: this one would
		// only wait as long again.
		c.discard(ctx, discardVerify, "not verified: this call's query_timeout is spent")
		return driver.ErrBadConn
	}
	began := time.Now()
	c.owner.stats.verifications.Add(1)
	var err error
	expired := false
	if ctx.Done() == nil {
		// A context that cannot end (context.Background, what database/sql
		// passes for a call without one): the socket's deadline bounds the
		// ping. A timer context would cost a timer and, as pgx watches any
		// context that can end, its watcher: 11 allocations a verification.
		nc := pc.Conn()
		_ = nc.SetDeadline(began.Add(d))
		err = pc.Ping(ctx)
		_ = nc.SetDeadline(time.Time{}) // pgx sets none of its own under such a context
	} else {
		vctx, cancel := within(ctx, d)
		err = pc.Ping(vctx)
		expired = errors.Is(vctx.Err(), context.DeadlineExceeded)
		cancel()
	}
	if err == nil {
		c.owner.breaker.after(classNone, tripSpan, nil)
		return nil
	}
	c.discard(ctx, discardVerify, "failed verification: "+logCause(err))
	class := classify(ctx, err)
	if class == classCanceled || whileOpen {
		return driver.ErrBadConn
	}
	timeout := expired || isTimeout(err)
	if timeout {
		c.owner.spend(ctx, began.Add(d))
	}
	news := c.owner.reuseFailed()
	switch {
	case timeout:
		c.owner.breaker.after(classGone, tripNow, err)
	case news:
		c.owner.breaker.after(classGone, tripSpan, err)
	}
	return driver.ErrBadConn
}

// discard takes a pooled connection out of use on its way out of the pool,
// and logs why.
func (c *baseConn) discard(ctx context.Context, r discardReason, why string) {
	c.markBroken(r)
	c.owner.logger.LogAttrs(ctx, slog.LevelDebug, "pgresilient: discarding pooled connection",
		slog.String("why", why))
}

// markBroken takes the connection out of use: database/sql closes it at the
// next ResetSession or IsValid, or at once after driver.ErrBadConn. Only the
// first call counts, under reason r.
func (c *baseConn) markBroken(r discardReason) {
	if c.broken.CompareAndSwap(false, true) {
		c.owner.stats.discarded[r].Add(1)
	}
}

// clean makes sure the connection is outside any transaction block, rolling
// back one left open (a BEGIN sent by hand, a COMMIT that failed, a ROLLBACK
// that never came); false if that failed and the connection must go.
func (c *baseConn) clean(ctx context.Context) bool {
	pc := c.pgConn()
	if pc == nil {
		return true
	}
	status := pc.TxStatus()
	if status == 'I' {
		return true
	}
	if pc.IsBusy() {
		c.markBroken(discardRollback)
		return false
	}
	if err := c.rollbackNow(ctx); err != nil {
		c.discard(ctx, discardRollback, "left in a transaction block, and its rollback failed")
		return false
	}
	c.owner.stats.poolRollbacks.Add(1)
	c.owner.logger.LogAttrs(ctx, slog.LevelWarn, "pgresilient: connection returned to the pool inside a transaction block: rolled back",
		slog.String("status", string(rune(status))))
	return true
}

// IsValid runs when database/sql returns the connection to the pool: false
// discards it. A connection still inside a transaction block is rolled back
// first, so it never waits in the pool holding locks.
func (c *baseConn) IsValid() bool {
	if c.broken.Load() || c.innerClosed() {
		return false
	}
	if !c.clean(context.Background()) {
		return false
	}
	if c.validator != nil && !c.validator.IsValid() {
		return false
	}
	c.proveAlive()
	if c.pooled.Swap(poolIdle) != poolIdle { // back in the pool: a sweep may close it
		c.owner.idle.pooled() // calls waiting out a "not yet" may take it (wait.go)
	}
	return true
}

// reuseFailed reports whether a failed reuse check (a dead socket, a failed
// ping) is news for the breaker: one outage counts once, so a failure less
// than sameEvent after the last invalidation or the last counted reuse
// failure is the same event, and does not count again.
func (c *Connector) reuseFailed() bool {
	now := time.Now().UnixNano()
	if now-c.invalidatedAt.Load() < int64(sameEvent) {
		return false
	}
	last := c.reuseFailedAt.Load()
	return now-last >= int64(sameEvent) && c.reuseFailedAt.CompareAndSwap(last, now)
}
