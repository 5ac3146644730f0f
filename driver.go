package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"strings"

	"github.com/jackc/pgx/v5/stdlib"
)

// DriverName is the name pgresilient registers with database/sql.
const DriverName = "pgresilient"

func init() {
	sql.Register(DriverName, &Driver{})
}

var (
	_ driver.Driver        = (*Driver)(nil)
	_ driver.DriverContext = (*Driver)(nil)
	_ driver.Connector     = (*Connector)(nil)
	_ io.Closer            = (*Connector)(nil)
)

// Driver is the database/sql driver registered as "pgresilient". It
// implements driver.DriverContext, so sql.Open parses the DSN once per
// *sql.DB and every connection of that *sql.DB shares one Connector: one
// breaker, one pool invalidation state.
type Driver struct {
	c *Connector // the Connector whose Driver method returned it; nil for the registered one
}

// Open opens one connection with a Connector of its own. database/sql never
// calls it, since Driver implements driver.DriverContext.
func (d *Driver) Open(dsn string) (driver.Conn, error) {
	c, err := NewConnector(dsn)
	if err != nil {
		return nil, err
	}
	return c.Connect(context.Background())
}

// OpenConnector parses dsn, as NewConnector does with no options.
func (d *Driver) OpenConnector(dsn string) (driver.Connector, error) {
	return NewConnector(dsn)
}

func neverPing(context.Context, stdlib.ShouldPingParams) bool { return false }

// dsnConnector adapts a driver without DriverContext.
type dsnConnector struct {
	dsn string
	d   driver.Driver
}

func (t dsnConnector) Connect(ctx context.Context) (driver.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dc, err := t.d.Open(t.dsn)
	if err != nil && strings.Contains(err.Error(), sqlmockNoConn) {
		return nil, errors.Join(errSqlmockDSN, err)
	}
	return dc, err
}

// sqlmockNoConn is go-sqlmock's answer to an Open whose DSN names no mock:
// its driver finds connections by the DSN they were made with.
const sqlmockNoConn = "expected a connection to be available"

var errSqlmockDSN = errors.New("pgresilient: go-sqlmock knows its connections by DSN: " +
	"make the mock with sqlmock.NewWithDSN(dsn) (not sqlmock.New) and give NewConnector the same dsn")

func (t dsnConnector) Driver() driver.Driver { return t.d }
