// Package benchcpu measures the CPU time of the running process, for
// benchmarks that report client CPU per operation next to wall time.
//
// The time is the process's: every goroutine and thread of the test binary
// (the garbage collector's included), and none of the PostgreSQL server's,
// which runs in processes of its own. That is the point: it is the client's
// share of the work. Nothing else may run in the binary while it is measured.
package benchcpu

import "time"

// Now returns the user plus system CPU time the process has used so far, and
// true; or 0 and false where the platform cannot tell.
func Now() (time.Duration, bool) { return now() }
