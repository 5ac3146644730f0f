package pgtest

import (
	"context"
	"syscall"
	"testing"

	"github.com/pgresilient/pgresilient/pgtest/internal/proc"
	"github.com/pgresilient/pgresilient/pgtest/internal/proctest"
)

// Helper modes: what the helper process starts before it waits to die.
const (
	helperNewT    = "newt"    // a cluster from NewT
	helperRunMain = "runmain" // the cluster RunMain starts (TestMain reads proctest.HelperEnv)
	helperBouncer = "bouncer" // a cluster from NewT and a PgBouncer in front of it
	helperRewatch = "rewatch" // a cluster, its watchdog killed, then another cluster
)

// TestHelperProcess is not a test: TestDiesWithTest runs the test binary with
// proctest.HelperEnv set, and this starts what it names, prints a
// proctest.Report and waits to be killed.
func TestHelperProcess(t *testing.T) {
	mode := proctest.Mode()
	if mode == "" {
		t.Skip("a helper process for TestDiesWithTest")
	}
	var r proctest.Report
	addCluster := func(c *Cluster) {
		r.Dirs = append(r.Dirs, c.Dir())
		r.Pids = append(r.Pids, proctest.PostmasterPid(t, c.data))
		r.Ports = append(r.Ports, c.Port())
		r.Bound = append(r.Bound, proctest.PostmasterPid(t, c.data))
		r.BoundPorts = append(r.BoundPorts, c.Port())
	}
	switch mode {
	case helperNewT:
		addCluster(NewT(t))
	case helperRunMain:
		addCluster(Require(t, cluster))
	case helperRewatch:
		addCluster(NewT(t))
		old := proc.WatchdogPid()
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-proc.WatchdogExited()
		// The next watch starts another watchdog, told about both.
		addCluster(NewT(t))
		if proc.WatchdogPid() == old {
			t.Fatal("no new watchdog")
		}
	case helperBouncer:
		c := NewT(t)
		addCluster(c)
		b := NewBouncerT(t, c, BouncerConfig{})
		r.Pids = append(r.Pids, b.cmd.Process.Pid)
		r.Ports = append(r.Ports, b.Port())
		r.Bound = append(r.Bound, b.cmd.Process.Pid)
		r.BoundPorts = append(r.BoundPorts, b.Port())
	default:
		t.Fatalf("unknown helper mode %q", mode)
	}
	proctest.Serve(t, r)
}

// TestDiesWithTest runs a test process that starts servers with pgtest and
// then dies without running its cleanups: interrupted, terminated, killed, or
// out of time (go test -timeout). Within a few seconds of its death nothing it
// started may be left: no process, no listening port, no directory. With its
// watchdog killed too ("SIGKILL, watchdog too"), the processes bound to it
// must still go (Linux only); the rest is reaped by the next Start.
func TestDiesWithTest(t *testing.T) {
	if SkipRequested() {
		t.Skip(SkipEnv + "=1")
	}
	tests := []proctest.Case{
		{Mode: helperNewT, End: proctest.EndSIGINT},
		{Mode: helperNewT, End: proctest.EndSIGTERM},
		{Mode: helperNewT, End: proctest.EndSIGKILL},
		{Mode: helperRunMain, End: proctest.EndSIGINT},
		{Mode: helperRunMain, End: proctest.EndTimeout, Args: []string{"-test.timeout=2s"}},
		{Mode: helperRewatch, End: proctest.EndSIGKILL},
		{Mode: helperBouncer, End: proctest.EndSIGKILL},
		{Mode: helperBouncer, End: proctest.EndSIGKILLWatchdog},
	}
	for _, tt := range tests {
		t.Run(tt.Name(), func(t *testing.T) {
			if tt.Mode == helperBouncer {
				if _, err := bouncerBinary(); err != nil {
					t.Fatal(err)
				}
			}
			r, _, err := runnerAndBase()
			if err != nil {
				t.Fatal(err)
			}
			proctest.Run(t, tt, func(ctx context.Context, dir string) { proc.ReapCluster(ctx, r, dir) })
		})
	}
}

func mustBinDir(t *testing.T) string {
	t.Helper()
	d, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	return d
}
