package pgtest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/pgresilient/pgresilient/pgtest/internal/proc"
)

// startTimeout bounds the cluster start in RunMain: initdb on a busy CI
// machine can take a while.
const startTimeout = 2 * time.Minute

// RunMain runs a package's tests with a cluster of their own. Call it from
// TestMain:
//
//	var cluster *pgtest.Cluster
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m, &cluster)) }
//
// Unless SkipRequested, it starts a cluster, stores it in *cl, runs the tests
// and closes the cluster. On SIGINT or SIGTERM it closes every cluster,
// PgBouncer and Patroni cluster (pgtest/patroni) started in the process, then
// lets the signal end it; when the tests run out of time (go test -timeout), the
// watchdog stops them (see Start). When the cluster cannot start, for
// instance because the server binaries are missing, it prints why (with how
// to install them) to stderr and returns 1 without running any test.
// When skipping, *cl stays nil and Require skips each test. The result is the
// exit code for os.Exit: m.Run's, or 1 if closing the cluster failed.
func RunMain(m *testing.M, cl **Cluster) int {
	if SkipRequested() {
		return m.Run()
	}
	proc.CloseOnSignal()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	c, err := Start(ctx)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*cl = c
	code := m.Run()
	if err := c.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Require returns cl for a test that needs the cluster RunMain started. It
// skips the test when PGRESILIENT_SKIP_INTEGRATION=1, and fails it when cl is
// nil otherwise (TestMain does not call RunMain).
func Require(t testing.TB, cl *Cluster) *Cluster {
	t.Helper()
	if SkipRequested() {
		t.Skip(SkipEnv + "=1")
	}
	if cl == nil {
		t.Fatal("pgtest: no cluster: call pgtest.RunMain from TestMain")
	}
	return cl
}

// NewT starts a throwaway cluster for one test and closes it when the test
// ends, passed, failed or panicked (t.Cleanup), so nothing is left running.
// On SIGINT or SIGTERM it is closed before the process exits, and when the
// test runs out of time (go test -timeout) or the process is killed, the
// watchdog stops it (see Start).
// It skips the test when PGRESILIENT_SKIP_INTEGRATION=1, and fails it with
// a message saying how to install PostgreSQL when the server binaries are
// missing. A package whose tests share one cluster starts it with RunMain
// instead: a cluster takes a second or two to start.
func NewT(t testing.TB) *Cluster {
	t.Helper()
	if SkipRequested() {
		t.Skip(SkipEnv + "=1")
	}
	proc.CloseOnSignal()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("pgtest: close the cluster: %v", err)
		}
	})
	return c
}
