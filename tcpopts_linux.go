package pgresilient

import (
	"net"
	"syscall"
	"time"
)

// tcpUserTimeout is Linux's TCP_USER_TIMEOUT (linux/tcp.h), which package
// syscall lacks.
const tcpUserTimeout = 0x12

// setUserTimeout sets TCP_USER_TIMEOUT, in milliseconds (rounded up); 0
// removes it.
func setUserTimeout(tc *net.TCPConn, d time.Duration) error {
	ms := int((d + time.Millisecond - 1) / time.Millisecond)
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, ms)
	}); err != nil {
		return err
	}
	if serr != nil {
		return &net.OpError{Op: "setsockopt", Net: "tcp", Err: serr}
	}
	return nil
}
