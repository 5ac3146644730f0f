//go:build !linux

package haproxy

import "os/exec"

// startBound starts cmd. Only Linux binds a child's life to ours; elsewhere
// a haproxy left by a test process that died without Close runs on until the
// next Start in another test process kills it.
func startBound(cmd *exec.Cmd) error { return cmd.Start() }
