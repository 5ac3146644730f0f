//go:build !linux

package proc

import (
	"os/exec"
	"syscall"
)

// StartBound starts cmd. Only Linux binds a child's life to ours; elsewhere
// the watchdog stops a server left by a test process that died without
// Close, and a pgbouncer, etcd or patroni runs on until killed by hand.
func StartBound(cmd *exec.Cmd, _ syscall.Signal) error { return cmd.Start() }
