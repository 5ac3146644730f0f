//go:build race

package conformance

// The inner run uses the race detector when this test does.
func init() { innerFlags = append(innerFlags, "-race") }
