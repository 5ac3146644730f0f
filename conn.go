package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// The layers of one connection, from database/sql down:
//
//	conn      what database/sql holds: Raw's escape hatch, ResetSession, IsValid
//	sqlmw     the interceptor chain: user interceptors, then the built-in ones
//	baseConn  per-connection state and the error model (classifier, ErrBadConn rule)
//	pgx       *stdlib.Conn, or the wrapped driver's conn (go-sqlmock in tests)
//
// sqlmw keeps no per-connection state and has no hook for ResetSession,
// IsValid or Close, so what needs a connection's state lives in baseConn,
// beneath the chain: user interceptors see the errors pgresilient returns.

var (
	_ driver.Conn               = (*conn)(nil)
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.Pinger             = (*conn)(nil)
	_ driver.NamedValueChecker  = (*conn)(nil)
	_ driver.SessionResetter    = (*conn)(nil)
	_ driver.Validator          = (*conn)(nil)

	_ driver.Conn               = (*baseConn)(nil)
	_ driver.ConnBeginTx        = (*baseConn)(nil)
	_ driver.ConnPrepareContext = (*baseConn)(nil)
	_ driver.ExecerContext      = (*baseConn)(nil)
	_ driver.QueryerContext     = (*baseConn)(nil)
	_ driver.Pinger             = (*baseConn)(nil)
	_ driver.NamedValueChecker  = (*baseConn)(nil)
	_ driver.SessionResetter    = (*baseConn)(nil)
	_ driver.Validator          = (*baseConn)(nil)
)

// conn is the connection database/sql holds. It forwards statements to the
// interceptor chain and answers ResetSession and IsValid from baseConn.
type conn struct {
	top      driver.Conn // the outermost layer of the chain
	execer   driver.ExecerContext
	queryer  driver.QueryerContext
	preparer driver.ConnPrepareContext
	beginner driver.ConnBeginTx
	pinger   driver.Pinger
	checker  driver.NamedValueChecker // nil if the chain has none
	base     *baseConn
}

func newConn(top driver.Conn, base *baseConn) *conn {
	c := &conn{top: top, base: base}
	// sqlmw's connection implements all of these; so does baseConn, used
	// directly when there is no interceptor. Fall back to base otherwise.
	var ok bool
	if c.execer, ok = top.(driver.ExecerContext); !ok {
		c.execer = base
	}
	if c.queryer, ok = top.(driver.QueryerContext); !ok {
		c.queryer = base
	}
	if c.preparer, ok = top.(driver.ConnPrepareContext); !ok {
		c.preparer = base
	}
	if c.beginner, ok = top.(driver.ConnBeginTx); !ok {
		c.beginner = base
	}
	if c.pinger, ok = top.(driver.Pinger); !ok {
		c.pinger = base
	}
	c.checker, _ = top.(driver.NamedValueChecker)
	return c
}

func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.preparer.PrepareContext(context.Background(), query)
}

func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return c.preparer.PrepareContext(ctx, query)
}

func (c *conn) Close() error { return c.top.Close() }

func (c *conn) Begin() (driver.Tx, error) {
	return c.beginner.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return c.beginner.BeginTx(ctx, opts)
}

func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return c.execer.ExecContext(ctx, query, args)
}

func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	return c.queryer.QueryContext(ctx, query, args)
}

func (c *conn) Ping(ctx context.Context) error { return c.pinger.Ping(ctx) }

func (c *conn) CheckNamedValue(nv *driver.NamedValue) error {
	if c.checker != nil {
		return c.checker.CheckNamedValue(nv)
	}
	return c.base.CheckNamedValue(nv)
}

func (c *conn) ResetSession(ctx context.Context) error { return c.base.ResetSession(ctx) }

func (c *conn) IsValid() bool { return c.base.IsValid() }

// Unwrap returns the wrapped driver's connection: a *stdlib.Conn unless
// WithDriver chose another driver. See PgxConn.
func (c *conn) Unwrap() driver.Conn { return c.base.inner }

// PgxConn returns the *pgx.Conn beneath a connection that
// (*sql.Conn).Raw hands its callback, for what database/sql cannot express
// (COPY, LISTEN/NOTIFY):
//
//	err := sqlConn.Raw(func(dc any) error {
//		pc, err := pgresilient.PgxConn(dc)
//		if err != nil {
//			return err
//		}
//		_, err = pc.CopyFrom(ctx, pgx.Identifier{"t"}, cols, src)
//		return err
//	})
//
// It also accepts a raw *stdlib.Conn, and sees through the wrappers that
// instrumentation libraries put around a driver's connection: those with an
// Unwrap() driver.Conn method (pgresilient's own, ngrok/sqlmw) and those with
// a Raw() driver.Conn method (XSAM/otelsql), a few layers deep. The *pgx.Conn
// must not be used after the callback returns. If it is left inside a
// transaction or broken, pgresilient discards or resets it when it returns to
// the pool.
func PgxConn(driverConn any) (*pgx.Conn, error) {
	for range 8 { // a few layers at most; never loop forever on a cycle
		switch c := driverConn.(type) {
		case *stdlib.Conn:
			return c.Conn(), nil
		case interface{ Unwrap() driver.Conn }:
			driverConn = c.Unwrap()
		case interface{ Raw() driver.Conn }:
			driverConn = c.Raw()
		default:
			return nil, errNotPgx
		}
	}
	return nil, errNotPgx
}

var errNotPgx = errors.New("pgresilient: not a pgx connection")

// baseConn sits beneath the interceptor chain, over the wrapped driver's
// connection. It owns the connection's state and turns the wrapped driver's
// errors into pgresilient's: driver.ErrBadConn only when nothing reached the
// server, ErrConnLost when something may have.
type baseConn struct {
	inner driver.Conn
	pgx   *stdlib.Conn // nil when wrapping another driver
	owner *Connector

	execer    driver.ExecerContext  // nil if inner lacks it
	queryer   driver.QueryerContext // nil if inner lacks it
	preparer  driver.ConnPrepareContext
	beginner  driver.ConnBeginTx
	checker   driver.NamedValueChecker
	resetter  driver.SessionResetter
	validator driver.Validator

	peek *peeker // nil if the socket cannot be peeked at
	// lastReset is when ResetSession last ran (zero: never, like pgx's own
	// record).
	lastReset time.Time
	wire      *countingConn // counts bytes written; nil when wrapping another driver
	tx        *baseTx       // the open sql.Tx; touched only by database/sql's holder of the conn

	// gen is the owner's invalidation generation this connection was last
	// known good at; a newer owner generation means "verify before reuse".
	gen    uint64
	broken atomic.Bool
	inTx   atomic.Bool // a sql.Tx is open on this connection
	// savepoint: the application issued SAVEPOINT in the current sql.Tx, so
	// it recovers from failures itself: no automatic rollback.
	savepoint atomic.Bool
	// aborted is the first failure of the current sql.Tx after pgresilient
	// rolled it back; nil otherwise.
	aborted atomic.Pointer[TxAbortedError]
}

func newBaseConn(owner *Connector, inner driver.Conn) *baseConn {
	c := &baseConn{inner: inner, owner: owner, gen: owner.gen.Load()}
	c.execer, _ = inner.(driver.ExecerContext)
	c.queryer, _ = inner.(driver.QueryerContext)
	c.preparer, _ = inner.(driver.ConnPrepareContext)
	c.beginner, _ = inner.(driver.ConnBeginTx)
	c.checker, _ = inner.(driver.NamedValueChecker)
	c.resetter, _ = inner.(driver.SessionResetter)
	c.validator, _ = inner.(driver.Validator)
	if pc, ok := inner.(*stdlib.Conn); ok {
		c.pgx = pc
		c.peek = newPeeker(pc.Conn().PgConn().Conn())
		c.wire = findCounting(pc.Conn().PgConn().Conn())
	}
	return c
}

// pgConn returns the pgconn beneath, or nil.
func (c *baseConn) pgConn() *pgconn.PgConn {
	if c.pgx == nil {
		return nil
	}
	return c.pgx.Conn().PgConn()
}

// innerClosed reports whether the wrapped driver knows its connection closed.
func (c *baseConn) innerClosed() bool {
	pc := c.pgConn()
	return pc != nil && pc.IsClosed()
}

// mark returns the count of bytes written so far, to pass to fail: an
// operation is safe to retry only if nothing was written since.
func (c *baseConn) mark() int64 {
	if c.wire == nil {
		return 0
	}
	return c.wire.written.Load()
}

// ran is the mark of an operation that certainly reached the server (an
// error while reading a result set).
const ran = -1

// safeToRetry reports whether nothing of the failed operation that started at
// mark reached the server. Over pgx that is read off the socket's byte count,
// whatever pgx says; over another driver, pgx's rule: driver.ErrBadConn or
// SafeToRetry.
func (c *baseConn) safeToRetry(mark int64, err error) bool {
	if mark == ran {
		return false
	}
	if c.wire != nil {
		return c.wire.written.Load() == mark
	}
	return errors.Is(err, driver.ErrBadConn) || pgconn.SafeToRetry(err)
}

// noEffect reports whether op changes nothing on the server even when it
// reached it: BEGIN opens a transaction the broken session takes with it,
// PREPARE only parses. Outside a transaction, retrying them elsewhere is
// safe whatever was sent.
func noEffect(op string) bool { return op == "begin" || op == "prepare" }

// fail turns an error of the wrapped driver into pgresilient's and records
// what it says about the connection. mark is what c.mark() returned before
// the operation started.
func (c *baseConn) fail(ctx context.Context, op string, err error, mark int64) error {
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
		// statement may have run.
		c.markBroken(discardLost)
		c.owner.stats.connLost.Add(1)
		return &DisconnectError{Op: op, InTx: c.inTx.Load(), Err: err}
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
	safe := !inTx && (noEffect(op) || c.safeToRetry(mark, err))
	if safe {
		c.owner.stats.badConnRetries.Add(1)
	} else {
		c.owner.stats.connLost.Add(1)
		c.owner.logger.LogAttrs(ctx, slog.LevelWarn, "pgresilient: connection lost, outcome unknown",
			slog.String("op", op), slog.Bool("in_tx", inTx), slog.String("cause", logCause(err)))
	}
	return &DisconnectError{Op: op, Safe: safe, InTx: inTx, Err: err, known: !news}
}

// deadline bounds ctx by query_timeout. cancel is never nil.
func (c *baseConn) deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	return within(ctx, c.owner.cfg.QueryTimeout)
}

// within bounds ctx by d from now, unless d is 0 or ctx ends no later
// anyway: the earlier deadline wins, the caller's or ours. cancel is never
// nil.
func within(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return ctx, noCancel
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
		return ctx, noCancel
	}
	return context.WithTimeout(ctx, d)
}

func noCancel() {}

// timeoutError names query_timeout as the reason a statement was cut short.
type timeoutError struct {
	d   time.Duration
	err error
}

func (e *timeoutError) Error() string {
	return "query_timeout " + e.d.String() + " exceeded: " + errString(e.err)
}

func (e *timeoutError) Unwrap() error { return e.err }

// failTimed is fail for an operation run under c.deadline(ctx): stmtCtx is
// that derived context, possibly cancelled already. Only its deadline having
// fired (a context's error is set once, so a later cancel does not hide it)
// labels the error as query_timeout's.
func (c *baseConn) failTimed(ctx, stmtCtx context.Context, op string, err error, mark int64) error {
	if stmtCtx != ctx && ctx.Err() == nil && errors.Is(stmtCtx.Err(), context.DeadlineExceeded) {
		err = &timeoutError{d: c.owner.cfg.QueryTimeout, err: err}
	}
	return c.fail(ctx, op, err, mark)
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

// guard refuses statements in a sql.Tx that pgresilient already rolled back,
// and notes SAVEPOINTs.
func (c *baseConn) guard(query string) error {
	if !c.inTx.Load() {
		return nil
	}
	if a := c.aborted.Load(); a != nil {
		return a
	}
	if isSavepoint(query) {
		c.savepoint.Store(true)
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

// usable returns driver.ErrBadConn if the connection is known broken: nothing
// is sent on it, and database/sql retries elsewhere.
func (c *baseConn) usable(op string) error {
	if c.broken.Load() || c.innerClosed() {
		c.markBroken(discardLost)
		if c.inTx.Load() {
			return &DisconnectError{Op: op, InTx: true, Err: pgconn.ErrConnClosed, known: true}
		}
		return &DisconnectError{Op: op, Safe: true, Err: pgconn.ErrConnClosed, known: true}
	}
	return nil
}

func (c *baseConn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

// The breaker gates every call that may reach the server from here, beneath
// the user's interceptors (they see its rejections) and above the error
// model (it counts what the error model concluded). With breaker=off,
// owner.breaker is nil and its methods do nothing.

// gate runs call behind b: rejected at once while b is open, counted by its
// error otherwise. call does not escape: the closure costs no allocation.
func gate[T any](ctx context.Context, b *breaker, call func() (T, error)) (T, error) {
	probe, err := b.before()
	if err != nil {
		var zero T
		return zero, err
	}
	v, err := call()
	b.done(ctx, probe, err)
	return v, err
}

func (c *baseConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return gate(ctx, c.owner.breaker, func() (driver.Stmt, error) { return c.prepare(ctx, query) })
}

func (c *baseConn) prepare(ctx context.Context, query string) (driver.Stmt, error) {
	if err := c.usable("prepare"); err != nil {
		return nil, err
	}
	if err := c.guard(query); err != nil {
		return nil, err
	}
	var (
		st  driver.Stmt
		err error
	)
	sctx, cancel := c.deadline(ctx)
	m := c.mark()
	if c.preparer != nil {
		st, err = c.preparer.PrepareContext(sctx, query)
	} else {
		if err = ctx.Err(); err == nil {
			st, err = c.inner.Prepare(query)
		}
	}
	cancel()
	if err != nil {
		return nil, c.failTimed(ctx, sctx, "prepare", err, m)
	}
	return &baseStmt{inner: st, conn: c}, nil
}

func (c *baseConn) Close() error {
	c.owner.stats.closed.Add(1)
	return c.inner.Close()
}

func (c *baseConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *baseConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return gate(ctx, c.owner.breaker, func() (driver.Tx, error) { return c.begin(ctx, opts) })
}

func (c *baseConn) begin(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if err := c.usable("begin"); err != nil {
		return nil, err
	}
	if c.pgx != nil {
		return c.beginPgx(ctx, opts)
	}
	var (
		tx  driver.Tx
		err error
	)
	m := c.mark()
	if c.beginner != nil {
		tx, err = c.beginner.BeginTx(ctx, opts)
	} else {
		if err = ctx.Err(); err == nil {
			//lint:ignore SA1019 the fallback for drivers without BeginTx
			tx, err = c.inner.Begin()
		}
	}
	if err != nil {
		return nil, c.fail(ctx, "begin", err, m)
	}
	c.tx = &baseTx{inner: tx, conn: c, ctx: ctx}
	c.startTx()
	return c.tx, nil
}

// beginPgx begins through pgx directly rather than through stdlib, whose Tx
// commits with BeginTx's context: pgresilient gives COMMIT and ROLLBACK a
// query_timeout deadline of their own.
func (c *baseConn) beginPgx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
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
		return nil, errors.New("pgresilient: unsupported isolation level " + sql.IsolationLevel(opts.Isolation).String())
	}
	if opts.ReadOnly {
		popts.AccessMode = pgx.ReadOnly
	}
	sctx, cancel := c.deadline(ctx)
	m := c.mark()
	ptx, err := c.pgx.Conn().BeginTx(sctx, popts)
	cancel()
	if err != nil {
		return nil, c.failTimed(ctx, sctx, "begin", err, m)
	}
	c.tx = &baseTx{pgx: ptx, conn: c, ctx: ctx}
	c.startTx()
	return c.tx, nil
}

func (c *baseConn) startTx() {
	c.savepoint.Store(false)
	c.aborted.Store(nil)
	c.inTx.Store(true)
}

// endTx forgets the sql.Tx.
func (c *baseConn) endTx() {
	c.tx = nil
	c.aborted.Store(nil)
	c.savepoint.Store(false)
	c.inTx.Store(false)
}

func (c *baseConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if c.execer == nil {
		return nil, driver.ErrSkip // database/sql prepares instead
	}
	return gate(ctx, c.owner.breaker, func() (driver.Result, error) { return c.exec(ctx, query, args) })
}

func (c *baseConn) exec(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if err := c.usable("exec"); err != nil {
		return nil, err
	}
	if err := c.guard(query); err != nil {
		return nil, err
	}
	sctx, cancel := c.deadline(ctx)
	m := c.mark()
	res, err := c.execer.ExecContext(sctx, query, args)
	cancel()
	if err != nil {
		return nil, c.failTimed(ctx, sctx, "exec", err, m)
	}
	return res, nil
}

func (c *baseConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if c.queryer == nil {
		return nil, driver.ErrSkip // database/sql prepares instead
	}
	return gate(ctx, c.owner.breaker, func() (driver.Rows, error) { return c.query(ctx, query, args) })
}

func (c *baseConn) query(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if err := c.usable("query"); err != nil {
		return nil, err
	}
	if err := c.guard(query); err != nil {
		return nil, err
	}
	sctx, cancel := c.deadline(ctx)
	m := c.mark()
	rows, err := c.queryer.QueryContext(sctx, query, args)
	if err != nil {
		cancel()
		return nil, c.failTimed(ctx, sctx, "query", err, m)
	}
	return wrapRows(ctx, sctx, cancel, c, rows), nil
}

// Ping checks the connection with a round trip. A failure is always safe to
// retry: a ping changes nothing on the server.
func (c *baseConn) Ping(ctx context.Context) error {
	_, err := gate(ctx, c.owner.breaker, func() (struct{}, error) { return struct{}{}, c.ping(ctx) })
	return err
}

func (c *baseConn) ping(ctx context.Context) error {
	if err := c.usable("ping"); err != nil {
		return err
	}
	p, ok := c.inner.(driver.Pinger)
	if !ok {
		return nil
	}
	sctx, cancel := c.deadline(ctx)
	defer cancel()
	if err := p.Ping(sctx); err != nil {
		if classify(ctx, err) == classCanceled {
			if c.innerClosed() {
				c.markBroken(discardLost)
			}
			return ctx.Err()
		}
		c.markBroken(discardLost)
		return &DisconnectError{Op: "ping", Safe: true, Err: err}
	}
	return nil
}

func (c *baseConn) CheckNamedValue(nv *driver.NamedValue) error {
	if c.checker != nil {
		return c.checker.CheckNamedValue(nv)
	}
	return driver.ErrSkip // database/sql's default conversion
}

// ResetSession runs when database/sql takes the connection from the pool
// again. It returns driver.ErrBadConn (nothing was sent: database/sql retries
// on another connection) for a connection that is broken, that the server
// already closed, or that fails verification after a pool invalidation.
//
// Its one possible round trip, verify's ping (after a second idle, on the
// first reuse, when bytes are pending, after a pool invalidation), is bounded
// by the verification timeout, 2s or query_timeout if shorter, or by ctx's
// deadline if that comes first. A blackholed connection then costs that
// much, not forever.
func (c *baseConn) ResetSession(ctx context.Context) error {
	if c.broken.Load() || c.innerClosed() {
		return driver.ErrBadConn
	}
	c.endTx() // database/sql reuses a connection only after its Tx ended

	// A connection idle for over a second, or reused for the first time
	// since it was dialled, is pinged: pgx's own rule, which pgresilient
	// applies itself (pgx's is turned off with OptionShouldPing) so that
	// every round trip of a reuse goes through verify and its deadline.
	now := time.Now()
	verify := c.pgx != nil && (c.lastReset.IsZero() || now.Sub(c.lastReset) > idlePingAfter)
	c.lastReset = now
	if c.peek != nil {
		switch c.peek.state() {
		case peekDead:
			c.discard(ctx, discardIdle, "closed while idle")
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
	if verify {
		if err := c.verify(ctx); err != nil {
			return err
		}
		c.gen = gen
	}
	if !c.clean(ctx) {
		return driver.ErrBadConn
	}
	if c.resetter != nil {
		if err := c.resetter.ResetSession(ctx); err != nil {
			c.markBroken(discardLost)
			return driver.ErrBadConn
		}
	}
	return nil
}

// idlePingAfter is how long a pooled connection may sit idle before its
// reuse pings it (pgx's default, which pgresilient takes over).
const idlePingAfter = time.Second

// verify pings the connection within the verification timeout, or ctx's
// deadline if sooner; on failure it marks it broken and returns
// driver.ErrBadConn.
// It is the only round trip of a reuse: only it needs a timer.
func (c *baseConn) verify(ctx context.Context) error {
	pc := c.pgConn()
	if pc == nil {
		return nil
	}
	ctx, cancel := within(ctx, c.owner.verifyTimeout)
	defer cancel()
	c.owner.stats.verifications.Add(1)
	if err := pc.Ping(ctx); err != nil {
		c.discard(ctx, discardVerify, "failed verification: "+logCause(err))
		return driver.ErrBadConn
	}
	return nil
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
	return true
}

// baseTx wraps a transaction: pgx's own, or the wrapped driver's.
type baseTx struct {
	pgx   pgx.Tx
	inner driver.Tx
	conn  *baseConn
	ctx   context.Context // BeginTx's: database/sql's context for the whole transaction
}

// end sends COMMIT or ROLLBACK; it returns the context the statement ran
// under (with its query_timeout deadline, if any).
func (t *baseTx) end(op string) (context.Context, error) {
	if t.pgx == nil {
		if op == "commit" {
			return t.ctx, t.inner.Commit()
		}
		return t.ctx, t.inner.Rollback()
	}
	sctx, cancel := t.conn.deadline(t.ctx)
	defer cancel()
	if op == "commit" {
		return sctx, t.pgx.Commit(sctx)
	}
	return sctx, t.pgx.Rollback(sctx)
}

// Commit is counted by the breaker but never rejected: a transaction under
// way on a live connection is finished, not thrown away, when other calls
// open the breaker. Rollback is neither rejected nor counted.
func (t *baseTx) Commit() error {
	err := t.commit()
	t.conn.owner.breaker.done(t.ctx, nil, err)
	return err
}

func (t *baseTx) commit() error {
	defer t.conn.endTx()
	if a := t.conn.aborted.Load(); a != nil {
		return a // rolled back already: nothing to commit
	}
	if err := t.conn.usable("commit"); err != nil {
		return err
	}
	m := t.conn.mark()
	sctx, err := t.end("commit")
	if err != nil {
		if errors.Is(err, pgx.ErrTxCommitRollback) || classify(t.ctx, err) != classGone && !t.conn.innerClosed() {
			return err
		}
		return t.conn.failTimed(t.ctx, sctx, "commit", err, m)
	}
	return nil
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
	_, err := t.end("rollback")
	if err != nil && (classify(t.ctx, err) == classGone || t.conn.innerClosed()) {
		// The server rolls back a transaction whose connection is gone:
		// the rollback's outcome is known.
		t.conn.markBroken(discardLost)
		return nil
	}
	return err
}

// baseStmt wraps a prepared statement of the wrapped driver.
type baseStmt struct {
	inner driver.Stmt
	conn  *baseConn
}

var (
	_ driver.StmtExecContext   = (*baseStmt)(nil)
	_ driver.StmtQueryContext  = (*baseStmt)(nil)
	_ driver.NamedValueChecker = (*baseStmt)(nil)
)

func (s *baseStmt) Close() error { return s.inner.Close() }

func (s *baseStmt) NumInput() int { return s.inner.NumInput() }

func (s *baseStmt) Exec(args []driver.Value) (driver.Result, error) {
	//lint:ignore SA1019 database/sql never calls it: StmtExecContext exists
	return s.inner.Exec(args)
}

func (s *baseStmt) Query(args []driver.Value) (driver.Rows, error) {
	//lint:ignore SA1019 database/sql never calls it: StmtQueryContext exists
	return s.inner.Query(args)
}

func (s *baseStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return gate(ctx, s.conn.owner.breaker, func() (driver.Result, error) { return s.exec(ctx, args) })
}

func (s *baseStmt) exec(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if err := s.conn.usable("exec"); err != nil {
		return nil, err
	}
	if err := s.conn.guard(""); err != nil {
		return nil, err
	}
	var (
		res driver.Result
		err error
	)
	sctx, cancel := s.conn.deadline(ctx)
	defer cancel()
	m := s.conn.mark()
	if e, ok := s.inner.(driver.StmtExecContext); ok {
		res, err = e.ExecContext(sctx, args)
	} else {
		var vals []driver.Value
		if vals, err = namedToValues(args); err == nil {
			if err = ctx.Err(); err == nil {
				//lint:ignore SA1019 fallback for old drivers
				res, err = s.inner.Exec(vals)
			}
		}
	}
	if err != nil {
		return nil, s.conn.failTimed(ctx, sctx, "exec", err, m)
	}
	return res, nil
}

func (s *baseStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return gate(ctx, s.conn.owner.breaker, func() (driver.Rows, error) { return s.query(ctx, args) })
}

func (s *baseStmt) query(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if err := s.conn.usable("query"); err != nil {
		return nil, err
	}
	if err := s.conn.guard(""); err != nil {
		return nil, err
	}
	var (
		rows driver.Rows
		err  error
	)
	sctx, cancel := s.conn.deadline(ctx)
	m := s.conn.mark()
	if q, ok := s.inner.(driver.StmtQueryContext); ok {
		rows, err = q.QueryContext(sctx, args)
	} else {
		var vals []driver.Value
		if vals, err = namedToValues(args); err == nil {
			if err = ctx.Err(); err == nil {
				//lint:ignore SA1019 fallback for old drivers
				rows, err = s.inner.Query(vals)
			}
		}
	}
	if err != nil {
		cancel()
		return nil, s.conn.failTimed(ctx, sctx, "query", err, m)
	}
	return wrapRows(ctx, sctx, cancel, s.conn, rows), nil
}

func (s *baseStmt) CheckNamedValue(nv *driver.NamedValue) error {
	if c, ok := s.inner.(driver.NamedValueChecker); ok {
		return c.CheckNamedValue(nv)
	}
	return s.conn.CheckNamedValue(nv)
}

// ColumnConverter keeps the wrapped statement's converter for drivers that
// still use it (go-sqlmock does).
func (s *baseStmt) ColumnConverter(idx int) driver.ValueConverter {
	//lint:ignore SA1019 forwarded for old drivers
	if c, ok := s.inner.(driver.ColumnConverter); ok {
		return c.ColumnConverter(idx)
	}
	return driver.DefaultParameterConverter
}

var errNamedArg = errors.New("pgresilient: the wrapped driver does not support named arguments")

func namedToValues(named []driver.NamedValue) ([]driver.Value, error) {
	vals := make([]driver.Value, len(named))
	for i, nv := range named {
		if nv.Name != "" {
			return nil, errNamedArg
		}
		vals[i] = nv.Value
	}
	return vals, nil
}

// baseRows wraps a result set so that a connection lost while reading it is
// reported like one lost during the statement.
type baseRows struct {
	driver.Rows
	ctx    context.Context // the caller's
	sctx   context.Context // the statement's: ctx with the query_timeout deadline
	cancel context.CancelFunc
	conn   *baseConn
	failed error // the error Next returned, if any
}

func wrapRows(ctx, sctx context.Context, cancel context.CancelFunc, c *baseConn, rows driver.Rows) driver.Rows {
	return &baseRows{Rows: rows, ctx: ctx, sctx: sctx, cancel: cancel, conn: c}
}

var (
	_ driver.RowsNextResultSet              = (*baseRows)(nil)
	_ driver.RowsColumnTypeDatabaseTypeName = (*baseRows)(nil)
	_ driver.RowsColumnTypeLength           = (*baseRows)(nil)
	_ driver.RowsColumnTypeNullable         = (*baseRows)(nil)
	_ driver.RowsColumnTypePrecisionScale   = (*baseRows)(nil)
	_ driver.RowsColumnTypeScanType         = (*baseRows)(nil)
)

func (r *baseRows) Next(dest []driver.Value) error {
	err := r.Rows.Next(dest)
	if err != nil && err != io.EOF { //nolint:errorlint // io.EOF is returned unwrapped by contract
		r.failed = err
		return r.conn.failTimed(r.ctx, r.sctx, "rows", err, ran)
	}
	return err
}

func (r *baseRows) Close() error {
	err := r.Rows.Close()
	r.cancel()
	if err != nil {
		return r.conn.failTimed(r.ctx, r.sctx, "rows", err, ran)
	}
	if r.failed != nil {
		// An error surfaced in Next while pgx was still reading: now that
		// the result is drained, the transaction can be rolled back.
		r.conn.autoRollback(r.ctx, r.failed)
	}
	return nil
}

func (r *baseRows) HasNextResultSet() bool {
	if n, ok := r.Rows.(driver.RowsNextResultSet); ok {
		return n.HasNextResultSet()
	}
	return false
}

func (r *baseRows) NextResultSet() error {
	if n, ok := r.Rows.(driver.RowsNextResultSet); ok {
		if err := n.NextResultSet(); err != nil && err != io.EOF { //nolint:errorlint // see Next
			return r.conn.failTimed(r.ctx, r.sctx, "rows", err, ran)
		} else if err != nil {
			return err
		}
		return nil
	}
	return io.EOF
}

func (r *baseRows) ColumnTypeDatabaseTypeName(i int) string {
	if t, ok := r.Rows.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return t.ColumnTypeDatabaseTypeName(i)
	}
	return ""
}

func (r *baseRows) ColumnTypeLength(i int) (int64, bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypeLength); ok {
		return t.ColumnTypeLength(i)
	}
	return 0, false
}

func (r *baseRows) ColumnTypeNullable(i int) (nullable, ok bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypeNullable); ok {
		return t.ColumnTypeNullable(i)
	}
	return false, false
}

func (r *baseRows) ColumnTypePrecisionScale(i int) (precision, scale int64, ok bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypePrecisionScale); ok {
		return t.ColumnTypePrecisionScale(i)
	}
	return 0, 0, false
}

var anyType = reflect.TypeFor[any]()

func (r *baseRows) ColumnTypeScanType(i int) reflect.Type {
	if t, ok := r.Rows.(driver.RowsColumnTypeScanType); ok {
		return t.ColumnTypeScanType(i)
	}
	return anyType
}
