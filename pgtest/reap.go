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
// Close (a test timeout, kill -9) left in base, stopping their servers first:
// pg_ctl detaches the server, so it would otherwise run on. A directory is
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
		reapBouncers(dir)
		data := filepath.Join(dir, "data")
		if _, err := os.Stat(filepath.Join(data, "postmaster.pid")); err == nil {
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, _ = r.run(sctx, dir, "pg_ctl", "stop", "-D", data, "-m", ModeImmediate, "-w")
			cancel()
		}
		_ = os.RemoveAll(dir)
	}
}

// processExists reports whether a process with this pid exists.
func processExists(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
