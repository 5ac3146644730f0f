package proc

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

// A PgBouncer started in front of a cluster lives in a directory of the
// cluster's named BouncerDirPrefix*, and writes its pid to BouncerPidFile
// there, for ReapCluster.
const (
	BouncerDirPrefix = "pgbouncer-"
	BouncerPidFile   = "pgbouncer.pid"
)

// ReapStale reaps the directories named prefix* in base that test processes
// killed before their Close (a test timeout, kill -9) left, should their
// watchdog have been killed too: it calls reap for each, with ctx bounded by
// 30 s. A directory is stale only when the process named in its OwnerFile no
// longer exists. Errors are ignored: this is housekeeping.
func ReapStale(ctx context.Context, base, prefix string, reap func(ctx context.Context, dir string)) {
	dirs, _ := filepath.Glob(filepath.Join(base, prefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, OwnerFile))
		if err != nil {
			continue // not ours, or still being created
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || ProcessExists(pid) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		reap(sctx, dir)
		cancel()
	}
}

// ReapCluster stops the server of a cluster directory and the PgBouncers
// started in front of it, and removes the directory: for the reaping of stale
// clusters, and for the watchdog when its owner has exited. pg_ctl detaches
// the server, so it would otherwise run on. Errors are ignored.
func ReapCluster(ctx context.Context, r *Runner, dir string) {
	ReapBouncers(dir)
	data := filepath.Join(dir, "data")
	if _, err := os.Stat(filepath.Join(data, "postmaster.pid")); err == nil {
		_, _ = r.Run(ctx, dir, "pg_ctl", "stop", "-D", data, "-m", "immediate", "-w")
	}
	_ = os.RemoveAll(dir)
}

// ReapBouncers kills the pgbouncer processes a dead test process left in a
// stale cluster directory: each writes its pid beside its configuration.
func ReapBouncers(dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, BouncerDirPrefix+"*", BouncerPidFile))
	for _, f := range files {
		KillNamed(f, "pgbouncer")
	}
}

// KillNamed SIGKILLs the process whose pid the file pidFile holds, only while
// that pid still names a process called name (Linux's /proc tells; elsewhere
// nothing is killed): the pid of a process that exited long ago may name
// another by now.
func KillNamed(pidFile, name string) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return
	}
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if err != nil || strings.TrimSpace(string(comm)) != name {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// ProcessExists reports whether a process with this pid exists.
func ProcessExists(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
