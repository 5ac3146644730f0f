package haproxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pgresilient/pgresilient/pgtest"
	"github.com/pgresilient/pgresilient/pgtest/internal/proc"
)

// fakeServer is a backend for tests without PostgreSQL: it greets each
// connection with its name and holds it open until the client or HAProxy
// closes it; its health check answers 200 while primary is set.
type fakeServer struct {
	name    string
	ln      net.Listener
	check   *httptest.Server
	primary atomic.Bool
}

func newFakeServer(t *testing.T, name string, primary bool) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{name: name, ln: ln}
	f.primary.Store(primary)
	f.check = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions && r.URL.Path == "/primary" && f.primary.Load() {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := c.Write([]byte(name + "\n")); err != nil {
					return
				}
				_, _ = c.Read(make([]byte, 1)) // until the peer closes
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		f.check.Close()
	})
	return f
}

func (f *fakeServer) server() Server {
	return Server{Name: f.name, Addr: f.ln.Addr().String(), CheckPort: f.check.Listener.Addr().(*net.TCPAddr).Port}
}

// dialName connects through the proxy and returns the connection and the
// name of the server that greeted it.
func dialName(t *testing.T, p *Proxy) (net.Conn, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		t.Fatalf("through haproxy: %v (a server DOWN to HAProxy closes new connections)", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, strings.TrimSpace(line)
}

// fast keeps these tests short: 100 ms checks.
var fast = Config{Check: Check{Inter: 100 * time.Millisecond, Fall: 2, Rise: 1}}

// TestRouting moves the primary from one fake server to the other and
// checks that WaitRouted's moment is when HAProxy switched, that a session
// to the server marked DOWN is closed, and that new connections go to the
// new primary only.
func TestRouting(t *testing.T) {
	a := newFakeServer(t, "a", true)
	b := newFakeServer(t, "b", false)
	p := NewT(t, fast, a.server(), b.server())

	// Start waited for every first check: b is DOWN already.
	if got, _ := p.Routed(); got != "a" {
		t.Fatalf("Routed() = %q, want a; events %+v", got, p.Events())
	}
	st, err := p.Servers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 || !st[0].Routable || st[1].Routable || st[0].Check != "L7OK" || st[1].Check != "L7STS" {
		t.Fatalf("Servers() = %+v, want a UP (L7OK), b DOWN (L7STS)", st)
	}
	held, name := dialName(t, p)
	defer held.Close()
	if name != "a" {
		t.Fatalf("routed to %q, want a", name)
	}
	for range 4 {
		c, name := dialName(t, p)
		c.Close()
		if name != "a" {
			t.Fatalf("routed to %q, want a", name)
		}
	}

	// Not yet b's: WaitRouted must not claim it.
	ctx, cancel := context.WithTimeout(context.Background(), 3*fast.Check.Inter)
	_, err = p.WaitRouted(ctx, "b")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitRouted(b) while a is primary: %v, want a deadline", err)
	}
	if _, err := p.WaitRouted(context.Background(), "nosuch"); err == nil {
		t.Fatal("WaitRouted(nosuch): no error")
	}

	a.primary.Store(false)
	b.primary.Store(true)
	flipped := time.Now()
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	at, err := p.WaitRouted(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	// a goes DOWN after Fall failed checks, b UP after Rise passed ones;
	// each check comes within Inter.
	c := fast.Check
	bound := time.Duration(max(c.Fall, c.Rise)+1)*c.Inter + 200*time.Millisecond
	if at.Before(flipped) || at.Sub(flipped) > bound {
		t.Fatalf("routed to b %v after the flip, want within [0, %v]; events %+v", at.Sub(flipped), bound, p.Events())
	}
	t.Logf("MEASURE routed to the new primary %v after the checks flipped (inter %v fall %d rise %d)",
		at.Sub(flipped).Round(time.Millisecond), c.Inter, c.Fall, c.Rise)
	if got, since := p.Routed(); got != "b" || !since.Equal(at) {
		t.Fatalf("Routed() = %q, %v; want b, %v", got, since, at)
	}
	// The moment is the later of a's DOWN and b's UP: from then on b alone
	// is UP.
	var aDown, bUp time.Time
	for _, e := range p.Events() {
		switch {
		case e.Time.Before(flipped):
		case e.Server == "a" && !e.Up:
			aDown = e.Time
		case e.Server == "b" && e.Up:
			bUp = e.Time
		}
	}
	if aDown.IsZero() || bUp.IsZero() || !at.Equal(later(aDown, bUp)) {
		t.Fatalf("routed at %v, want the later of a DOWN (%v) and b UP (%v); events %+v", at, aDown, bUp, p.Events())
	}

	// on-marked-down shutdown-sessions: the session held to a is closed.
	_ = held.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := held.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("session to a, marked DOWN, still open: read %d bytes, %v", n, err)
	}
	for range 4 {
		c, name := dialName(t, p)
		c.Close()
		if name != "b" {
			t.Fatalf("routed to %q after WaitRouted(b)", name)
		}
	}
}

// TestNoServerUp: while no server passes its check, HAProxy accepts a
// connection and closes it, and Routed reports none.
func TestNoServerUp(t *testing.T) {
	a := newFakeServer(t, "a", false)
	p := NewT(t, fast, a.server())
	if got, _ := p.Routed(); got != "" {
		t.Fatalf("Routed() = %q, want none", got)
	}
	c, err := net.DialTimeout("tcp", p.Addr(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := c.Read(make([]byte, 16)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("no server UP: read %d bytes, %v; want the connection closed", n, err)
	}
}

func TestClose(t *testing.T) {
	a := newFakeServer(t, "a", true)
	p, err := Start(context.Background(), fast, a.server())
	if err != nil {
		t.Fatal(err)
	}
	pid := p.cmd.Process.Pid
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := (*Proxy)(nil).Close(); err != nil {
		t.Fatalf("nil Close: %v", err)
	}
	if proc.ProcessExists(pid) {
		t.Errorf("haproxy %d still runs after Close", pid)
	}
	if _, err := os.Stat(p.Dir()); !os.IsNotExist(err) {
		t.Errorf("%s still there after Close: %v", p.Dir(), err)
	}
	if c, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c.Close()
		t.Errorf("%s still accepts after Close", p.Addr())
	}
	if _, err := p.WaitRouted(context.Background(), "a"); err != nil {
		t.Logf("WaitRouted after Close: %v", err) // a was routed before: the moment stands
	}
}

func TestStartWithoutBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	saved := binPaths
	binPaths = []string{"/nonexistent/haproxy"}
	defer func() { binPaths = saved }()
	_, err := Start(context.Background(), Config{}, Server{Name: "a", Addr: "127.0.0.1:1", CheckPort: 2})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "apt-get install haproxy") ||
		!strings.Contains(err.Error(), pgtest.SkipEnv) {
		t.Fatalf("err = %v, want ErrNotFound saying how to install haproxy and how to skip", err)
	}
}

// The helper process of TestDiesWithTest: it starts a proxy as a test does
// (NewT), prints its pid and directory, and waits to be killed.
const helperEnv = "PGRESILIENT_HAPROXY_HELPER"

func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("helper process of TestDiesWithTest")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	p := NewT(t, fast, Server{Name: "a", Addr: ln.Addr().String(), CheckPort: port})
	os.Stdout.WriteString(strconv.Itoa(p.cmd.Process.Pid) + " " + p.Dir() + "\n")
	time.Sleep(time.Minute)
}

// TestDiesWithTest ends a test process that started a proxy, without its
// cleanups. Killed (SIGKILL), the kernel kills its haproxy, and the next
// Start removes the directory it left. Interrupted (SIGINT, Ctrl-C), NewT's
// signal handler closes the proxy: haproxy gone and its directory removed
// before the process ends.
func TestDiesWithTest(t *testing.T) {
	if pgtest.SkipRequested() {
		t.Skip(pgtest.SkipEnv + "=1")
	}
	if _, err := os.Stat("/proc/self"); err != nil {
		t.Skip("needs Linux: elsewhere the kernel does not kill a dead parent's children")
	}
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.v")
			cmd.Env = append(os.Environ(), helperEnv+"=1")
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			sc := bufio.NewScanner(out)
			var pid int
			var dir string
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) == 2 {
					if n, err := strconv.Atoi(f[0]); err == nil {
						pid, dir = n, f[1]
						break
					}
				}
			}
			if pid == 0 {
				t.Fatalf("helper printed no pid: %v", sc.Err())
			}
			t.Cleanup(func() { reap(context.Background(), dir) })
			go func() { _, _ = io.Copy(io.Discard, out) }()
			if !proc.ProcessExists(pid) {
				t.Fatalf("haproxy %d not running in the helper", pid)
			}
			_ = cmd.Process.Signal(sig)
			_ = cmd.Wait()
			deadline := time.Now().Add(5 * time.Second)
			for proc.ProcessExists(pid) && !proc.IsZombie(pid) {
				if time.Now().After(deadline) {
					t.Fatalf("haproxy %d outlived its test process by 5 s", pid)
				}
				time.Sleep(10 * time.Millisecond)
			}
			_, err = os.Stat(dir)
			if sig == syscall.SIGINT {
				if !os.IsNotExist(err) {
					t.Fatalf("the interrupted helper left %s: %v", dir, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("the dead helper's directory: %v", err)
			}
			proc.ReapStale(context.Background(), os.TempDir(), dirPrefix, reap)
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Fatalf("reap left %s: %v", dir, err)
			}
		})
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
