package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
	"net"
	"sync/atomic"

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
	addr    string      // the host:port dialled, as pgconn gave it
	cancel  cancelState // set when a cancel request went out (cancel.go)
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.written.Add(int64(n))
	return n, err
}

// NetConn returns the wrapped connection, as tls.Conn's NetConn does.
func (c *countingConn) NetConn() net.Conn { return c.Conn }

// countWrites makes every connection of cfg, to any of its hosts, count its
// writes, after setting tcp on its socket.
func countWrites(cfg *pgx.ConnConfig, tcp tcpOptions) {
	dial := cfg.DialFunc
	if dial == nil {
		dial = systemDialer(cfg.ConnectTimeout)
	}
	cfg.DialFunc = pgconn.DialFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if err := tcp.apply(nc); err != nil {
			nc.Close()
			return nil, err
		}
		return &countingConn{Conn: nc, addr: addr}, nil
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

// mark returns the count of bytes written so far, to pass to fail: an
// operation is safe to retry only if nothing was written since. A nil
// countingConn (another driver than pgx) counts nothing: 0.
func (w *countingConn) mark() int64 {
	if w == nil {
		return 0
	}
	return w.written.Load()
}

// ran is the mark of an operation that certainly reached the server (an
// error while reading a result set).
const ran = -1

// safeToRetry reports whether nothing of the failed operation that started at
// mark reached the server. Over pgx that is read off the socket's byte count,
// whatever pgx says; over another driver (a nil countingConn), pgx's rule:
// driver.ErrBadConn or SafeToRetry.
func (w *countingConn) safeToRetry(mark int64, err error) bool {
	if mark == ran {
		return false
	}
	if w != nil {
		return w.written.Load() == mark
	}
	return errors.Is(err, driver.ErrBadConn) || pgconn.SafeToRetry(err)
}

// noEffect reports whether op changes nothing on the server even when it
// reached it: BEGIN opens a transaction the broken session takes with it,
// PREPARE only parses. Outside a transaction, retrying them elsewhere is
// safe whatever was sent.
func noEffect(op Op) bool { return op == OpBegin || op == OpPrepare }
