//go:build darwin || freebsd || netbsd || openbsd

package pgresilient

import (
	"syscall"
	"unsafe"
)

// recvPeek is recv(fd, b, 1, MSG_PEEK|MSG_DONTWAIT).
func recvPeek(fd uintptr, b *byte) (int, syscall.Errno) {
	n, _, err := syscall.Recvfrom(int(fd), unsafe.Slice(b, 1), syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	if err != nil {
		if errno, ok := err.(syscall.Errno); ok {
			return n, errno
		}
		return n, syscall.EIO
	}
	return n, 0
}
