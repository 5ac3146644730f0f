package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runner runs the PostgreSQL binaries of one directory. The server refuses to
// run as root, so when the test process is root, runner switches to the
// unprivileged "postgres" account for every command it starts.
type runner struct {
	binDir string
	cred   *syscall.Credential // nil: run as ourselves
}

// newRunner returns a runner for binDir, dropping to the "postgres" account
// when running as root.
func newRunner(binDir string) (*runner, error) {
	r := &runner{binDir: binDir}
	if os.Geteuid() != 0 {
		return r, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root, and PostgreSQL refuses to: "+
			"need an unprivileged %q account to run it as (installing the postgresql package creates one), "+
			"or run the tests as a normal user: %w", "postgres", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("pgtest: account %q: %w", "postgres", err)
	}
	r.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	return r, nil
}

// run runs binDir/name with args in dir and returns its combined output. The
// error names the command and includes its output. Variables starting with PG
// are removed from the environment so a developer's PGDATA, PGPORT and the
// like cannot redirect the throwaway cluster.
func (r *runner) run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(r.binDir, name), args...)
	cmd.Dir = dir // the postgres account may not be allowed into our working directory
	cmd.Env = serverEnv()
	if r.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: r.cred}
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// pg_ctl start leaves a daemon behind; it redirects its output to the log
	// file, but never let an inherited pipe keep Wait hanging.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil {
		msg := strings.TrimSpace(out.String())
		if msg == "" {
			return out.Bytes(), fmt.Errorf("pgtest: %s %s: %w", name, strings.Join(args, " "), err)
		}
		return out.Bytes(), fmt.Errorf("pgtest: %s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return out.Bytes(), nil
}

// chown gives path to the account the server runs as; a no-op when that is
// ourselves.
func (r *runner) chown(path string) error {
	if r.cred == nil {
		return nil
	}
	return os.Lchown(path, int(r.cred.Uid), int(r.cred.Gid))
}

// canTraverse reports whether every ancestor of dir lets the server's account
// search it. It checks only the "other" and, for matching owners, the owner and
// group bits, which is what matters for /tmp-like paths.
func (r *runner) canTraverse(dir string) bool {
	if r.cred == nil {
		return true
	}
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return false
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return true
		}
		perm := fi.Mode().Perm()
		switch {
		case st.Uid == r.cred.Uid:
			if perm&0o100 == 0 {
				return false
			}
		case st.Gid == r.cred.Gid:
			if perm&0o010 == 0 {
				return false
			}
		default:
			if perm&0o001 == 0 {
				return false
			}
		}
		if d == filepath.Dir(d) {
			return true
		}
	}
}

// serverEnv is our environment without PG* variables.
func serverEnv() []string {
	env := os.Environ()
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "PG") {
			out = append(out, kv)
		}
	}
	return out
}
