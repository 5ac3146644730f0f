//go:build go1.27

package pgresilient

import (
	"context"
	"database/sql/driver"
	"reflect"
)

var (
	_ driver.RowsColumnScanner = (*scanRows)(nil)
	_ driver.RowsColumnScanner = (*chainRows)(nil)
	_ driver.StmtQueryContext  = (*chainStmt)(nil)
	_ driver.StmtExecContext   = (*chainStmt)(nil)
	_ driver.NamedValueChecker = (*chainStmt)(nil)
)

// scansColumns reports whether rows scan into the caller's destinations
// themselves.
func scansColumns(rows driver.Rows) bool {
	_, ok := rows.(driver.RowsColumnScanner)
	return ok
}

// NextRow moves to the next row, as Next does, without decoding it: the
// caller's Scan reads the columns through ScanColumn.
func (r *scanRows) NextRow() error {
	return r.advanced(r.Rows.(driver.RowsColumnScanner).NextRow())
}

// ScanColumn scans a column of the current row into dest. Its errors are
// conversions of data already read: nothing about the connection.
func (r *scanRows) ScanColumn(sc driver.ScanContext, index int, dest any) error {
	return r.Rows.(driver.RowsColumnScanner).ScanColumn(sc, index, dest)
}

// With interceptors, database/sql receives sqlmw's result set, which knows
// nothing of Go 1.27's RowsColumnScanner: Scan would fall back to
// database/sql's own conversions (no arrays, no ranges), and a nil
// destination would hang the Rows (database/sql panics holding its lock).
// chainRows puts the interface back above the chain: rows still move through
// sqlmw's Next, so the interceptors' RowsNext and RowsClose hooks run as
// before, and columns are scanned by the wrapped driver beneath.
type chainRows struct {
	driver.Rows // sqlmw's
	base        *scanRows
	row         []driver.Value // Next's destination, for the interceptors
}

// aboveChain returns the result set the interceptor chain returned,
// wrapped if its rows scan columns themselves.
func (c *baseConn) aboveChain(rows driver.Rows) driver.Rows {
	base := c.scanOut
	if base == nil {
		return rows
	}
	c.scanOut = nil
	return &chainRows{Rows: rows, base: base}
}

func (r *chainRows) NextRow() error {
	if r.row == nil {
		r.row = make([]driver.Value, len(r.Rows.Columns()))
	}
	return r.Rows.Next(r.row)
}

func (r *chainRows) ScanColumn(sc driver.ScanContext, index int, dest any) error {
	return r.base.ScanColumn(sc, index, dest)
}

func (r *chainRows) HasNextResultSet() bool { return r.base.HasNextResultSet() }
func (r *chainRows) NextResultSet() error   { return r.base.NextResultSet() }

func (r *chainRows) ColumnTypeDatabaseTypeName(i int) string {
	return r.base.ColumnTypeDatabaseTypeName(i)
}

func (r *chainRows) ColumnTypeLength(i int) (int64, bool) { return r.base.ColumnTypeLength(i) }

func (r *chainRows) ColumnTypeNullable(i int) (nullable, ok bool) {
	return r.base.ColumnTypeNullable(i)
}

func (r *chainRows) ColumnTypePrecisionScale(i int) (precision, scale int64, ok bool) {
	return r.base.ColumnTypePrecisionScale(i)
}

func (r *chainRows) ColumnTypeScanType(i int) reflect.Type { return r.base.ColumnTypeScanType(i) }

// chainStmt is sqlmw's prepared statement, whose result sets get the same
// treatment as a connection's.
type chainStmt struct {
	driver.Stmt // sqlmw's: it has every method below
	base        *baseConn
}

func aboveChainStmt(st driver.Stmt, base *baseConn) driver.Stmt {
	if base.pgx == nil {
		return st // only pgx's rows scan columns
	}
	return &chainStmt{Stmt: st, base: base}
}

func (s *chainStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	s.base.scanOut = nil
	rows, err := s.Stmt.(driver.StmtQueryContext).QueryContext(ctx, args)
	if err != nil {
		return nil, err
	}
	return s.base.aboveChain(rows), nil
}

func (s *chainStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.Stmt.(driver.StmtExecContext).ExecContext(ctx, args)
}

func (s *chainStmt) CheckNamedValue(nv *driver.NamedValue) error {
	if c, ok := s.Stmt.(driver.NamedValueChecker); ok {
		return c.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

// ColumnConverter keeps sqlmw's statement's converter.
func (s *chainStmt) ColumnConverter(idx int) driver.ValueConverter {
	//lint:ignore SA1019 forwarded for old drivers
	if c, ok := s.Stmt.(driver.ColumnConverter); ok {
		return c.ColumnConverter(idx)
	}
	return driver.DefaultParameterConverter
}
