package pgresilient

import (
	"context"
	"database/sql/driver"
	"io"
	"reflect"
)

// baseRows wraps a result set so that a connection lost while reading it is
// reported like one lost during the statement.
type baseRows struct {
	driver.Rows
	ctx    context.Context // the caller's
	sctx   context.Context // the statement's: ctx with the query_timeout deadline
	cancel context.CancelFunc
	conn   *baseConn
	failed error // the error Next returned, if any
	// own: this is the connection's own baseRows (baseConn.rows), handed
	// back to it by Close.
	own bool
}

// scanRows is baseRows for a result set whose wrapped rows scan columns
// themselves (Go 1.27's driver.RowsColumnScanner, which pgx implements): on
// Go 1.27 it has NextRow and ScanColumn (rows_go1.27.go), so database/sql
// hands pgx the caller's destinations, as without pgresilient. Before Go
// 1.27 it has baseRows' methods only.
type scanRows struct{ baseRows }

// wrapRows wraps the result set of a statement on c. Without interceptors,
// the one open at a time on a pgx connection is c's own, so that a query
// allocates no wrapper: only database/sql holds it, and it never calls a
// driver.Rows after Close. An interceptor could keep one past Close, and a
// second result set open on the same connection needs its own: those
// allocate. The wrapper has the wrapped rows' optional interfaces: a
// *scanRows when they scan columns themselves, a *baseRows otherwise.
func wrapRows(ctx, sctx context.Context, cancel context.CancelFunc, c *baseConn, rows driver.Rows) driver.Rows {
	var r *scanRows
	if c.owner.chain == nil && !c.rowsOut {
		c.rowsOut = true
		r = &c.rows
		r.baseRows = baseRows{Rows: rows, ctx: ctx, sctx: sctx, cancel: cancel, conn: c, own: true}
	} else {
		r = &scanRows{baseRows{Rows: rows, ctx: ctx, sctx: sctx, cancel: cancel, conn: c}}
	}
	if !scansColumns(rows) {
		return &r.baseRows
	}
	if c.owner.chain != nil {
		c.scanOut = r // sqlmw hides NextRow and ScanColumn: see aboveChain
	}
	return r
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
	return r.advanced(r.Rows.Next(dest))
}

// advanced turns the error of a move to the next row (Next, or NextRow on Go
// 1.27) into pgresilient's.
func (r *baseRows) advanced(err error) error {
	if err != nil && err != io.EOF { //nolint:errorlint // io.EOF is returned unwrapped by contract
		r.failed = err
		return r.conn.failTimed(r.ctx, r.sctx, OpRows, err, ran)
	}
	return err
}

func (r *baseRows) Close() error {
	if r.Rows == nil {
		return nil // a connection's own, closed and not handed out again
	}
	err := r.Rows.Close()
	r.cancel()
	r.conn.busy(false)
	if err != nil {
		err = r.conn.failTimed(r.ctx, r.sctx, OpRows, err, ran)
	} else if r.failed != nil {
		// An error surfaced in Next while pgx was still reading: now that
		// the result is drained, the transaction can be rolled back.
		r.conn.autoRollback(r.ctx, r.failed)
	}
	if r.own {
		c := r.conn
		*r = baseRows{} // nothing of this result set outlives it
		c.rowsOut = false
	}
	return err
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
			return r.conn.failTimed(r.ctx, r.sctx, OpRows, err, ran)
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
