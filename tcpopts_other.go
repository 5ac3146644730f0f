//go:build !linux

package pgresilient

import (
	"net"
	"time"
)

// setUserTimeout does nothing: TCP_USER_TIMEOUT is Linux's, and libpq too
// ignores tcp_user_timeout elsewhere.
func setUserTimeout(*net.TCPConn, time.Duration) error { return nil }
