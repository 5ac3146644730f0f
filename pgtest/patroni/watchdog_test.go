package patroni

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/pgresilient/pgresilient/pgtest"
	"github.com/pgresilient/pgresilient/pgtest/internal/proc"
	"github.com/pgresilient/pgresilient/pgtest/internal/proctest"
)

// helperPatroni is the helper process's mode: a one-node Patroni cluster.
const helperPatroni = "patroni"

// TestHelperProcess is not a test: TestDiesWithTest runs the test binary with
// proctest.HelperEnv set, and this starts what it names, prints a
// proctest.Report and waits to be killed.
func TestHelperProcess(t *testing.T) {
	mode := proctest.Mode()
	if mode == "" {
		t.Skip("a helper process for TestDiesWithTest")
	}
	if mode != helperPatroni {
		t.Fatalf("unknown helper mode %q", mode)
	}
	var r proctest.Report
	p := NewT(t, 1)
	r.Dirs = append(r.Dirs, p.Dir())
	r.Pids = append(r.Pids, p.etcd.cmd.Process.Pid)
	r.Ports = append(r.Ports, p.eport)
	r.Bound = append(r.Bound, p.etcd.cmd.Process.Pid)
	r.BoundPorts = append(r.BoundPorts, p.eport)
	for _, n := range p.Nodes() {
		// Patroni detaches its server: only the watchdog stops it.
		r.Pids = append(r.Pids, n.patroni.cmd.Process.Pid, proctest.PostmasterPid(t, filepath.Join(n.dir, "data")))
		r.Ports = append(r.Ports, n.Port, n.APIPort)
		r.Bound = append(r.Bound, n.patroni.cmd.Process.Pid)
		r.BoundPorts = append(r.BoundPorts, n.APIPort)
	}
	proctest.Serve(t, r)
}

// TestDiesWithTest runs a test process that starts a Patroni cluster and then
// dies without running its cleanups: interrupted or killed. Within a few
// seconds of its death nothing it started may be left: no process (etcd,
// Patroni, the servers Patroni detaches), no listening port, no directory.
// With its watchdog killed too ("SIGKILL, watchdog too"), etcd and Patroni,
// bound to it, must still go (Linux only); the rest is reaped by the next
// Start.
func TestDiesWithTest(t *testing.T) {
	if pgtest.SkipRequested() {
		t.Skip(pgtest.SkipEnv + "=1")
	}
	tests := []proctest.Case{
		{Mode: helperPatroni, End: proctest.EndSIGINT}, // closed by NewT's handler, shared with pgtest's
		{Mode: helperPatroni, End: proctest.EndSIGKILL},
		{Mode: helperPatroni, End: proctest.EndSIGKILLWatchdog},
	}
	for _, tt := range tests {
		t.Run(tt.Name(), func(t *testing.T) {
			if _, _, err := binaries(); err != nil {
				t.Fatal(err)
			}
			proctest.Run(t, tt, func(ctx context.Context, dir string) { _ = proc.ReapHA(ctx, dir) })
		})
	}
}
