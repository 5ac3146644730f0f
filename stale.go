package pgresilient

import (
	"context"
	"errors"
	"log/slog"

	"github.com/jackc/pgx/v5"
)

// This file makes a schema change under traffic invisible to statements
// that pgx had prepared and cached before it (docs/migrations.md).
//
// pgx (default_query_exec_mode cache_statement) prepares each statement
// with arguments once per connection and then only binds and executes it.
// After ALTER TABLE t ADD COLUMN, PostgreSQL refuses a cached `select * from
// t` with 0A000 "cached plan must not change result type" when it
// revalidates the plan, before running anything; a statement the session no
// longer knows (DISCARD ALL, a pooler) is refused with 26000 "prepared
// statement ... does not exist", before running anything too. pgx drops the
// cache entry of any statement that failed, and prepares it afresh at its
// next use on that connection. So:
//
//   - outside a transaction the statement runs again at once, on the same
//     connection, on a fresh plan: nothing ran the first time. A second
//     refusal in a row is returned, never looped on;
//   - in a transaction where nothing but BEGIN was sent yet, the transaction
//     is rolled back and begun again with the same options, and the
//     statement run again: nothing of the transaction was lost;
//   - later in a transaction, the server aborted it: pgresilient rolls it
//     back and the statement and Commit return a TxAbortedError that says
//     why (the schema changed under the cached statement; run the
//     transaction again).
//
// Each pooled connection holds its own cache, so each meets the change once;
// the retry makes each of those first refusals invisible, for the price of
// one round trip, and only on the connections that use the statement. So no
// connection drops its cache ahead of time (DeallocateAll would cost a round
// trip on every connection, and a new Parse for every other statement).
//
// Nothing of this costs anything while no statement is refused: the checks
// run on the error path only.
//
// A transaction pooler (PgBouncer, pool_mode=transaction) refuses pgx's
// cached statements for another reason: consecutive statements of one client
// connection run on different server connections, so a statement pgx
// prepared on one is missing on the next (26000), or another client already
// prepared the same name on it (42P05: pgx names its cached statements after
// their text, stmtcache_<hash>). Both are refused at Parse or Bind, before
// anything runs. The first 42P05 on a stmtcache_ name, or a second refusal
// of one after the run again above, switches the Connector, once, to
// default_query_exec_mode=exec for its new connections (unnamed statements,
// one round trip; TestPgBouncerExecModes measured it, with cache_describe, as
// the modes that work there), logged at Warn and counted in
// Stats.ExecModeSwitches. A connection opened before the switch that meets
// such a refusal outside a transaction is discarded and the statement handed
// to database/sql as driver.ErrBadConn: it runs again on another connection,
// and database/sql's last try is on a new one. Recognising PgBouncer at
// connect was not possible: it relays the server's ParameterStatus and
// says nothing of its own, and under session pooling the cache works.

// StaleStatementError is what a transaction's TxAbortedError wraps when the
// server refused one of its cached statements because the schema changed
// under it (or the session lost it). errors.As finds the server's
// *pgconn.PgError beneath.
type StaleStatementError struct {
	Err error // the server's error: SQLSTATE 0A000 or 26000
}

// Error says what happened and what to do.
func (e *StaleStatementError) Error() string {
	return "pgresilient: the schema changed under the transaction's cached statement (its prepared form is stale), " +
		"so the server refused it and aborted the transaction; nothing of it committed, run the transaction again: " + errString(e.Err)
}

// Unwrap returns the server's error.
func (e *StaleStatementError) Unwrap() error { return e.Err }

// retryStale is called with the error of a statement that the server may
// have refused as stale; run runs the statement again. It returns what the
// caller goes on with: the result and error (of the second run, if there
// was one), the mark that error is to be judged from, and final: the error
// is pgresilient's already (a TxAbortedError, or the connection lost while
// beginning again), to return as it is, not through failStmt. query is the
// statement's text, "" for a prepared statement.
func retryStale[T any](c *baseConn, ctx, stmtCtx context.Context, query string, err error, mark int64,
	run func() (T, error)) (res T, _ int64, final bool, _ error) {
	if !staleStatement(err) || !singleStatement(query) {
		return res, mark, false, err
	}
	pooler := c.pgx != nil && cachedRefused(err)
	if pooler && (c.owner.execMode.Load() || isCode(err, codeDuplicatePrepared)) {
		c.owner.useExecMode(ctx, err)
		if !c.inTx.Load() {
			return res, mark, true, c.poolerRefused(ctx, err)
		}
	}
	if c.inTx.Load() {
		if c.aborted.Load() != nil || c.tx == nil || c.tx.pgx == nil || c.wire == nil ||
			mark != c.tx.mark || c.savepoint.Load() {
			final := c.abortStale(ctx, err)
			return res, mark, final, c.abortedOr(err)
		}
		// Nothing but BEGIN was sent in this transaction: begin it again.
		if rerr := c.restartTx(ctx, stmtCtx); rerr != nil {
			return res, mark, true, rerr
		}
	}
	c.owner.stats.staleRetries.Add(1)
	c.owner.logger.LogAttrs(ctx, slog.LevelDebug, "pgresilient: stale cached statement run again on a fresh plan",
		slog.Bool("in_tx", c.inTx.Load()), slog.String("cause", logCause(err)))
	mark = c.wire.mark()
	res, err = run()
	if err != nil && !c.inTx.Load() && c.pgx != nil && cachedRefused(err) {
		// Refused again, by a transaction pooler.
		c.owner.useExecMode(ctx, err)
		return res, mark, true, c.poolerRefused(ctx, err)
	}
	if err != nil && c.inTx.Load() && staleStatement(err) {
		// Refused again, after the transaction began again: it is aborted.
		final := c.abortStale(ctx, err)
		return res, mark, final, c.abortedOr(err)
	}
	return res, mark, false, err // refused twice in a row outside a transaction: returned, never looped on
}

// abortStale rolls back the transaction whose statement the server refused
// as stale after other statements had run in it, as autoRollback does, but
// with a TxAbortedError that says why. It reports whether it did; it does
// nothing with tx_autorollback=off or after a SAVEPOINT (the application
// recovers itself), or if the transaction was rolled back already.
func (c *baseConn) abortStale(ctx context.Context, err error) bool {
	if c.aborted.Load() != nil {
		return false
	}
	c.autoRollback(ctx, &StaleStatementError{Err: err})
	return c.aborted.Load() != nil
}

// abortedOr is the error to return after abortStale: the TxAbortedError if
// the transaction was rolled back, else err.
func (c *baseConn) abortedOr(err error) error {
	if a := c.aborted.Load(); a != nil {
		return a
	}
	return err
}

// restartTx rolls back the current transaction, in which nothing but BEGIN
// had run before the refused statement, and begins it again with the same
// options. On failure the transaction is gone: the error is returned, and
// also by its later statements and Commit.
func (c *baseConn) restartTx(ctx, stmtCtx context.Context) error {
	if err := c.rollbackNow(ctx); err != nil {
		return c.failTimed(ctx, stmtCtx, OpRollback, err, ran)
	}
	popts, err := pgxTxOptions(c.tx.opts) // accepted by the first BEGIN
	if err != nil {
		c.aborted.Store(&TxAbortedError{Err: err})
		return err
	}
	m := c.wire.mark()
	ptx, err := c.pgx.Conn().BeginTx(stmtCtx, popts)
	if err != nil {
		ferr := c.failTimed(ctx, stmtCtx, OpBegin, err, m)
		if !c.broken.Load() {
			c.aborted.Store(&TxAbortedError{Err: ferr})
		}
		return ferr
	}
	c.tx.pgx = ptx
	c.tx.mark = c.wire.mark()
	return nil
}

// isStaleAbort reports whether err is a transaction's TxAbortedError over a
// stale cached statement, which RunTx runs again: the server ran nothing of
// the refused statement, rolled the transaction back, and the connection
// prepares the statement afresh at its next use.
func isStaleAbort(err error) bool {
	var se *StaleStatementError
	return errors.Is(err, ErrTxAborted) && errors.As(err, &se)
}

// useExecMode switches the Connector, once, to QueryExecModeExec for its new
// connections: a transaction pooler refused one of pgx's cached statements.
func (c *Connector) useExecMode(ctx context.Context, err error) {
	if !c.execMode.CompareAndSwap(false, true) {
		return
	}
	c.stats.execModeSwitches.Add(1)
	c.logger.LogAttrs(ctx, slog.LevelWarn,
		"pgresilient: a transaction pooler refused pgx's cached statements: new connections use default_query_exec_mode=exec (set it in the DSN to start with it)",
		slog.String("cause", logCause(err)))
}

// connMode is part of the BeforeConnect hook of pgx's connector: after the
// switch, a new connection uses QueryExecModeExec instead of pgx's default
// statement cache. A mode the DSN chose otherwise is left alone.
func (c *Connector) connMode(cc *pgx.ConnConfig) {
	if c.execMode.Load() && cc.DefaultQueryExecMode == pgx.QueryExecModeCacheStatement {
		cc.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
}

// poolerRefused discards the connection whose cached statement a
// transaction pooler refused, outside a transaction, and returns the error
// that hands the statement to database/sql as driver.ErrBadConn: nothing of
// it ran (refused at Parse or Bind), and the connection would meet the same
// refusal again. Not a breaker failure: the server answered.
func (c *baseConn) poolerRefused(ctx context.Context, err error) error {
	c.markBroken(discardLost)
	c.owner.stats.badConnRetries.Add(1)
	c.owner.logger.LogAttrs(ctx, slog.LevelDebug, "pgresilient: cached statement refused by a transaction pooler: run again on another connection",
		slog.String("cause", logCause(err)))
	return &DisconnectError{Op: OpPrepare, safe: true, Err: err, known: true}
}
