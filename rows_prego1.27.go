//go:build !go1.27

package pgresilient

import "database/sql/driver"

// Before Go 1.27, database/sql/driver has no RowsColumnScanner: result sets
// and statements need nothing more than baseRows and sqlmw's.

func scansColumns(driver.Rows) bool { return false }

func (c *baseConn) aboveChain(rows driver.Rows) driver.Rows { return rows }

func aboveChainStmt(st driver.Stmt, _ *baseConn) driver.Stmt { return st }
