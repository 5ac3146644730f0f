package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// MarkEnv marks every process of a Patroni bed (etcd, Patroni and the
// PostgreSQL servers it starts, which inherit it) with the directory of its
// component, so they can be found and killed even after we died.
const MarkEnv = "PGRESILIENT_PGTEST_HA"

// ReapHA kills every process of a Patroni bed's directory and removes it:
// for the reaping of stale beds, and for the watchdog when its owner has
// exited.
func ReapHA(ctx context.Context, dir string) error {
	if err := KillMarked(ctx, dir, true); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// KillMarked SIGKILLs every process marked MarkEnv=dir (or, with under,
// MarkEnv=anything inside dir) and returns once none is left.
func KillMarked(ctx context.Context, dir string, under bool) error {
	for {
		pids := markedPids(dir, under)
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: processes %v of %s outlived SIGKILL: %w", pids, dir, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// markedPids lists the live processes (zombies excluded) whose environment
// holds MarkEnv=dir, or MarkEnv=dir/... with under. Processes whose environment
// we may not read are not ours.
func markedPids(dir string, under bool) []int {
	entries, _ := os.ReadDir("/proc")
	exact := []byte(MarkEnv + "=" + dir + "\x00")
	prefix := []byte(MarkEnv + "=" + dir + "/")
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || len(env) == 0 { // a zombie's environment reads empty
			continue
		}
		env = append([]byte{0}, env...)
		env = append(env, 0)
		if bytes.Contains(env, append([]byte{0}, exact...)) ||
			(under && bytes.Contains(env, append([]byte{0}, prefix...))) {
			if !IsZombie(pid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// IsZombie reports whether the process has exited and awaits its parent's wait.
func IsZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && (b[i+2] == 'Z' || b[i+2] == 'X')
}
