package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
	"log/slog"
)

// A failed operation of a connection (a statement, a transaction's
// statement, Commit, Rollback) is turned into what the caller gets here, in
// one pass, in this order:
//
//  1. failStmt: a write the server refused because it changed role (25006
//     after its ParameterStatus showed the change) is a RoleChangedError;
//     nothing ran, database/sql may retry it on a new connection.
//  2. failTimed: the server's cancel of our own (cancel.go) is a
//     CanceledError; query_timeout's deadline names itself.
//  3. fail: the error's class (classify.go's table: every SQLSTATE and
//     message the project decides on) and what was sent (the wire's byte
//     count since mark) decide: the caller's own cancel, a server error on a
//     working connection (the transaction auto-rolled back), or a
//     connection lost, which is a DisconnectError that says whether
//     database/sql may retry (nothing reached the server), whether a COMMIT
//     did not run, or that the outcome is unknown; the pool's other
//     connections are checked before reuse, and the breaker counts it
//     (gate, breaker.go).
//  4. silencedCause (in failTimed): the host monitor's verdict, when it
//     ended the statement.
//
// A statement that met a stale cached plan or one of pgx's cached statement
// names refused by a pooler is run again before any of this, when nothing
// ran (stale.go). The reuse check (reuse.go) and connect (reconnect.go)
// classify with the same table.

// failStmt is failTimed for a statement: a write that the server refused
// because it changed role is a RoleChangedError, and the connection and
// the pool's others are checked out of use; any other error goes through
// failTimed. query is the statement's text, "" for a prepared statement.
func (c *baseConn) failStmt(ctx, stmtCtx context.Context, op Op, query string, err error, mark int64) error {
	if c.pgx == nil || !c.refusedForRole(err, query) {
		return placeholderHint(c.failTimed(ctx, stmtCtx, op, err, mark), query)
	}
	inTx := c.inTx.Load()
	c.markBroken(discardRole)
	c.owner.invalidate(c.gen, op, err) // the pool's busy connections are pinged, and so checked, before reuse
	c.owner.sweep(c.wire)              // its idle ones to the same server are closed now
	rerr := &RoleChangedError{Op: op, InTx: inTx, Err: err}
	if inTx {
		// The server aborted the transaction; its later statements and
		// Commit say why, without a round trip.
		c.aborted.Store(&TxAbortedError{Err: rerr})
	}
	c.owner.logger.LogAttrs(ctx, slog.LevelWarn, "pgresilient: server changed role: connection discarded",
		slog.String("op", string(op)), slog.Bool("in_tx", inTx), slog.String("cause", logCause(err)))
	return rerr
}

// refusedForRole reports whether err is a write refused because the server
// changed role, for a statement that the server ran nothing of: 25006 after
// the server's ParameterStatus showed the change, for a single statement
// (a string of several, sent by the simple protocol, could have committed
// a part before the refused one).
func (c *baseConn) refusedForRole(err error, query string) bool {
	if _, st, ok := serverState(err); !ok || !st.readOnly {
		return false
	}
	return c.roleChanged() && singleStatement(query)
}

// failTimed is fail for an operation run under c.deadline(ctx): stmtCtx is
// that derived context, possibly cancelled already. Only its deadline having
// fired (a context's error is set once, so a later cancel does not hide it)
// labels the error as query_timeout's. A statement the host monitor ended
// says so (silencedCause).
func (c *baseConn) failTimed(ctx, stmtCtx context.Context, op Op, err error, mark int64) error {
	if ce, ok := c.canceledByServer(ctx, stmtCtx, op, err); ok {
		c.owner.stats.canceled.Add(1)
		if ctx.Err() == nil {
			c.autoRollback(ctx, err) // in a transaction, it is aborted
		}
		return ce
	}
	if stmtCtx != ctx && ctx.Err() == nil && errors.Is(stmtCtx.Err(), context.DeadlineExceeded) {
		err = &timeoutError{d: c.owner.cfg.QueryTimeout, err: err}
	}
	return c.silencedCause(c.fail(ctx, op, err, mark))
}

// fail turns an error of the wrapped driver into pgresilient's and records
// what it says about the connection. mark is what c.wire.mark() returned before
// the operation started.
func (c *baseConn) fail(ctx context.Context, op Op, err error, mark int64) error {
	class := classify(ctx, err)
	switch class {
	case classGone:
	case classCanceled:
		if !c.innerClosed() {
			// pgx gave up before sending anything: the connection is fine.
			// Return the caller's own error, not pgx's driver.ErrBadConn.
			if errors.Is(err, driver.ErrBadConn) {
				return ctx.Err()
			}
			return err
		}
		// pgx closes the connection when a context ends during I/O: the
		// statement may have run, unless it is a COMMIT never written.
		c.markBroken(discardLost)
		inTx := c.inTx.Load()
		if inTx && op == OpCommit && c.commitNotRun(mark, err) {
			c.owner.stats.notCommitted.Add(1)
			return &DisconnectError{Op: op, InTx: true, notCommitted: true, Err: err}
		}
		c.owner.stats.connLost.Add(1)
		return &DisconnectError{Op: op, InTx: inTx, Err: err}
	default:
		if !c.innerClosed() {
			if class == classServer {
				c.autoRollback(ctx, err)
			}
			return err
		}
		// The wrapped driver closed the connection over an error that is
		// not a disconnect in itself (a protocol error, say).
	}

	c.markBroken(discardLost)
	news := c.owner.invalidate(c.gen, op, err)
	inTx := c.inTx.Load()
	safe := !inTx && (noEffect(op) || c.wire.safeToRetry(mark, err) || bouncerNotForwarded(err))
	// A COMMIT is never safe (database/sql does not retry one), but the
	// wire may know it did not commit.
	notCommitted := inTx && op == OpCommit && c.commitNotRun(mark, err)
	switch {
	case safe:
		c.owner.stats.badConnRetries.Add(1)
	case notCommitted:
		c.owner.stats.notCommitted.Add(1)
		c.owner.logger.LogAttrs(ctx, slog.LevelInfo, "pgresilient: connection lost at COMMIT, the transaction did not commit",
			slog.String("cause", logCause(err)))
	default:
		c.owner.stats.connLost.Add(1)
		c.owner.logger.LogAttrs(ctx, slog.LevelWarn, "pgresilient: connection lost, outcome unknown",
			slog.String("op", string(op)), slog.Bool("in_tx", inTx), slog.String("cause", logCause(err)))
	}
	return &DisconnectError{Op: op, safe: safe, notCommitted: notCommitted, InTx: inTx, Err: err, known: !news}
}

// silencedCause returns err, the error of a statement on c, wrapped in the
// *HostSilentError that ended it, if the monitor did.
func (c *baseConn) silencedCause(err error) error {
	if err == nil {
		return nil
	}
	if cause := c.silenced.Load(); cause != nil {
		var de *DisconnectError
		if errors.As(err, &de) && !errors.Is(de.Err, cause) {
			de.Err = &silencedError{cause: cause, err: de.Err}
		}
	}
	return err
}
