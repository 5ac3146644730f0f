//go:build linux

package pgresilient

import (
	"syscall"
	"unsafe"
)

// recvPeek is recv(fd, b, 1, MSG_PEEK|MSG_DONTWAIT) as a raw system call:
// it cannot block, so the scheduler need not be told (syscall.Recvfrom
// does, and also prepares a source address a TCP socket never fills).
func recvPeek(fd uintptr, b *byte) (int, syscall.Errno) {
	n, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(b)), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return int(n), errno
}
