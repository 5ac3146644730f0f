package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

// fakeDriver is a tiny driver whose faults are fields, for what go-sqlmock
// cannot script: SessionResetter, Validator, connect failures.
type fakeDriver struct {
	mu sync.Mutex
	// connectErrs are returned by successive Connect calls, then nil.
	connectErrs []error
	// execErrs are returned by successive ExecContext calls (on any conn), then nil.
	execErrs []error
	// down, while set, is returned by every Connect, after connectErrs.
	down error
	// resetErr is returned by ResetSession.
	resetErr error

	connects atomic.Int64 // Connect calls, failed or not
	opened   atomic.Int64 // connections opened
	closed   atomic.Int64 // connections closed
	execs    atomic.Int64 // ExecContext calls that reached the "server"
	resets   atomic.Int64
}

func (d *fakeDriver) Open(string) (driver.Conn, error) { return d.Connect(context.Background()) }

func (d *fakeDriver) OpenConnector(string) (driver.Connector, error) { return d, nil }

func (d *fakeDriver) Driver() driver.Driver { return d }

func (d *fakeDriver) Connect(ctx context.Context) (driver.Conn, error) {
	d.connects.Add(1)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	var err error
	if len(d.connectErrs) > 0 {
		err, d.connectErrs = d.connectErrs[0], d.connectErrs[1:]
	} else if d.down != nil {
		err = d.down
	}
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	d.opened.Add(1)
	return &fakeConn{d: d}, nil
}

func (d *fakeDriver) nextExecErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.execErrs) == 0 {
		return nil
	}
	err := d.execErrs[0]
	d.execErrs = d.execErrs[1:]
	return err
}

type fakeConn struct {
	d      *fakeDriver
	closed atomic.Bool
}

var (
	_ driver.ExecerContext   = (*fakeConn)(nil)
	_ driver.QueryerContext  = (*fakeConn)(nil)
	_ driver.SessionResetter = (*fakeConn)(nil)
	_ driver.Validator       = (*fakeConn)(nil)
	_ driver.Pinger          = (*fakeConn)(nil)
)

func (c *fakeConn) Prepare(string) (driver.Stmt, error) { return nil, errors.New("fake: no prepare") }

func (c *fakeConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.d.closed.Add(1)
	}
	return nil
}

func (c *fakeConn) Begin() (driver.Tx, error) { return fakeTx{}, nil }

func (c *fakeConn) ExecContext(ctx context.Context, _ string, _ []driver.NamedValue) (driver.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := c.d.nextExecErr(); err != nil {
		if !errors.Is(err, driver.ErrBadConn) {
			c.d.execs.Add(1) // it reached the server
		}
		return nil, err
	}
	c.d.execs.Add(1)
	return driver.RowsAffected(1), nil
}

func (c *fakeConn) QueryContext(ctx context.Context, _ string, _ []driver.NamedValue) (driver.Rows, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &fakeRows{n: 1}, nil
}

func (c *fakeConn) Ping(ctx context.Context) error { return ctx.Err() }

func (c *fakeConn) ResetSession(context.Context) error {
	c.d.resets.Add(1)
	return c.d.resetErr
}

func (c *fakeConn) IsValid() bool { return !c.closed.Load() }

type fakeTx struct{}

func (fakeTx) Commit() error   { return nil }
func (fakeTx) Rollback() error { return nil }

type fakeRows struct{ n int }

func (r *fakeRows) Columns() []string { return []string{"x"} }
func (r *fakeRows) Close() error      { return nil }
func (r *fakeRows) Next(dest []driver.Value) error {
	if r.n == 0 {
		return io.EOF
	}
	r.n--
	dest[0] = int64(1)
	return nil
}

// setDown makes every Connect fail with err from now on; nil ends it.
func (d *fakeDriver) setDown(err error) {
	d.mu.Lock()
	d.down = err
	d.mu.Unlock()
}
