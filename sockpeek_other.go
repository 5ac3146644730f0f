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
// a pool invalidation, on their first reuse and after a second idle (idle.go).
type peeker struct{}

func newPeeker(net.Conn) *peeker { return nil }

func (*peeker) state() peekState { return peekUnknown }
