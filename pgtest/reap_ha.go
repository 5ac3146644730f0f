package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// reapStaleHA does for StartPatroni's directories what reapStale does for
// clusters: those whose owner process no longer exists lose their processes
// (found by their haEnv mark, since PostgreSQL detaches from Patroni) and are
// removed. Errors are ignored: this is housekeeping.
func reapStaleHA(base string) {
	dirs, _ := filepath.Glob(filepath.Join(base, haDirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || processExists(pid) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = reapHA(ctx, dir)
		cancel()
	}
}

// reapHA kills every process of a Patroni bed's directory and removes it:
// for reapStaleHA, and for the watchdog when its owner has exited.
func reapHA(ctx context.Context, dir string) error {
	if err := killMarked(ctx, dir, true); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// killMarked SIGKILLs every process marked haEnv=dir (or, with under, haEnv=
// anything inside dir) and returns once none is left.
func killMarked(ctx context.Context, dir string, under bool) error {
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
// holds haEnv=dir, or haEnv=dir/... with under. Processes whose environment
// we may not read are not ours.
func markedPids(dir string, under bool) []int {
	entries, _ := os.ReadDir("/proc")
	exact := []byte(haEnv + "=" + dir + "\x00")
	prefix := []byte(haEnv + "=" + dir + "/")
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
			if !isZombie(pid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// isZombie reports whether the process has exited and awaits its parent's wait.
func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && (b[i+2] == 'Z' || b[i+2] == 'X')
}
