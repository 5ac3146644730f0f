package pgtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgresilient/pgresilient/pgtest/internal/proc"
)

// helperEnv makes the test binary a helper process for TestDiesWithTest: its
// value names what TestHelperProcess starts.
const helperEnv = "PGRESILIENT_PGTEST_HELPER"

// Helper modes: what the helper process starts before it waits to die.
const (
	helperNewT    = "newt"    // a cluster from NewT
	helperRunMain = "runmain" // the cluster RunMain starts (TestMain reads helperEnv)
	helperBouncer = "bouncer" // a cluster from NewT and a PgBouncer in front of it
	helperPatroni = "patroni" // a one-node Patroni cluster
	helperRewatch = "rewatch" // a cluster, its watchdog killed, then another cluster
)

// helperReport is what the helper process prints once everything runs.
type helperReport struct {
	Dirs     []string // temporary directories
	Pids     []int    // server processes: postmasters, pgbouncer, etcd, patroni
	Ports    []int    // TCP ports on 127.0.0.1 they listen on
	Watchdog int      // the watchdog's pid

	// Bound are the processes of Pids that die with the helper even
	// without the watchdog (proc.StartBound), and BoundPorts their ports.
	Bound, BoundPorts []int
}

const helperReportPrefix = "pgtest-helper-report: "

// TestHelperProcess is not a test: TestDiesWithTest runs the test binary with
// helperEnv set, and this starts what helperEnv names, prints a helperReport
// and waits to be killed.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("a helper process for TestDiesWithTest")
	}
	var r helperReport
	addCluster := func(c *Cluster) {
		r.Dirs = append(r.Dirs, c.Dir())
		r.Pids = append(r.Pids, postmasterPid(t, c.data))
		r.Ports = append(r.Ports, c.Port())
		r.Bound = append(r.Bound, postmasterPid(t, c.data))
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
	case helperPatroni:
		p := NewPatroniT(t, 1)
		r.Dirs = append(r.Dirs, p.Dir())
		r.Pids = append(r.Pids, p.etcd.cmd.Process.Pid)
		r.Ports = append(r.Ports, p.eport)
		r.Bound = append(r.Bound, p.etcd.cmd.Process.Pid)
		r.BoundPorts = append(r.BoundPorts, p.eport)
		for _, n := range p.Nodes() {
			// Patroni detaches its server: only the watchdog stops it.
			r.Pids = append(r.Pids, n.proc.cmd.Process.Pid, postmasterPid(t, filepath.Join(n.dir, "data")))
			r.Ports = append(r.Ports, n.Port, n.APIPort)
			r.Bound = append(r.Bound, n.proc.cmd.Process.Pid)
			r.BoundPorts = append(r.BoundPorts, n.APIPort)
		}
	default:
		t.Fatalf("unknown helper mode %q", mode)
	}
	r.Watchdog = proc.WatchdogPid()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString(helperReportPrefix + string(b) + "\n")
	select {} // until killed, interrupted or timed out
}

// postmasterPid reads the postmaster's pid from data/postmaster.pid.
func postmasterPid(t *testing.T, data string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// alive reports whether pid is a process that has not exited.
func alive(pid int) bool { return proc.ProcessExists(pid) && !proc.IsZombie(pid) }

// listening reports whether something accepts connections on 127.0.0.1:port.
func listening(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(port)), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
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
	tests := []struct {
		mode string
		end  string // "timeout", or the signal sent
		args []string
	}{
		{helperNewT, "SIGINT", nil},
		{helperNewT, "SIGTERM", nil},
		{helperNewT, "SIGKILL", nil},
		{helperRunMain, "SIGINT", nil},
		{helperRunMain, "timeout", []string{"-test.timeout=2s"}},
		{helperRewatch, "SIGKILL", nil},
		{helperBouncer, "SIGKILL", nil},
		{helperPatroni, "SIGKILL", nil},
		{helperBouncer, "SIGKILL, watchdog too", nil},
		{helperPatroni, "SIGKILL, watchdog too", nil},
	}
	for _, tt := range tests {
		t.Run(tt.mode+" "+tt.end, func(t *testing.T) {
			switch tt.mode {
			case helperBouncer:
				if _, err := bouncerBinary(); err != nil {
					t.Fatal(err)
				}
			case helperPatroni:
				if _, _, err := haBinaries(); err != nil {
					t.Fatal(err)
				}
			}
			r, _, err := runnerAndBase()
			if err != nil {
				t.Fatal(err)
			}
			var report helperReport
			// Should the check fail, leave nothing behind all the same.
			t.Cleanup(func() {
				for _, dir := range report.Dirs {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					if strings.HasPrefix(filepath.Base(dir), haDirPrefix) {
						_ = proc.ReapHA(ctx, dir)
					} else {
						proc.ReapCluster(ctx, r, dir)
					}
					cancel()
				}
			})

			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
			defer cancel()
			args := append([]string{"-test.run=^TestHelperProcess$"}, tt.args...)
			cmd := exec.CommandContext(ctx, os.Args[0], args...)
			cmd.Env = append(os.Environ(), helperEnv+"="+tt.mode)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			cmd.WaitDelay = 10 * time.Second
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var output []string
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				line, ok := strings.CutPrefix(sc.Text(), helperReportPrefix)
				if !ok {
					output = append(output, sc.Text())
					continue
				}
				if err := json.Unmarshal([]byte(line), &report); err != nil {
					t.Fatal(err)
				}
				break
			}
			if len(report.Pids) == 0 {
				_ = cmd.Wait()
				t.Fatalf("the helper process reported nothing; its output:\n%s\n%s", strings.Join(output, "\n"), stderr.Bytes())
			}
			t.Logf("helper %d started %+v", cmd.Process.Pid, report)
			// Other test processes on the machine reap the directories of
			// dead owners when they start a cluster: name ourselves the
			// owner, so that only the helper's own means count.
			for _, dir := range report.Dirs {
				if err := os.WriteFile(filepath.Join(dir, proc.OwnerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if report.Watchdog == 0 {
				t.Error("the helper process has no watchdog")
			} else {
				report.Pids = append(report.Pids, report.Watchdog) // it exits once done
			}
			for _, pid := range report.Pids {
				if !alive(pid) {
					t.Fatalf("pid %d is not running before the helper dies", pid)
				}
			}

			began := time.Now()
			switch tt.end {
			case "SIGINT":
				err = cmd.Process.Signal(syscall.SIGINT)
			case "SIGTERM":
				err = cmd.Process.Signal(syscall.SIGTERM)
			case "SIGKILL":
				err = cmd.Process.Signal(syscall.SIGKILL)
			case "SIGKILL, watchdog too":
				if runtime.GOOS != "linux" {
					t.Skip("only Linux binds a child to its parent's life")
				}
				if report.Watchdog <= 0 { // kill(0) would kill our process group
					t.Fatal("no watchdog to kill")
				}
				if err = syscall.Kill(report.Watchdog, syscall.SIGKILL); err == nil {
					err = cmd.Process.Signal(syscall.SIGKILL)
				}
				// Only what the kernel stops: the test's cleanup
				// reaps the rest, as the next Start would.
				report.Pids, report.Ports = report.Bound, report.BoundPorts
			}
			if err != nil {
				t.Fatal(err)
			}
			go func() { // drain, so that the helper never blocks writing
				for sc.Scan() {
				}
			}()
			err = cmd.Wait()
			exited := time.Now()
			t.Logf("helper: %v, %v after the %s", err, exited.Sub(began).Round(time.Millisecond), tt.end)
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("helper: %v; want it killed", err)
			}
			switch tt.end {
			case "timeout":
				if ee.ExitCode() != 2 || !bytes.Contains(stderr.Bytes(), []byte("panic: test timed out after 2s")) {
					t.Fatalf("helper: %v; want exit status 2, a test timeout; stderr:\n%s", err, stderr.Bytes())
				}
			case "SIGINT", "SIGTERM":
				// Closed by the signal handler, not only by the
				// watchdog; then ended by the signal.
				sig := map[string]syscall.Signal{"SIGINT": syscall.SIGINT, "SIGTERM": syscall.SIGTERM}[tt.end]
				ws, ok := ee.Sys().(syscall.WaitStatus)
				if !ok || !ws.Signaled() || ws.Signal() != sig {
					t.Errorf("helper: %v; want it ended by %v", err, sig)
				}
				want := "pgtest: " + sig.String() + ": closed what pgtest started (1)\n"
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("helper's stderr %q does not say %q", stderr.Bytes(), want)
				}
			}

			dirs := report.Dirs // what must be gone
			if tt.end == "SIGKILL, watchdog too" {
				dirs = nil
			}
			const bound = 10 * time.Second
			var gone time.Time
			for {
				var left []string
				for _, pid := range report.Pids {
					if alive(pid) {
						left = append(left, "pid "+strconv.Itoa(pid))
					}
				}
				for _, port := range report.Ports {
					if listening(port) {
						left = append(left, "port "+strconv.Itoa(port))
					}
				}
				for _, dir := range dirs {
					if ps := processesOf(dir); len(ps) > 0 {
						left = append(left, ps...)
					}
					if _, err := os.Stat(dir); err == nil {
						left = append(left, dir)
					}
				}
				if len(left) == 0 {
					gone = time.Now()
					break
				}
				if time.Since(exited) > bound {
					t.Fatalf("%v after the helper process died, still there: %q", bound, left)
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Logf("everything gone %v after the helper process died", gone.Sub(exited).Round(time.Millisecond))
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
