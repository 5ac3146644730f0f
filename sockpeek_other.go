//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package pgresilient

import "net"

type peekState uint8

const (
	peekIdle peekState = iota
	peekPending
	peekDead
	peekUnknown
)

// peeker is unavailable on this platform: connections are verified only after
// a pool invalidation and by pgx's own ping after a second idle.
type peeker struct{}

func newPeeker(net.Conn) *peeker { return nil }

func (*peeker) state() peekState { return peekUnknown }
