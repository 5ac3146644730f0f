//go:build linux || darwin || freebsd || netbsd || openbsd

package pgresilient

import (
	"net"
	"syscall"
)

// peekState is what a non-blocking look at an idle connection's socket saw.
type peekState uint8

const (
	peekIdle    peekState = iota // nothing to read: the connection looks alive
	peekPending                  // bytes are waiting: verify with a round trip
	peekDead                     // the peer closed or reset the connection
	peekUnknown                  // could not look
)

// peeker looks at a socket without blocking and without consuming anything:
// recv(2) with MSG_PEEK|MSG_DONTWAIT, the check go-sql-driver/mysql makes on
// reuse. An idle PostgreSQL connection receives nothing unless the server is
// closing it (a FATAL message, then FIN), or for asynchronous notices and
// notifications, which a verification ping then consumes. It costs one
// system call and no allocation; ResetSession skips it for a connection in
// continuous use (idle.go, peekAfter).
//
// It runs the system call through RawConn.Control, not RawConn.Read: Read
// takes the socket's read lock, which pgx's background reader may hold,
// parked in Read, on an idle connection after a slow write; the peek then
// waited forever, whatever the deadline. A MSG_PEEK|MSG_DONTWAIT recv neither
// blocks nor consumes, so it needs no lock. If that background reader is
// parked, bytes the server sends go to it, not to the peek: the pool
// invalidation and pgx's own checks cover that case.
type peeker struct {
	raw   syscall.RawConn
	fn    func(fd uintptr) // p.read, bound once to avoid an allocation per peek
	buf   [1]byte
	n     int
	errno syscall.Errno
}

func newPeeker(nc net.Conn) *peeker {
	// Under TLS the socket is beneath: any TLS record waiting counts as
	// pending, which is what we want.
	for range 4 {
		u, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		nc = u.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p := &peeker{raw: raw}
	p.fn = p.read
	return p
}

func (p *peeker) read(fd uintptr) {
	p.n, p.errno = recvPeek(fd, &p.buf[0])
}

// state is called only while database/sql holds the connection exclusively.
func (p *peeker) state() peekState {
	if err := p.raw.Control(p.fn); err != nil {
		return peekDead // the descriptor is closed
	}
	switch {
	case p.errno == 0 && p.n > 0:
		return peekPending
	case p.errno == 0:
		return peekDead // orderly shutdown by the peer
	case p.errno == syscall.EAGAIN || p.errno == syscall.EWOULDBLOCK:
		return peekIdle
	case p.errno == syscall.EINTR:
		return peekUnknown
	default:
		return peekDead // ECONNRESET and the like
	}
}
