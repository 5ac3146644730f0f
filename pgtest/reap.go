package pgtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// reapStale removes the clusters that test processes killed before their
// Close (a test timeout, kill -9) left in base, stopping their servers first,
// should their watchdog have been killed too: pg_ctl detaches the server, so
// it would otherwise run on. A directory is
// stale only when the process named in its owner file no longer exists.
// PgBouncers started in front of such a cluster are killed too.
// Errors are ignored: this is housekeeping.
func reapStale(ctx context.Context, r *runner, base string) {
	dirs, _ := filepath.Glob(filepath.Join(base, dirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // not ours, or still being created
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || processExists(pid) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		reapCluster(sctx, r, dir)
		cancel()
	}
}

// reapCluster stops the server of a cluster directory and the PgBouncers
// started in front of it, and removes the directory: for reapStale, and for
// the watchdog when its owner has exited. Errors are ignored.
func reapCluster(ctx context.Context, r *runner, dir string) {
	reapBouncers(dir)
	data := filepath.Join(dir, "data")
	if _, err := os.Stat(filepath.Join(data, "postmaster.pid")); err == nil {
		_, _ = r.run(ctx, dir, "pg_ctl", "stop", "-D", data, "-m", string(ModeImmediate), "-w")
	}
	_ = os.RemoveAll(dir)
}

// processExists reports whether a process with this pid exists.
func processExists(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
