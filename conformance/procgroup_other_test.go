//go:build !unix

package conformance

import "os/exec"

// ownProcessGroup does nothing here: cancellation kills the go command only.
func ownProcessGroup(*exec.Cmd) {}
