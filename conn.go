package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
	"sync/atomic"

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
	return c.PrepareContext(context.Background(), query)
}

func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	st, err := c.preparer.PrepareContext(ctx, query)
	if err != nil || c.top == driver.Conn(c.base) {
		return st, err
	}
	return aboveChainStmt(st, c.base), nil
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
	if c.top == driver.Conn(c.base) {
		return c.queryer.QueryContext(ctx, query, args)
	}
	c.base.scanOut = nil
	rows, err := c.queryer.QueryContext(ctx, query, args)
	if err != nil {
		return nil, err
	}
	return c.base.aboveChain(rows), nil
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
	// The fields every statement and every checkout reads come first, so
	// that they share as few cache lines as possible: between two uses of a
	// connection the application (and, on one CPU, the server) evicts them,
	// and each line is then a miss (docs/performance.md).
	owner     *Connector
	pgx       *stdlib.Conn          // nil when wrapping another driver
	queryer   driver.QueryerContext // nil if inner lacks it
	peek      *peeker               // nil if the socket cannot be peeked at
	wire      *countingConn         // counts bytes written; nil when wrapping another driver
	resetter  driver.SessionResetter
	validator driver.Validator
	useClock  // when to check it before reuse (idle.go)
	// gen is the owner's invalidation generation this connection was last
	// known good at; a newer owner generation means "verify before reuse".
	gen uint64
	// openPass is the breaker's openedAt when this connection answered its
	// reuse check while the breaker was open: its calls pass the breaker
	// for that open period (breaker.wait). 0 otherwise. Touched only by
	// database/sql's holder of the conn.
	openPass int64
	pooled   atomic.Int32 // poolBusy, poolIdle or poolSwept: see sweep
	broken   atomic.Bool
	rowsOut  bool
	txState  // the open sql.Tx (tx.go)
	// rows is the result set wrapper wrapRows hands out, rowsOut while it
	// is; touched only by database/sql's holder of the conn.
	rows scanRows
	// scanOut is the result set wrapRows handed up into the interceptor
	// chain, while its wrapped rows scan columns themselves: conn puts it
	// back above the chain (rows_go1.27.go). Touched only by database/sql's
	// holder of the conn.
	scanOut *scanRows
	// busyAt is the host monitor's tick when the statement in flight began;
	// 0 while none is. silenced is set when the monitor ended it.
	busyAt   atomic.Uint32
	silenced atomic.Pointer[HostSilentError]

	inner    driver.Conn
	execer   driver.ExecerContext // nil if inner lacks it
	preparer driver.ConnPrepareContext
	beginner driver.ConnBeginTx
	checker  driver.NamedValueChecker
	opened   openedRole // what the server reported when the connection opened
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
		c.opened = roleOf(pc.Conn().PgConn())
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

// usable returns driver.ErrBadConn if the connection is known broken: nothing
// is sent on it, and database/sql retries elsewhere.
func (c *baseConn) usable(op Op) error {
	if c.broken.Load() || c.innerClosed() || c.cancelPending() {
		c.markBroken(discardLost)
		if c.inTx.Load() {
			return &DisconnectError{Op: op, InTx: true, Err: pgconn.ErrConnClosed, known: true}
		}
		return &DisconnectError{Op: op, safe: true, Err: pgconn.ErrConnClosed, known: true}
	}
	return nil
}

func (c *baseConn) Close() error {
	c.owner.forget(c)
	c.owner.stats.closed.Add(1)
	if c.pooled.CompareAndSwap(poolIdle, poolBusy) {
		c.owner.idle.taken() // database/sql closed it in its pool
	}
	err := c.inner.Close()
	if c.pooled.Load() == poolSwept {
		return nil // sweep closed its socket: pgx's goodbye could not be sent, as expected
	}
	return err
}

func (c *baseConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if c.execer == nil {
		return nil, driver.ErrSkip // database/sql prepares instead
	}
	return gate(ctx, c, func() (driver.Result, error) { return c.exec(ctx, query, args) })
}

func (c *baseConn) exec(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if err := c.usable(OpExec); err != nil {
		return nil, err
	}
	if err := c.guard(query); err != nil {
		return nil, err
	}
	sctx, cancel := c.deadline(ctx)
	m := c.wire.mark()
	c.busy(true)
	res, err := c.execer.ExecContext(sctx, query, args)
	c.busy(false)
	if err != nil {
		var final bool
		if res, m, final, err = retryStale(c, ctx, sctx, query, err, m, func() (driver.Result, error) {
			return c.execer.ExecContext(sctx, query, args)
		}); final {
			cancel()
			return nil, err
		}
	}
	cancel()
	if err != nil {
		return nil, c.failStmt(ctx, sctx, OpExec, query, err, m)
	}
	if err := c.raceAfterCancel(ctx, OpExec); err != nil {
		return nil, err
	}
	return res, nil
}

func (c *baseConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if c.queryer == nil {
		return nil, driver.ErrSkip // database/sql prepares instead
	}
	return gate(ctx, c, func() (driver.Rows, error) { return c.query(ctx, query, args) })
}

func (c *baseConn) query(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if err := c.usable(OpQuery); err != nil {
		return nil, err
	}
	if err := c.guard(query); err != nil {
		return nil, err
	}
	sctx, cancel := c.deadline(ctx)
	m := c.wire.mark()
	c.busy(true) // until the result set is closed (baseRows.Close)
	rows, err := c.queryer.QueryContext(sctx, query, args)
	if err != nil {
		var final bool
		if rows, m, final, err = retryStale(c, ctx, sctx, query, err, m, func() (driver.Rows, error) {
			return c.queryer.QueryContext(sctx, query, args)
		}); final {
			cancel()
			return nil, err
		}
	}
	if err != nil {
		cancel()
		c.busy(false)
		return nil, c.failStmt(ctx, sctx, OpQuery, query, err, m)
	}
	if err := c.raceAfterCancel(ctx, OpQuery); err != nil {
		_ = rows.Close()
		cancel()
		c.busy(false)
		return nil, err
	}
	return wrapRows(ctx, sctx, cancel, c, rows), nil
}

// Ping checks the connection with a round trip. A failure is always safe to
// retry: a ping changes nothing on the server.
func (c *baseConn) Ping(ctx context.Context) error {
	_, err := gate(ctx, c, func() (struct{}, error) { return struct{}{}, c.ping(ctx) })
	return err
}

func (c *baseConn) ping(ctx context.Context) error {
	if err := c.usable(OpPing); err != nil {
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
		return &DisconnectError{Op: OpPing, safe: true, Err: err}
	}
	return nil
}

func (c *baseConn) CheckNamedValue(nv *driver.NamedValue) error {
	if c.checker != nil {
		return c.checker.CheckNamedValue(nv)
	}
	return driver.ErrSkip // database/sql's default conversion
}
