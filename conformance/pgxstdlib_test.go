package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	// pgx's tests import testify; requiring it here keeps its version and
	// go.sum lines in this module, which the inner module copies.
	_ "github.com/stretchr/testify/require"

	"github.com/pgresilient/pgresilient/pgtest"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m, &cluster)) }

// notApplicable lists pgx's stdlib tests that the run drops from pgx's files,
// so does not run, each with the reason. It is the only place a test of pgx's
// is excluded; an entry naming no test of pgx's fails the run.
var notApplicable = []struct{ Test, Reason string }{
	{"TestSQLOpenFromPool", "stdlib.OpenDBFromPool puts database/sql over a pgxpool.Pool; pgresilient offers no such connector: database/sql's pool is the pool it guards (docs/ecosystem.md)"},
	{"TestRegisterConnConfig", "stdlib.RegisterConnConfig's names for sql.Open are pgx's registry, not a DSN pgresilient can read; a parsed pgx.ConnConfig goes to NewConnectorConfig, which every rewritten stdlib.OpenDB exercises"},
	{"TestRandomizeHostOrderFunc", "calls stdlib.RandomizeHostOrderFunc directly, no driver involved: run, it would pass without saying anything about pgresilient"},
	{"TestResetSessionHookCalled", "stdlib.OptionResetSession has no pgresilient equivalent: its ResetSession makes its own checks and takes no hook (docs/ecosystem.md)"},
	{"TestOptionShouldPing_HookCalledOnReuse", "stdlib.OptionShouldPing has no pgresilient equivalent: pgresilient decides when a reused connection is pinged (docs/ecosystem.md)"},
}

// pgxTestFiles are the files of pgx's stdlib directory that the run takes.
// The others are benchmarks and pgx's internal tests.
var pgxTestFiles = []string{"sql_test.go", "sql_go1.27_test.go"}

// minRan is the number of pgx's tests and subtests, at all levels, that pass
// or are skipped as expected in a real run of pgx v5.12.0's tests, by file;
// the run expects the sum over the files the toolchain builds. A run with
// fewer executed less than pgx's files hold (a rewrite that lost subtests,
// say) and fails; a newer pgx with fewer tests needs it updated.
var minRan = map[string]int{"sql_test.go": 193, "sql_go1.27_test.go": 130}

// innerTimeout bounds the inner test binary (go test -timeout): a hang fails
// the run with its trace instead of running into the outer test's timeout.
const innerTimeout = 3 * time.Minute

// innerFlags are go test's flags for the inner run; race_test.go adds -race
// when this test runs with it.
var innerFlags []string

// TestPgxStdlib runs pgx's own database/sql tests (stdlib/sql_test.go and,
// on Go 1.27, sql_go1.27_test.go, of the pgx version this module builds with)
// through pgresilient against a throwaway PostgreSQL: taken from the module
// cache at test time, rewritten as a user switching drivers would
// (rewrite_test.go says how), in a temporary module whose pgresilient is this checkout,
// with the Go toolchain running this test. Any failure, unexpected skip or
// hang fails it; see doc.go for the policy.
func TestPgxStdlib(t *testing.T) {
	cl := pgtest.Require(t, cluster)
	start := time.Now()

	budget := innerTimeout
	killAt := time.Now().Add(innerTimeout + 5*time.Minute) // the binary's timeout, plus building it
	if dl, ok := t.Deadline(); ok {
		left := time.Until(dl)
		budget = min(budget, left-90*time.Second) // building and reporting, before the outer timeout
		killAt = dl.Add(-15 * time.Second)
		if budget < 30*time.Second {
			t.Fatalf("the test's deadline leaves %v: too little for pgx's tests (run go test with -timeout of 5m or more)", left.Round(time.Second))
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), killAt)
	defer cancel()

	na := map[string]bool{}
	for _, e := range notApplicable {
		na[e.Test] = true
	}

	inner := newInnerModule(t, ctx)
	pgx := inner.pgxModule()
	t.Logf("pgx %s from %s", pgx.Version, pgx.Dir)

	var want, all []string
	floor := 0
	for _, name := range pgxTestFiles {
		src, err := os.ReadFile(filepath.Join(pgx.Dir, "stdlib", name))
		if err != nil {
			t.Fatal(err)
		}
		rw, err := rewriteFile(name, src, na)
		if err != nil {
			t.Fatal(err)
		}
		inner.write(name, rw.Src)
		all = append(all, rw.Tests...)
		built, err := build.Default.MatchFile(inner.dir, name)
		if err != nil {
			t.Fatal(err)
		}
		if !built {
			t.Logf("%s is not built by %s (its build constraint): its %d tests do not run", name, runtime.Version(), len(rw.Tests))
			continue
		}
		floor += minRan[name]
		for _, tn := range rw.Tests {
			if !na[tn] {
				want = append(want, tn)
			}
		}
	}
	for _, e := range notApplicable {
		if !slices.Contains(all, e.Test) {
			t.Errorf("notApplicable lists %s, which pgx %s's stdlib tests do not have: remove it", e.Test, pgx.Version)
		}
	}
	inner.write("helper_test.go", []byte(helperSource))
	inner.write("doc.go", []byte(packageSource))
	if t.Failed() {
		return
	}

	major, err := serverMajor(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}

	args := []string{"test", "-json", "-count=1", "-timeout=" + budget.Round(time.Second).String()}
	args = append(args, innerFlags...)
	args = append(args, ".")
	t.Logf("go %s (in %s, PGX_TEST_DATABASE=<the throwaway cluster>)", strings.Join(args, " "), inner.dir)
	runStart := time.Now()
	stdout, stderr, runErr := inner.goCmd(append([]string{"PGX_TEST_DATABASE=" + cl.DSN()}, inner.env...), args...)
	if ctx.Err() != nil {
		t.Errorf("the inner go test was killed after %v, before its own -timeout=%v fired (a build or the go command hung)",
			time.Since(runStart).Round(time.Second), budget)
	}

	r := parseRun(stdout)
	for _, l := range strings.Split(strings.TrimSpace(string(stderr)), "\n") {
		if l != "" {
			r.Output = append(r.Output, l)
		}
	}
	v := judge(r, want, na, floor, major)

	top := 0
	for _, p := range v.Passed {
		if !strings.Contains(p, "/") {
			top++
		}
	}
	t.Logf("%s, PostgreSQL %d, pgx %s: %d passed (%d tests, %d subtests), %d not applicable, %d skipped by pgx, %d failed, %d did not run; inner go test %v, in all %v",
		runtime.Version(), major, pgx.Version, len(v.Passed), top, len(v.Passed)-top, len(na), len(v.PgxSkipped), len(v.Failed), len(v.NotRun),
		time.Since(runStart).Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))
	for _, e := range notApplicable {
		t.Logf("not applicable: %s: %s", e.Test, e.Reason)
	}
	for _, s := range v.PgxSkipped {
		t.Logf("skipped by pgx, expected on PostgreSQL %d: %s", major, s)
	}
	if !v.ok() {
		var b strings.Builder
		b.WriteString("pgx's stdlib tests through pgresilient:")
		if len(v.Failed) > 0 {
			fmt.Fprintf(&b, "\n%d failed:\n\t%s", len(v.Failed), strings.Join(v.Failed, "\n\t"))
		}
		if len(v.NotRun) > 0 {
			fmt.Fprintf(&b, "\n%d did not run: %s", len(v.NotRun), strings.Join(v.NotRun, ", "))
		}
		for _, p := range v.Problems {
			fmt.Fprintf(&b, "\n%s", p)
		}
		if len(v.Details) > 0 {
			fmt.Fprintf(&b, "\nthe relevant lines of the inner go test output:\n%s", strings.Join(v.Details, "\n"))
		}
		t.Error(b.String())
	} else if runErr != nil {
		t.Errorf("the inner go test passed every test but exited with %v:\n%s", runErr, strings.Join(head(r.Output, 40), "\n"))
	}
}

// innerModule is the temporary module the tests run in.
type innerModule struct {
	t   *testing.T
	ctx context.Context
	dir string
	env []string // the go command's environment
}

// innerModulePath is the module path of the temporary module.
const innerModulePath = "pgxstdlibconformance"

// newInnerModule makes the temporary module: this module's go.mod and go.sum
// (so the versions and checksums are the ones reviewed here), its pgresilient
// replaced by this checkout, whatever go.mod says.
func newInnerModule(t *testing.T, ctx context.Context) *innerModule {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	m := &innerModule{t: t, ctx: ctx, dir: t.TempDir(), env: goEnv()}
	for _, f := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m.write(f, b)
	}
	m.mustGo("mod", "edit", "-module="+innerModulePath,
		"-dropreplace="+pgresilientPath, "-replace="+pgresilientPath+"="+root)
	if v := strings.TrimSpace(m.mustGo("env", "GOVERSION")); v != runtime.Version() {
		t.Fatalf("the inner go command is %s, this test runs with %s", v, runtime.Version())
	}
	return m
}

// goEnv is the environment for the inner go command: outside any workspace,
// the toolchain running this test, the module's requirements completed if the
// go command finds one missing.
func goEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GOWORK", "GOTOOLCHAIN", "GOFLAGS", "PGX_TEST_DATABASE":
			continue
		}
		env = append(env, kv)
	}
	tc := runtime.Version()
	if !releaseVersion.MatchString(tc) {
		tc = "local" // a development toolchain: the go on PATH, checked by newInnerModule
	}
	return append(env, "GOWORK=off", "GOTOOLCHAIN="+tc, "GOFLAGS=-mod=mod")
}

var releaseVersion = regexp.MustCompile(`^go1\.\d+(\.\d+)?((rc|beta)\d+)?$`)

func (m *innerModule) write(name string, b []byte) {
	m.t.Helper()
	if err := os.WriteFile(filepath.Join(m.dir, name), b, 0o644); err != nil {
		m.t.Fatal(err)
	}
}

// goCmd runs the go command in the module; a process group of its own lets
// the context's end stop the test binary it started too.
func (m *innerModule) goCmd(env []string, args ...string) (stdout, stderr []byte, err error) {
	cmd := exec.CommandContext(m.ctx, "go", args...)
	cmd.Dir, cmd.Env = m.dir, env
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	ownProcessGroup(cmd)
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Run()
	return []byte(o.String()), []byte(e.String()), err
}

func (m *innerModule) mustGo(args ...string) string {
	m.t.Helper()
	o, e, err := m.goCmd(m.env, args...)
	if err != nil {
		m.t.Fatalf("go %s: %v\n%s%s", strings.Join(args, " "), err, o, e)
	}
	return string(o)
}

// pgxModule downloads, if needed, the pgx that the module builds with and
// returns where the module cache holds it.
func (m *innerModule) pgxModule() (mod struct{ Version, Dir string }) {
	m.t.Helper()
	out := m.mustGo("mod", "download", "-json", "github.com/jackc/pgx/v5")
	if err := json.Unmarshal([]byte(out), &mod); err != nil || mod.Dir == "" {
		m.t.Fatalf("go mod download -json github.com/jackc/pgx/v5: no directory (%v):\n%s", err, out)
	}
	return mod
}

// serverMajor returns the cluster's PostgreSQL major version.
func serverMajor(ctx context.Context, cl *pgtest.Cluster) (int, error) {
	s, err := pgtest.QueryValue[string](ctx, cl, "show server_version_num")
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("server_version_num %q: %w", s, err)
	}
	return n / 10000, nil
}
