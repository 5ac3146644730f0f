package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/ngrok/sqlmw"
)

// Option sets a Go-only setting of NewConnector: what a DSN cannot express.
type Option func(*options) error

type options struct {
	logger        *slog.Logger
	interceptors  []sqlmw.Interceptor
	beforeConnect func(context.Context, *pgx.ConnConfig) error
	afterConnect  func(context.Context, *pgx.Conn) error
	driver        driver.Driver
	stateChange   func(from, to BreakerState)
}

// WithLogger sets the logger for the rare events: breaker transitions, pool
// invalidations, connections lost with an unknown outcome, automatic
// rollbacks. The default discards everything; slog.Default() is never used
// implicitly. Statements, arguments and DSNs are never logged.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return errors.New("pgresilient: WithLogger: nil logger")
		}
		o.logger = l
		return nil
	}
}

// WithBeforeConnect sets pgx's hook run before every new connection, with a
// copy of the parsed config it may change: the place to fetch a short-lived
// password such as a cloud IAM token. Errors it returns fail the attempt.
func WithBeforeConnect(f func(context.Context, *pgx.ConnConfig) error) Option {
	return func(o *options) error {
		o.beforeConnect = f
		return nil
	}
}

// WithAfterConnect sets pgx's hook run after every new connection (register
// types, set session parameters). An error fails the attempt and closes the
// connection.
func WithAfterConnect(f func(context.Context, *pgx.Conn) error) Option {
	return func(o *options) error {
		o.afterConnect = f
		return nil
	}
}

// WithDriver wraps d instead of pgx, for tests: go-sqlmock's driver, say. The
// DSN given to NewConnector, with pgresilient's parameters removed, is what d
// receives, so open sqlmock with that DSN:
//
//	db0, mock, _ := sqlmock.NewWithDSN("mock_orders")
//	defer db0.Close()
//	c, _ := pgresilient.NewConnector("mock_orders?breaker_failures=2", pgresilient.WithDriver(db0.Driver()))
//	db := sql.OpenDB(c)
//
// WithBeforeConnect and WithAfterConnect do not apply then, and the
// connection-level checks that need pgx (socket peek, server transaction
// status) are skipped.
func WithDriver(d driver.Driver) Option {
	return func(o *options) error {
		if d == nil {
			return errors.New("pgresilient: WithDriver: nil driver")
		}
		o.driver = d
		return nil
	}
}

// WithStateChange sets a function called on every breaker transition. It runs
// while the breaker holds its lock: it must return quickly, must not block,
// and must not call into the Connector.
func WithStateChange(f func(from, to BreakerState)) Option {
	return func(o *options) error {
		o.stateChange = f
		return nil
	}
}
