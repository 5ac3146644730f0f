package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"

	"github.com/ngrok/sqlmw"
)

// The interceptor chain: users' sqlmw interceptors, outermost first, above
// pgresilient's own behaviour.
//
// pgresilient's behaviours (the breaker gate, the error model, automatic
// rollback, query_timeout) are not sqlmw interceptors themselves, but run
// beneath the chain in baseConn, baseStmt, baseTx and baseRows, for three
// reasons:
//
//   - sqlmw keeps no per-connection state, and has no hook for
//     ResetSession, IsValid or Close: the reuse checks, the byte count that
//     proves nothing was sent, and the transaction state need a connection
//     of our own anyway.
//   - Beneath the chain, user interceptors see the errors pgresilient
//     returns (ErrConnLost, ErrCircuitOpen), which is what they log or trace.
//   - Cost. Each sqlmw layer costs allocations on every statement (a chain
//     of one interceptor that does nothing adds a few to QueryRow:
//     docs/performance.md has the numbers and the command).
//     The breaker was an interceptor once: taking it out of the chain was
//     part of taking QueryRow's allocations down (the history in
//     docs/performance.md). Without WithInterceptor there is no chain at all.

// WithInterceptor adds sqlmw interceptors. They run in the order given, the
// first outermost, all outside pgresilient's own behaviour: they see the
// errors pgresilient returns (ErrConnLost, ErrCircuitOpen, ...). Calling it
// again appends.
//
// Without it there is no sqlmw chain at all. Each interceptor costs what
// sqlmw costs: about 3 allocations per query and one interface call per row
// (docs/performance.md).
func WithInterceptor(in ...sqlmw.Interceptor) Option {
	return func(o *options) error {
		for _, i := range in {
			if i == nil {
				return errors.New("pgresilient: WithInterceptor: nil interceptor")
			}
		}
		o.interceptors = append(o.interceptors, in...)
		return nil
	}
}

// baseSlot carries the baseConn from the bottom of the chain to Connect.
type (
	baseSlot    struct{ conn *baseConn }
	baseSlotKey struct{}
)

// baseConnector is the bottom of the interceptor chain: it opens the wrapped
// driver's connection and wraps it in a baseConn.
type baseConnector struct{ c *Connector }

func (b baseConnector) Connect(ctx context.Context) (driver.Conn, error) {
	bc, err := b.c.openBase(ctx)
	if err != nil {
		return nil, err
	}
	if slot, ok := ctx.Value(baseSlotKey{}).(*baseSlot); ok {
		slot.conn = bc
	}
	return bc, nil
}

func (b baseConnector) Driver() driver.Driver { return b.c.Driver() }

// buildChain wraps base in the interceptors, the first one outermost.
func buildChain(base driver.Connector, in []sqlmw.Interceptor) driver.Connector {
	top := base
	for i := len(in) - 1; i >= 0; i-- {
		d := sqlmw.Driver(connectorDriver{top}, in[i]).(driver.DriverContext)
		wrapped, err := d.OpenConnector("")
		if err != nil {
			panic("pgresilient: sqlmw.OpenConnector failed: " + err.Error()) // connectorDriver never fails
		}
		top = wrapped
	}
	return top
}

// connectorDriver lets sqlmw wrap a Connector: sqlmw wraps drivers only.
type connectorDriver struct{ c driver.Connector }

func (d connectorDriver) Open(string) (driver.Conn, error) {
	return d.c.Connect(context.Background())
}

func (d connectorDriver) OpenConnector(string) (driver.Connector, error) { return d.c, nil }
