package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
)

func (c *baseConn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *baseConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return gate(ctx, c, func() (driver.Stmt, error) { return c.prepare(ctx, query) })
}

func (c *baseConn) prepare(ctx context.Context, query string) (driver.Stmt, error) {
	if err := c.usable(OpPrepare); err != nil {
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
	m := c.wire.mark()
	c.busy(true)
	if c.preparer != nil {
		st, err = c.preparer.PrepareContext(sctx, query)
	} else {
		if err = ctx.Err(); err == nil {
			st, err = c.inner.Prepare(query)
		}
	}
	c.busy(false)
	cancel()
	if err != nil {
		return nil, placeholderHint(c.failTimed(ctx, sctx, OpPrepare, err, m), query)
	}
	return &baseStmt{inner: st, conn: c}, nil
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
	return gate(ctx, s.conn, func() (driver.Result, error) { return s.exec(ctx, args) })
}

func (s *baseStmt) exec(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if err := s.conn.usable(OpExec); err != nil {
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
	m := s.conn.wire.mark()
	s.conn.busy(true)
	defer s.conn.busy(false)
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
		return nil, s.conn.failStmt(ctx, sctx, OpExec, "", err, m)
	}
	if err := s.conn.raceAfterCancel(ctx, OpExec); err != nil {
		return nil, err
	}
	return res, nil
}

func (s *baseStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return gate(ctx, s.conn, func() (driver.Rows, error) { return s.query(ctx, args) })
}

func (s *baseStmt) query(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if err := s.conn.usable(OpQuery); err != nil {
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
	m := s.conn.wire.mark()
	s.conn.busy(true) // until the result set is closed (baseRows.Close)
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
		s.conn.busy(false)
		return nil, s.conn.failStmt(ctx, sctx, OpQuery, "", err, m)
	}
	if err := s.conn.raceAfterCancel(ctx, OpQuery); err != nil {
		_ = rows.Close()
		cancel()
		s.conn.busy(false)
		return nil, err
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
