package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"log/slog"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// txState is a connection's sql.Tx: whether one is open, what pgresilient
// knows of it, and its wrapper.
type txState struct {
	inTx atomic.Bool // a sql.Tx is open on this connection
	// savepoint: the application issued SAVEPOINT in the current sql.Tx, so
	// it recovers from failures itself: no automatic rollback.
	savepoint atomic.Bool
	// aborted is the first failure of the current sql.Tx after pgresilient
	// rolled it back; nil otherwise.
	aborted atomic.Pointer[TxAbortedError]
	tx      *baseTx // the open sql.Tx; touched only by database/sql's holder of the conn
}

// startTx records a sql.Tx begun.
func (s *txState) startTx() {
	s.savepoint.Store(false)
	s.aborted.Store(nil)
	s.inTx.Store(true)
}

// endTx forgets the sql.Tx.
func (s *txState) endTx() {
	if s.tx == nil && !s.inTx.Load() && !s.savepoint.Load() && s.aborted.Load() == nil {
		return // nothing to clear: no atomic store (each a full barrier) per checkout
	}
	s.tx = nil
	s.aborted.Store(nil)
	s.savepoint.Store(false)
	s.inTx.Store(false)
}

// guard refuses statements in a sql.Tx that pgresilient already rolled back,
// and notes SAVEPOINTs.
func (s *txState) guard(query string) error {
	if !s.inTx.Load() {
		return nil
	}
	if a := s.aborted.Load(); a != nil {
		return a
	}
	if isSavepoint(query) {
		s.savepoint.Store(true)
	}
	return nil
}

// autoRollback rolls back the current sql.Tx on the server right away when a
// statement in it failed and the server reports the transaction failed, so
// the session leaves the aborted state at once rather than waiting, "idle in
// transaction (aborted)", for the application (PostgreSQL itself already
// released the transaction's locks when the statement failed: measured in
// TestTxUniqueViolation). Later statements and Commit then return a
// TxAbortedError without sending anything. It does nothing with
// tx_autorollback=off, outside a sql.Tx, or once the application issued a
// SAVEPOINT in the transaction (it then recovers with ROLLBACK TO SAVEPOINT).
func (c *baseConn) autoRollback(ctx context.Context, cause error) {
	if c.owner.cfg.DisableTxAutoRollback || !c.inTx.Load() || c.savepoint.Load() || c.aborted.Load() != nil {
		return
	}
	if pc := c.pgConn(); pc != nil {
		if pc.TxStatus() != 'E' || pc.IsBusy() {
			return
		}
		if err := c.rollbackNow(ctx); err != nil {
			return
		}
	} else {
		// Another driver (go-sqlmock): no transaction status to read. A
		// server error aborts a PostgreSQL transaction, so roll back.
		var pgErr *pgconn.PgError
		if !errors.As(cause, &pgErr) || c.tx == nil || c.tx.inner == nil {
			return
		}
		if err := c.tx.inner.Rollback(); err != nil {
			if classify(ctx, err) == classGone {
				c.markBroken(discardLost)
			}
			return
		}
	}
	c.aborted.Store(&TxAbortedError{Err: cause})
	c.owner.stats.autoRollbacks.Add(1)
	c.owner.logger.LogAttrs(ctx, slog.LevelDebug, "pgresilient: transaction rolled back after a failed statement",
		slog.String("cause", logCause(cause)))
}

// rollbackNow sends ROLLBACK on the pgx connection, within the verification
// timeout and whatever the caller's context says: the point is to release
// the server's locks. On failure the connection is marked broken.
func (c *baseConn) rollbackNow(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.owner.verifyTimeout)
	defer cancel()
	pc := c.pgConn()
	err := pc.Exec(ctx, "rollback").Close()
	if err != nil || pc.TxStatus() != 'I' {
		c.markBroken(discardRollback)
		if err == nil {
			err = errors.New("pgresilient: rollback left the connection in a transaction")
		}
		return err
	}
	return nil
}

// isSavepoint reports whether query starts with the SAVEPOINT keyword.
func isSavepoint(query string) bool {
	i := 0
	for i < len(query) && (query[i] == ' ' || query[i] == '\t' || query[i] == '\n' || query[i] == '\r') {
		i++
	}
	const kw = "savepoint"
	if len(query)-i < len(kw) {
		return false
	}
	for j := 0; j < len(kw); j++ {
		if query[i+j]|0x20 != kw[j] {
			return false
		}
	}
	return len(query)-i == len(kw) || !isIdentByte(query[i+len(kw)])
}

func isIdentByte(b byte) bool {
	return b == '_' || b >= '0' && b <= '9' || b|0x20 >= 'a' && b|0x20 <= 'z'
}

func (c *baseConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *baseConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return gate(ctx, c, func() (driver.Tx, error) { return c.begin(ctx, opts) })
}

func (c *baseConn) begin(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if err := c.usable(OpBegin); err != nil {
		return nil, err
	}
	if c.pgx != nil {
		return c.beginPgx(ctx, opts)
	}
	var (
		tx  driver.Tx
		err error
	)
	m := c.wire.mark()
	if c.beginner != nil {
		tx, err = c.beginner.BeginTx(ctx, opts)
	} else {
		if err = ctx.Err(); err == nil {
			//lint:ignore SA1019 the fallback for drivers without BeginTx
			tx, err = c.inner.Begin()
		}
	}
	if err != nil {
		return nil, c.fail(ctx, OpBegin, err, m)
	}
	c.tx = &baseTx{inner: tx, conn: c, ctx: ctx}
	c.startTx()
	return c.tx, nil
}

// beginPgx begins through pgx directly rather than through stdlib, whose Tx
// commits with BeginTx's context: pgresilient gives COMMIT and ROLLBACK a
// query_timeout deadline of their own.
func (c *baseConn) beginPgx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	popts, err := pgxTxOptions(opts)
	if err != nil {
		return nil, err
	}
	sctx, cancel := c.deadline(ctx)
	m := c.wire.mark()
	ptx, err := c.pgx.Conn().BeginTx(sctx, popts)
	cancel()
	if err != nil {
		return nil, c.failTimed(ctx, sctx, OpBegin, err, m)
	}
	c.tx = &baseTx{pgx: ptx, conn: c, ctx: ctx, opts: opts, mark: c.wire.mark()}
	c.startTx()
	return c.tx, nil
}

// pgxTxOptions is database/sql's transaction options in pgx's terms.
func pgxTxOptions(opts driver.TxOptions) (pgx.TxOptions, error) {
	var popts pgx.TxOptions
	switch sql.IsolationLevel(opts.Isolation) {
	case sql.LevelDefault:
	case sql.LevelReadUncommitted:
		popts.IsoLevel = pgx.ReadUncommitted
	case sql.LevelReadCommitted:
		popts.IsoLevel = pgx.ReadCommitted
	case sql.LevelRepeatableRead, sql.LevelSnapshot:
		popts.IsoLevel = pgx.RepeatableRead
	case sql.LevelSerializable:
		popts.IsoLevel = pgx.Serializable
	default:
		return popts, errors.New("pgresilient: unsupported isolation level " + sql.IsolationLevel(opts.Isolation).String())
	}
	if opts.ReadOnly {
		popts.AccessMode = pgx.ReadOnly
	}
	return popts, nil
}

// baseTx wraps a transaction: pgx's own, or the wrapped driver's.
type baseTx struct {
	pgx   pgx.Tx
	inner driver.Tx
	conn  *baseConn
	ctx   context.Context  // BeginTx's: database/sql's context for the whole transaction
	opts  driver.TxOptions // BeginTx's, to begin again (retryStale); set over pgx only
	mark  int64            // c.wire.mark() after BEGIN: equal at a statement's start, nothing but BEGIN was sent
}

// end sends COMMIT or ROLLBACK; it returns the context the statement ran
// under (with its query_timeout deadline, if any).
func (t *baseTx) end(op Op) (context.Context, error) {
	if t.pgx == nil {
		if op == OpCommit {
			return t.ctx, t.inner.Commit()
		}
		return t.ctx, t.inner.Rollback()
	}
	sctx, cancel := t.conn.deadline(t.ctx)
	defer cancel()
	if op == OpCommit {
		return sctx, t.commitPgx(sctx)
	}
	return sctx, t.pgx.Rollback(sctx)
}

// errCommittedThenLost is commitPgx's word for a COMMIT whose CommandComplete
// "COMMIT" arrived before the connection failed: the transaction committed.
type errCommittedThenLost struct{ err error }

func (e *errCommittedThenLost) Error() string { return errString(e.err) }
func (e *errCommittedThenLost) Unwrap() error { return e.err }

// commitPgx sends COMMIT as pgx's Tx.Commit does, but keeps what pgx's
// Commit drops: the command tag read before an error. A FATAL (or a
// deadline, a reset) after the server's CommandComplete "COMMIT" does not
// undo the commit; such an error comes back as errCommittedThenLost.
func (t *baseTx) commitPgx(ctx context.Context) error {
	conn := t.pgx.Conn()
	tag, err := conn.Exec(ctx, "commit")
	if err != nil {
		if tag.String() == "COMMIT" {
			return &errCommittedThenLost{err: err}
		}
		if conn.PgConn().TxStatus() != 'I' {
			_ = conn.Close(ctx) // as pgx's Commit: the error says more
		}
		return err
	}
	if tag.String() == "ROLLBACK" {
		return pgx.ErrTxCommitRollback
	}
	return nil
}

// Commit is counted by the breaker but never rejected: a transaction under
// way on a live connection is finished, not thrown away, when other calls
// open the breaker. Rollback is neither rejected nor counted.
func (t *baseTx) Commit() error {
	err := t.commit()
	t.conn.owner.breaker.done(t.ctx, err)
	return err
}

func (t *baseTx) commit() error {
	defer t.conn.endTx()
	if a := t.conn.aborted.Load(); a != nil {
		return a // rolled back already: nothing to commit
	}
	if t.conn.broken.Load() || t.conn.innerClosed() {
		// The connection broke before COMMIT (a statement of the
		// transaction lost it): COMMIT is never sent, and the server rolls
		// the transaction back with the session.
		t.conn.markBroken(discardLost)
		t.conn.owner.stats.notCommitted.Add(1)
		return &DisconnectError{Op: OpCommit, InTx: true, notCommitted: true, Err: pgconn.ErrConnClosed, known: true}
	}
	m := t.conn.wire.mark()
	t.conn.busy(true) // a COMMIT waiting on a silent server is one the host monitor ends
	sctx, err := t.end(OpCommit)
	t.conn.busy(false)
	if err != nil {
		var lost *errCommittedThenLost
		if errors.As(err, &lost) {
			// Committed: the server said so before the connection failed.
			if t.conn.innerClosed() {
				t.conn.markBroken(discardLost)
			}
			t.conn.owner.logger.LogAttrs(t.ctx, slog.LevelInfo, "pgresilient: connection lost after the server confirmed COMMIT",
				slog.String("cause", logCause(lost.err)))
			return nil
		}
		if errors.Is(err, pgx.ErrTxCommitRollback) || classify(t.ctx, err) != classGone && !t.conn.innerClosed() {
			return err
		}
		return t.conn.failTimed(t.ctx, sctx, OpCommit, err, m)
	}
	return t.conn.raceAfterCancel(t.ctx, OpCommit)
}

// commitNotRun reports whether a COMMIT that failed with err, sent after
// mark, certainly did not commit: no byte of it was written, or the server
// refused it with a FATAL before its CommandComplete (refusedCommit). Only
// over pgx, where pgresilient counts the bytes and reads COMMIT's tag
// itself; another driver's COMMIT stays unknown.
func (c *baseConn) commitNotRun(mark int64, err error) bool {
	if c.pgx == nil {
		return false
	}
	return c.wire != nil && c.wire.written.Load() == mark || refusedCommit(err)
}

func (t *baseTx) Rollback() error {
	defer t.conn.endTx()
	if t.conn.aborted.Load() != nil {
		return nil // rolled back already
	}
	if t.conn.broken.Load() || t.conn.innerClosed() {
		// The server ends the transaction with the session.
		t.conn.markBroken(discardLost)
		return nil
	}
	_, err := t.end(OpRollback)
	if err != nil && (classify(t.ctx, err) == classGone || t.conn.innerClosed()) {
		// The server rolls back a transaction whose connection is gone:
		// the rollback's outcome is known.
		t.conn.markBroken(discardLost)
		return nil
	}
	return err
}
