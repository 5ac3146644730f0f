//go:build !linux

package pgtest

import "os/exec"

// startBound starts cmd. Only Linux binds a child's life to ours; elsewhere
// a pgbouncer, etcd or patroni left by a test process that died without
// Close runs on until killed by hand.
func startBound(cmd *exec.Cmd) error { return cmd.Start() }
