package proc

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

// Runner runs the PostgreSQL binaries of one directory. The server refuses to
// run as root, so when the test process is root, Runner switches to the
// unprivileged "postgres" account for every command it starts; the other
// processes of a test bed (pgbouncer, etcd, patroni) run as Cred too.
type Runner struct {
	BinDir string
	Cred   *syscall.Credential // nil: run as ourselves
}

// NewRunner returns a Runner for binDir, dropping to the "postgres" account
// when running as root.
func NewRunner(binDir string) (*Runner, error) {
	r := &Runner{BinDir: binDir}
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
	r.Cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	return r, nil
}

// Run runs BinDir/name with args in dir and returns its combined output. The
// error names the command and includes its output. Variables starting with PG
// are removed from the environment so a developer's PGDATA, PGPORT and the
// like cannot redirect the throwaway cluster.
func (r *Runner) Run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(r.BinDir, name), args...)
	cmd.Dir = dir // the postgres account may not be allowed into our working directory
	cmd.Env = ServerEnv()
	if r.Cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: r.Cred}
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

// Chown gives path to the account the server runs as; a no-op when that is
// ourselves.
func (r *Runner) Chown(path string) error {
	if r.Cred == nil {
		return nil
	}
	return os.Lchown(path, int(r.Cred.Uid), int(r.Cred.Gid))
}

// TempBase is the directory the temporary directories go in: os.TempDir(),
// or /tmp when the server's account cannot reach that.
func TempBase(r *Runner) (string, error) {
	base := os.TempDir()
	if !r.canTraverse(base) {
		base = "/tmp"
		if !r.canTraverse(base) {
			return "", fmt.Errorf("pgtest: neither %s nor /tmp is reachable by the postgres account", os.TempDir())
		}
	}
	return base, nil
}

// canTraverse reports whether every ancestor of dir lets the server's account
// search it. It checks only the "other" and, for matching owners, the owner and
// group bits, which is what matters for /tmp-like paths.
func (r *Runner) canTraverse(dir string) bool {
	if r.Cred == nil {
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
		case st.Uid == r.Cred.Uid:
			if perm&0o100 == 0 {
				return false
			}
		case st.Gid == r.Cred.Gid:
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

// ServerEnv is our environment without PG* variables, for every process of
// a test bed: a developer's PGDATA, PGPORT and the like must not redirect it.
func ServerEnv() []string {
	env := os.Environ()
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "PG") {
			out = append(out, kv)
		}
	}
	return out
}
