package pgresilient

import (
	"context"
	"net"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// countingConn counts the bytes written to the server. It is how pgresilient
// knows, whatever pgx reports, that nothing of a statement reached the
// socket: only then may an error carry driver.ErrBadConn.
//
// pgx v5.12 cannot be trusted with that: after a reset that follows a
// simple-protocol send, it reports "conn closed" with SafeToRetry true, and
// stdlib turns that into driver.ErrBadConn, so database/sql runs the
// statement again (TestCutMidQuery reproduces it with raw pgx).
type countingConn struct {
	net.Conn
	written atomic.Int64
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.written.Add(int64(n))
	return n, err
}

// NetConn returns the wrapped connection, as tls.Conn's NetConn does.
func (c *countingConn) NetConn() net.Conn { return c.Conn }

// countWrites makes every connection of cfg, to any of its hosts, count its
// writes.
func countWrites(cfg *pgx.ConnConfig) {
	dial := cfg.DialFunc
	if dial == nil {
		d := &net.Dialer{KeepAlive: 5 * time.Minute}
		dial = d.DialContext
	}
	cfg.DialFunc = pgconn.DialFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: nc}, nil
	})
}

// findCounting returns the countingConn beneath nc (under TLS, say), or nil.
func findCounting(nc net.Conn) *countingConn {
	for range 4 {
		if cc, ok := nc.(*countingConn); ok {
			return cc
		}
		u, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		nc = u.NetConn()
	}
	return nil
}
