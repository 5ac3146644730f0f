package selectone

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"sync/atomic"
	"testing"
)

// A fake driver whose connections count how many are open at once: Run must
// hold n of them together.
type fakeDriver struct{ open, peak atomic.Int32 }

func (d *fakeDriver) Open(string) (driver.Conn, error) {
	n := d.open.Add(1)
	for p := d.peak.Load(); n > p && !d.peak.CompareAndSwap(p, n); p = d.peak.Load() {
		// Another Open raised the peak meanwhile: compare again (a load
		// then a store could lower it, as CI saw: "at most 5").
	}
	return &fakeConn{d: d}, nil
}

type fakeConnector struct{ d *fakeDriver }

func (c fakeConnector) Connect(context.Context) (driver.Conn, error) { return c.d.Open("") }
func (c fakeConnector) Driver() driver.Driver                        { return c.d }

type fakeConn struct{ d *fakeDriver }

func (c *fakeConn) Prepare(string) (driver.Stmt, error) { return nil, errors.New("not supported") }
func (c *fakeConn) Close() error                        { c.d.open.Add(-1); return nil }
func (c *fakeConn) Begin() (driver.Tx, error)           { return nil, errors.New("not supported") }
func (c *fakeConn) QueryContext(context.Context, string, []driver.NamedValue) (driver.Rows, error) {
	return &oneRow{}, nil
}

type oneRow struct{ done bool }

func (r *oneRow) Columns() []string { return []string{"?column?"} }
func (r *oneRow) Close() error      { return nil }
func (r *oneRow) Next(dest []driver.Value) error {
	if r.done {
		return io.EOF
	}
	r.done, dest[0] = true, int64(1)
	return nil
}

func TestBurstHoldsNConnections(t *testing.T) {
	d := &fakeDriver{}
	db := sql.OpenDB(fakeConnector{d})
	defer db.Close()
	db.SetMaxIdleConns(8)
	if err := Burst(context.Background(), db, 8); err != nil {
		t.Fatal(err)
	}
	if p := d.peak.Load(); p != 8 {
		t.Errorf("at most %d connections were open at once, want 8", p)
	}
	if err := Query(context.Background(), db); err != nil {
		t.Error(err)
	}
}
