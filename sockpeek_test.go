package pgresilient

import (
	"context"
	"database/sql"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// stallConn makes Write return 20 ms after sending, as on a host where the
// writing goroutine is descheduled: pgx then starts its background reader,
// which stays parked in Read on the socket once the connection is idle.
type stallConn struct {
	net.Conn
	stall *atomic.Bool
}

func (c *stallConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if c.stall.Load() {
		time.Sleep(20 * time.Millisecond)
	}
	return n, err
}

func (c *stallConn) NetConn() net.Conn { return c.Conn }

// TestPeekWithParkedBackgroundReader: the reuse peek must not wait for the
// socket's read lock, which pgx's parked background reader holds. It used to
// (RawConn.Read): the next checkout blocked forever, whatever its deadline.
func TestPeekWithParkedBackgroundReader(t *testing.T) {
	cl := needCluster(t)
	var stall atomic.Bool
	c, err := NewConnector(cl.DSN(), WithBeforeConnect(func(_ context.Context, cfg *pgx.ConnConfig) error {
		dial := cfg.DialFunc
		cfg.DialFunc = pgconn.DialFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &stallConn{Conn: nc, stall: &stall}, nil
		})
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { closeAndCheck(t, db) })
	db.SetMaxOpenConns(1)
	var n int
	if err := db.QueryRow("select 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	stall.Store(true)
	if err := db.QueryRow("select 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	stall.Store(false)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		done <- db.QueryRowContext(ctx, "select 1").Scan(&n)
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("third query: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("the checkout (1 s deadline) is still blocked after 5 s")
		if _, err := cl.TerminateBackends(context.Background()); err != nil {
			t.Log(err)
		}
		<-done
	}
}

// TestFirstReuseOnFrozenNetwork: a connection is pinged on its first reuse
// after dialling (pgx's rule, applied by pgresilient's verify); on a frozen
// network that ping must be bounded, never wait forever.
func TestFirstReuseOnFrozenNetwork(t *testing.T) {
	cl := needCluster(t)
	p := newProxy(t, cl)
	db := openDB(t, DriverName, cl.DSNAt(p.Addr())+"&query_timeout=300ms&breaker=off&connect_retries=0")
	db.SetMaxOpenConns(1)
	if err := db.Ping(); err != nil { // dialled, used once, back in the pool
		t.Fatal(err)
	}
	p.Freeze()
	defer p.Thaw()
	done := make(chan error, 1)
	go func() {
		var n int
		done <- db.QueryRow("select 1").Scan(&n) // no deadline of its own
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a query succeeded on a frozen network")
		}
		t.Logf("first reuse on a frozen network: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the first reuse is still blocked after 5 s: its ping was not bounded")
	}
}
