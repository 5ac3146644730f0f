package pgtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// BinDirEnv names the environment variable that, when set, is the only
// directory searched for the PostgreSQL server binaries.
const BinDirEnv = "PGRESILIENT_PG_BINDIR"

// SkipEnv names the environment variable that skips integration tests when
// set to "1". CI never sets it.
const SkipEnv = "PGRESILIENT_SKIP_INTEGRATION"

// ErrNotFound is matched (with errors.Is) by the error BinDir and Start
// return when the PostgreSQL server binaries cannot be found. The error's
// message says how to install them.
var ErrNotFound = errors.New("pgtest: PostgreSQL server binaries (initdb, pg_ctl, postgres) not found")

// installHint is appended to every ErrNotFound error.
const installHint = "install them (Debian/Ubuntu: apt-get install postgresql; " +
	"macOS: brew install postgresql) or set " + BinDirEnv + " to the directory holding them; " +
	"set " + SkipEnv + "=1 to skip the integration tests instead"

// serverBinaries must all be present in a directory for BinDir to accept it.
var serverBinaries = []string{"initdb", "pg_ctl", "postgres"}

// SkipRequested reports whether the environment asks to skip integration
// tests: PGRESILIENT_SKIP_INTEGRATION=1. Any other value, or none, means
// "run them".
func SkipRequested() bool {
	return os.Getenv(SkipEnv) == "1"
}

// BinDir returns the directory holding the PostgreSQL server binaries initdb,
// pg_ctl and postgres. It searches, in order:
//
//  1. $PGRESILIENT_PG_BINDIR, and nothing else when it is set;
//  2. the directory of pg_ctl found on PATH, symlinks resolved;
//  3. the highest version of /usr/lib/postgresql/*/bin (Debian, Ubuntu);
//  4. /usr/local/pgsql/bin (a source install).
//
// When none holds all three it returns an error matching ErrNotFound whose
// message says how to install them.
func BinDir() (string, error) {
	if dir := os.Getenv(BinDirEnv); dir != "" {
		if hasServerBinaries(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("%w in %s=%q; %s", ErrNotFound, BinDirEnv, dir, installHint)
	}
	var candidates []string
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			candidates = append(candidates, filepath.Dir(real))
		}
		candidates = append(candidates, filepath.Dir(p))
	}
	candidates = append(candidates, debianBinDirs("/usr/lib/postgresql")...)
	candidates = append(candidates, "/usr/local/pgsql/bin")
	for _, dir := range candidates {
		if hasServerBinaries(dir) {
			abs, err := filepath.Abs(dir)
			if err != nil {
				return "", fmt.Errorf("pgtest: %w", err)
			}
			return abs, nil
		}
	}
	return "", fmt.Errorf("%w on PATH, in /usr/lib/postgresql/*/bin or in /usr/local/pgsql/bin; %s",
		ErrNotFound, installHint)
}

// debianBinDirs lists root/<version>/bin, highest version first. Versions
// compare numerically component by component, so 15 sorts above 9.6.
func debianBinDirs(root string) []string {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil
	}
	type ver struct {
		parts []int
		dir   string
	}
	var vers []ver
	for _, e := range entries {
		var parts []int
		for _, s := range strings.Split(e.Name(), ".") {
			n, err := strconv.Atoi(s)
			if err != nil {
				parts = nil
				break
			}
			parts = append(parts, n)
		}
		if parts != nil {
			vers = append(vers, ver{parts, filepath.Join(root, e.Name(), "bin")})
		}
	}
	slices.SortFunc(vers, func(a, b ver) int { return slices.Compare(b.parts, a.parts) })
	dirs := make([]string, len(vers))
	for i, v := range vers {
		dirs[i] = v.dir
	}
	return dirs
}

// hasServerBinaries reports whether dir holds an executable initdb, pg_ctl
// and postgres.
func hasServerBinaries(dir string) bool {
	for _, name := range serverBinaries {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}
