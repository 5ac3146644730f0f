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
// It also accepts a raw *stdlib.Conn. The *pgx.Conn must not be used after
// the callback returns. If it is left inside a transaction or broken,
// pgresilient discards or resets it when it returns to the pool.
func PgxConn(driverConn any) (*pgx.Conn, error) {
	for range 8 { // a few layers at most; never loop forever on a cycle
		switch c := driverConn.(type) {
		case *stdlib.Conn:
			return c.Conn(), nil
		case interface{ Unwrap() driver.Conn }:
			driverConn = c.Unwrap()
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

	// gen is the owner's invalidation generation this connection was last
	// known good at; a newer owner generation means "verify before reuse".
	gen    uint64
	broken atomic.Bool
	inTx   atomic.Bool
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

// fail turns an error of the wrapped driver into pgresilient's and records
// what it says about the connection. sent is false for an operation that
// cannot have had an effect on the server even if it reached it.
func (c *baseConn) fail(ctx context.Context, op string, err error) error {
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
		c.broken.Store(true)
		c.owner.stats.connLost.Add(1)
		return &DisconnectError{Op: op, InTx: c.inTx.Load(), Err: err}
	default:
		if !c.innerClosed() {
			return err
		}
		// The wrapped driver closed the connection over an error that is
		// not a disconnect in itself (a protocol error, say).
	}

	c.broken.Store(true)
	c.owner.invalidate(op, err)
	inTx := c.inTx.Load()
	safe := !inTx && (errors.Is(err, driver.ErrBadConn) || pgconn.SafeToRetry(err))
	if safe {
		c.owner.stats.badConnRetries.Add(1)
	} else {
		c.owner.stats.connLost.Add(1)
		c.owner.logger.LogAttrs(ctx, slog.LevelWarn, "pgresilient: connection lost, outcome unknown",
			slog.String("op", op), slog.Bool("in_tx", inTx), slog.String("cause", errString(err)))
	}
	return &DisconnectError{Op: op, Safe: safe, InTx: inTx, Err: err}
}

// deadline gives ctx the query_timeout deadline when it has none. cancel is
// never nil.
func (c *baseConn) deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	d := c.owner.cfg.QueryTimeout
	if d <= 0 {
		return ctx, noCancel
	}
	if _, ok := ctx.Deadline(); ok {
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
// that derived context.
func (c *baseConn) failTimed(ctx, stmtCtx context.Context, op string, err error) error {
	if stmtCtx != ctx && ctx.Err() == nil && stmtCtx.Err() != nil {
		err = &timeoutError{d: c.owner.cfg.QueryTimeout, err: err}
	}
	return c.fail(ctx, op, err)
}

// usable returns driver.ErrBadConn if the connection is known broken: nothing
// is sent on it, and database/sql retries elsewhere.
func (c *baseConn) usable(op string) error {
	if c.broken.Load() || c.innerClosed() {
		c.broken.Store(true)
		if c.inTx.Load() {
			return &DisconnectError{Op: op, InTx: true, Err: pgconn.ErrConnClosed}
		}
		return driver.ErrBadConn
	}
	return nil
}

func (c *baseConn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *baseConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if err := c.usable("prepare"); err != nil {
		return nil, err
	}
	var (
		st  driver.Stmt
		err error
	)
	sctx, cancel := c.deadline(ctx)
	if c.preparer != nil {
		st, err = c.preparer.PrepareContext(sctx, query)
	} else {
		if err = ctx.Err(); err == nil {
			st, err = c.inner.Prepare(query)
		}
	}
	cancel()
	if err != nil {
		return nil, c.failTimed(ctx, sctx, "prepare", err)
	}
	return &baseStmt{inner: st, conn: c}, nil
}

func (c *baseConn) Close() error { return c.inner.Close() }

func (c *baseConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *baseConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
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
	if c.beginner != nil {
		tx, err = c.beginner.BeginTx(ctx, opts)
	} else {
		if err = ctx.Err(); err == nil {
			tx, err = c.inner.Begin() //nolint:staticcheck // the fallback for drivers without BeginTx
		}
	}
	if err != nil {
		return nil, c.fail(ctx, "begin", err)
	}
	c.inTx.Store(true)
	return &baseTx{inner: tx, conn: c, ctx: ctx}, nil
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
	ptx, err := c.pgx.Conn().BeginTx(sctx, popts)
	cancel()
	if err != nil {
		return nil, c.failTimed(ctx, sctx, "begin", err)
	}
	c.inTx.Store(true)
	return &baseTx{pgx: ptx, conn: c, ctx: ctx}, nil
}

func (c *baseConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if c.execer == nil {
		return nil, driver.ErrSkip
	}
	if err := c.usable("exec"); err != nil {
		return nil, err
	}
	sctx, cancel := c.deadline(ctx)
	res, err := c.execer.ExecContext(sctx, query, args)
	cancel()
	if err != nil {
		return nil, c.failTimed(ctx, sctx, "exec", err)
	}
	return res, nil
}

func (c *baseConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if c.queryer == nil {
		return nil, driver.ErrSkip
	}
	if err := c.usable("query"); err != nil {
		return nil, err
	}
	sctx, cancel := c.deadline(ctx)
	rows, err := c.queryer.QueryContext(sctx, query, args)
	if err != nil {
		cancel()
		return nil, c.failTimed(ctx, sctx, "query", err)
	}
	return wrapRows(ctx, sctx, cancel, c, rows), nil
}

// Ping checks the connection with a round trip. A failure is always safe to
// retry: a ping changes nothing on the server.
func (c *baseConn) Ping(ctx context.Context) error {
	if err := c.usable("ping"); err != nil {
		return err
	}
	p, ok := c.inner.(driver.Pinger)
	if !ok {
		return nil
	}
	if err := p.Ping(ctx); err != nil {
		if classify(ctx, err) == classCanceled {
			if c.innerClosed() {
				c.broken.Store(true)
			}
			return ctx.Err()
		}
		c.broken.Store(true)
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
func (c *baseConn) ResetSession(ctx context.Context) error {
	if c.broken.Load() || c.innerClosed() {
		return driver.ErrBadConn
	}
	c.inTx.Store(false) // database/sql returns a connection only after its Tx ended

	verify := false
	if c.peek != nil {
		switch c.peek.state() {
		case peekDead:
			c.discard(ctx, "closed by the server while idle")
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
	if c.resetter != nil {
		if err := c.resetter.ResetSession(ctx); err != nil {
			c.broken.Store(true)
			return driver.ErrBadConn
		}
	}
	return nil
}

// verify pings the connection within a short deadline; on failure it marks it
// broken and returns driver.ErrBadConn.
func (c *baseConn) verify(ctx context.Context) error {
	pc := c.pgConn()
	if pc == nil {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.owner.verifyTimeout)
		defer cancel()
	}
	if err := pc.Ping(ctx); err != nil {
		c.discard(ctx, "failed verification: "+errString(err))
		return driver.ErrBadConn
	}
	return nil
}

func (c *baseConn) discard(ctx context.Context, why string) {
	c.broken.Store(true)
	c.owner.stats.discarded.Add(1)
	c.owner.logger.LogAttrs(ctx, slog.LevelDebug, "pgresilient: discarding pooled connection",
		slog.String("why", why))
}

// IsValid runs when database/sql returns the connection to the pool: false
// discards it.
func (c *baseConn) IsValid() bool {
	if c.broken.Load() || c.innerClosed() {
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

func (t *baseTx) end(op string) (err error, sctx context.Context) {
	if t.pgx == nil {
		if op == "commit" {
			return t.inner.Commit(), t.ctx
		}
		return t.inner.Rollback(), t.ctx
	}
	sctx, cancel := t.conn.deadline(t.ctx)
	defer cancel()
	if op == "commit" {
		return t.pgx.Commit(sctx), sctx
	}
	return t.pgx.Rollback(sctx), sctx
}

func (t *baseTx) Commit() error {
	defer t.conn.inTx.Store(false)
	if err := t.conn.usable("commit"); err != nil {
		return err
	}
	err, sctx := t.end("commit")
	if err != nil {
		if errors.Is(err, pgx.ErrTxCommitRollback) || classify(t.ctx, err) != classGone && !t.conn.innerClosed() {
			return err
		}
		return t.conn.failTimed(t.ctx, sctx, "commit", err)
	}
	return nil
}

func (t *baseTx) Rollback() error {
	defer t.conn.inTx.Store(false)
	if t.conn.broken.Load() || t.conn.innerClosed() {
		// The server ends the transaction with the session.
		t.conn.broken.Store(true)
		return nil
	}
	err, _ := t.end("rollback")
	if err != nil && (classify(t.ctx, err) == classGone || t.conn.innerClosed()) {
		// The server rolls back a transaction whose connection is gone:
		// the rollback's outcome is known.
		t.conn.broken.Store(true)
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
	return s.inner.Exec(args) //nolint:staticcheck // database/sql never calls it: StmtExecContext exists
}

func (s *baseStmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.inner.Query(args) //nolint:staticcheck // database/sql never calls it: StmtQueryContext exists
}

func (s *baseStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if err := s.conn.usable("exec"); err != nil {
		return nil, err
	}
	var (
		res driver.Result
		err error
	)
	sctx, cancel := s.conn.deadline(ctx)
	defer cancel()
	if e, ok := s.inner.(driver.StmtExecContext); ok {
		res, err = e.ExecContext(sctx, args)
	} else {
		var vals []driver.Value
		if vals, err = namedToValues(args); err == nil {
			if err = ctx.Err(); err == nil {
				res, err = s.inner.Exec(vals) //nolint:staticcheck // fallback for old drivers
			}
		}
	}
	if err != nil {
		return nil, s.conn.failTimed(ctx, sctx, "exec", err)
	}
	return res, nil
}

func (s *baseStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if err := s.conn.usable("query"); err != nil {
		return nil, err
	}
	var (
		rows driver.Rows
		err  error
	)
	sctx, cancel := s.conn.deadline(ctx)
	if q, ok := s.inner.(driver.StmtQueryContext); ok {
		rows, err = q.QueryContext(sctx, args)
	} else {
		var vals []driver.Value
		if vals, err = namedToValues(args); err == nil {
			if err = ctx.Err(); err == nil {
				rows, err = s.inner.Query(vals) //nolint:staticcheck // fallback for old drivers
			}
		}
	}
	if err != nil {
		cancel()
		return nil, s.conn.failTimed(ctx, sctx, "query", err)
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
	if c, ok := s.inner.(driver.ColumnConverter); ok { //nolint:staticcheck // forwarded for old drivers
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
		return r.conn.failTimed(r.ctx, r.sctx, "rows", err)
	}
	return err
}

func (r *baseRows) Close() error {
	err := r.Rows.Close()
	r.cancel()
	if err != nil {
		return r.conn.failTimed(r.ctx, r.sctx, "rows", err)
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
			return r.conn.failTimed(r.ctx, r.sctx, "rows", err)
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
