// Package proctest checks that what a test process starts with pgtest dies
// with it: the helper process and the check that pgtest's and
// pgtest/patroni's TestDiesWithTest share.
//
// A package's test binary serves as the helper: its TestHelperProcess, run
// with HelperEnv set, starts what the mode names and ends with Serve. Run
// starts that helper, ends it (a signal, a test timeout, the watchdog killed
// too) and checks that nothing the helper started is left.
package proctest

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

// HelperEnv makes the test binary a helper process for Run: its value names
// what TestHelperProcess starts.
const HelperEnv = "PGRESILIENT_PGTEST_HELPER"

// Report is what the helper process prints once everything runs.
type Report struct {
	Dirs     []string // temporary directories
	Pids     []int    // server processes: postmasters, pgbouncer, etcd, patroni
	Ports    []int    // TCP ports on 127.0.0.1 they listen on
	Watchdog int      // the watchdog's pid

	// Bound are the processes of Pids that die with the helper even
	// without the watchdog (proc.StartBound), and BoundPorts their ports.
	Bound, BoundPorts []int
}

const reportPrefix = "pgtest-helper-report: "

// Mode returns the helper mode this process runs in: HelperEnv's value, ""
// when it is not a helper process.
func Mode() string { return os.Getenv(HelperEnv) }

// Serve ends a helper process's TestHelperProcess: it prints r, with the
// watchdog's pid, for Run, and waits to be killed, interrupted or timed out.
func Serve(t *testing.T, r Report) {
	r.Watchdog = proc.WatchdogPid()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString(reportPrefix + string(b) + "\n")
	select {}
}

// The ways Run ends the helper process.
const (
	EndTimeout         = "timeout" // give Case.Args a -test.timeout
	EndSIGINT          = "SIGINT"
	EndSIGTERM         = "SIGTERM"
	EndSIGKILL         = "SIGKILL"
	EndSIGKILLWatchdog = "SIGKILL, watchdog too" // only what the kernel stops is checked (Linux only)
)

// Case is one run of the helper process.
type Case struct {
	Mode string   // what the helper starts: HelperEnv's value
	End  string   // how it ends: EndTimeout, EndSIGINT, ...
	Args []string // more arguments for the test binary
}

// Name is the case's subtest name: "mode end".
func (c Case) Name() string { return c.Mode + " " + c.End }

// Run runs the test binary as a helper process in c's mode, ends it as c
// says, without its cleanups, and fails t unless within 10 s of its death
// nothing it started is left: no process, no listening port, no directory.
// With the watchdog killed too (EndSIGKILLWatchdog), only the processes bound
// to the helper must go; the rest is left to reap, which removes each of
// the helper's directories when t ends, as the next start would (and,
// should the check fail, leaves nothing behind all the same).
func Run(t *testing.T, c Case, reap func(ctx context.Context, dir string)) {
	t.Helper()
	var report Report
	t.Cleanup(func() {
		for _, dir := range report.Dirs {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			reap(ctx, dir)
			cancel()
		}
	})

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	args := append([]string{"-test.run=^TestHelperProcess$"}, c.Args...)
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), HelperEnv+"="+c.Mode)
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
		line, ok := strings.CutPrefix(sc.Text(), reportPrefix)
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
	// Other test processes on the machine reap the directories of dead
	// owners when they start a cluster: name ourselves the owner, so that
	// only the helper's own means count.
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
	switch c.End {
	case EndSIGINT:
		err = cmd.Process.Signal(syscall.SIGINT)
	case EndSIGTERM:
		err = cmd.Process.Signal(syscall.SIGTERM)
	case EndSIGKILL:
		err = cmd.Process.Signal(syscall.SIGKILL)
	case EndSIGKILLWatchdog:
		if runtime.GOOS != "linux" {
			t.Skip("only Linux binds a child to its parent's life")
		}
		if report.Watchdog <= 0 { // kill(0) would kill our process group
			t.Fatal("no watchdog to kill")
		}
		if err = syscall.Kill(report.Watchdog, syscall.SIGKILL); err == nil {
			err = cmd.Process.Signal(syscall.SIGKILL)
		}
		// Only what the kernel stops: the test's cleanup reaps the
		// rest, as the next start would.
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
	t.Logf("helper: %v, %v after the %s", err, exited.Sub(began).Round(time.Millisecond), c.End)
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("helper: %v; want it killed", err)
	}
	switch c.End {
	case EndTimeout:
		want := "panic: test timed out after " + timeoutArg(c.Args)
		if ee.ExitCode() != 2 || !bytes.Contains(stderr.Bytes(), []byte(want)) {
			t.Fatalf("helper: %v; want exit status 2, a test timeout; stderr:\n%s", err, stderr.Bytes())
		}
	case EndSIGINT, EndSIGTERM:
		// Closed by the signal handler, not only by the watchdog; then
		// ended by the signal.
		sig := map[string]syscall.Signal{EndSIGINT: syscall.SIGINT, EndSIGTERM: syscall.SIGTERM}[c.End]
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
	if c.End == EndSIGKILLWatchdog {
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
			if ps := ProcessesOf(dir); len(ps) > 0 {
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
}

// timeoutArg returns the value of the -test.timeout argument among args.
func timeoutArg(args []string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "-test.timeout="); ok {
			return v
		}
	}
	return ""
}

// PostmasterPid reads the postmaster's pid from data/postmaster.pid.
func PostmasterPid(t *testing.T, data string) int {
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

// ProcessesOf lists the processes whose command line or environment names
// dir.
func ProcessesOf(dir string) []string {
	entries, _ := os.ReadDir("/proc")
	var found []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil || e.Name() == strconv.Itoa(os.Getpid()) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		environ, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if strings.Contains(string(cmdline), dir) || strings.Contains(string(environ), dir) {
			found = append(found, e.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return found
}

// alive reports whether pid is a process that has not exited.
func alive(pid int) bool { return proc.ProcessExists(pid) && !proc.IsZombie(pid) }

// listening reports whether something accepts connections on 127.0.0.1:port.
func listening(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(proc.Host, strconv.Itoa(port)), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
