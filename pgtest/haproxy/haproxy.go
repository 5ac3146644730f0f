package haproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgresilient/pgresilient/pgtest"
	"github.com/pgresilient/pgresilient/pgtest/internal/proc"
	"github.com/pgresilient/pgresilient/pgtest/patroni"
)

// ErrNotFound is matched (errors.Is) by the error Start returns when the
// haproxy binary is missing. The message says how to install it.
var ErrNotFound = errors.New("pgtest/haproxy: haproxy not found")

const (
	host        = "127.0.0.1"
	dirPrefix   = "pgresilient-haproxy-"
	pidFile     = "haproxy.pid"
	logName     = "haproxy.log"
	startWait   = 30 * time.Second // Start's bound when ctx has none
	stopWait    = 5 * time.Second  // SIGTERM, then SIGKILL
	portRetries = 3
	pollEvery   = 20 * time.Millisecond
)

// binPaths are searched for haproxy after PATH: Debian puts it in /usr/sbin,
// which a normal user's PATH may lack. A variable for tests.
var binPaths = []string{"/usr/sbin/haproxy", "/usr/local/sbin/haproxy", "/usr/local/bin/haproxy"}

// binary finds haproxy on PATH or in binPaths.
func binary() (string, error) {
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p, nil
	}
	for _, p := range binPaths {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w on PATH or in /usr/sbin: install it (Debian/Ubuntu: apt-get install haproxy; "+
		"its own service is not used) or set %s=1 to skip the integration tests", ErrNotFound, pgtest.SkipEnv)
}

// Proxy is an HAProxy started by Start, listening on 127.0.0.1 at a port of
// its own in TCP mode, forwarding each new connection to a server that
// passes its health check. Its methods are safe for concurrent use.
//
// HAProxy runs as a child of the test process (haproxy -f cfg -db), never as
// the system's service. Close stops it; on Linux the kernel kills it when the
// test process exits without Close (a test timeout, a signal, kill -9), and
// the next Start removes the directory it left.
type Proxy struct {
	cfg     Config
	servers []Server
	dir     string
	socket  string // the stats socket, admin level
	port    int

	cmd    *exec.Cmd
	exited chan struct{} // closed once haproxy has exited and its log pipe drained

	ev events

	mu     sync.Mutex
	closed bool
}

// Patroni returns the Servers for a Patroni cluster's nodes, killed ones
// included: each node's PostgreSQL server, checked on its REST API.
func Patroni(p *patroni.Cluster) []Server {
	var s []Server
	for _, n := range p.Nodes() {
		s = append(s, Server{Name: n.Name, Addr: net.JoinHostPort(host, strconv.Itoa(n.Port)), CheckPort: n.APIPort})
	}
	return s
}

// NewPatroniT starts a Proxy in front of p's nodes for one test, as
// NewT does.
func NewPatroniT(t testing.TB, p *patroni.Cluster, cfg Config) *Proxy {
	t.Helper()
	return NewT(t, cfg, Patroni(p)...)
}

// NewT starts a Proxy for one test and closes it when the test ends,
// passed, failed or panicked (t.Cleanup), or on SIGINT or SIGTERM. It skips
// the test when PGRESILIENT_SKIP_INTEGRATION=1, and fails it when haproxy is
// missing (the message says how to install it) or does not start.
func NewT(t testing.TB, cfg Config, servers ...Server) *Proxy {
	t.Helper()
	if pgtest.SkipRequested() {
		t.Skip(pgtest.SkipEnv + "=1")
	}
	proc.CloseOnSignal()
	ctx, cancel := context.WithTimeout(context.Background(), startWait)
	defer cancel()
	p, err := Start(ctx, cfg, servers...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close haproxy: %v", err)
		}
	})
	return p
}

// Start starts HAProxy in front of servers, on a free 127.0.0.1 port, in a
// temporary directory of its own, and returns once HAProxy has checked every
// server at least once: until then HAProxy deems every server UP and would
// route to any. ctx bounds the start (30 s if it has no deadline). It retries
// with another port, up to 3 times in all, when the chosen one was taken
// meanwhile. On failure nothing is left behind and the error includes
// HAProxy's output.
func Start(ctx context.Context, cfg Config, servers ...Server) (*Proxy, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := validateServers(servers); err != nil {
		return nil, err
	}
	bin, err := binary()
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startWait)
		defer cancel()
	}
	proc.ReapStale(ctx, os.TempDir(), dirPrefix, reap)
	dir, err := os.MkdirTemp("", dirPrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("pgtest/haproxy: %w", err)
	}
	p := &Proxy{
		cfg:     cfg,
		servers: append([]Server(nil), servers...),
		dir:     dir,
		socket:  filepath.Join(dir, "admin.sock"),
	}
	if len(p.socket) >= 104 { // sun_path: 108 bytes on Linux, 104 on BSDs
		return nil, errors.Join(fmt.Errorf("pgtest/haproxy: socket path %s too long: set TMPDIR to a shorter directory", p.socket), p.Close())
	}
	if err := os.WriteFile(filepath.Join(dir, proc.OwnerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, errors.Join(fmt.Errorf("pgtest/haproxy: %w", err), p.Close())
	}
	for attempt := 1; ; attempt++ {
		err = p.start(ctx, bin)
		if err == nil {
			proc.Track(p)
			return p, nil
		}
		if attempt < portRetries && errors.Is(err, errAddrInUse) {
			continue
		}
		return nil, errors.Join(err, p.Close())
	}
}

var errAddrInUse = errors.New("address in use")

// start writes the configuration for a free port, starts haproxy and waits
// until every server has been checked.
func (p *Proxy) start(ctx context.Context, bin string) error {
	port, err := proc.FreePort()
	if err != nil {
		return err
	}
	p.port = port
	cfgPath := filepath.Join(p.dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(render(p.cfg, port, p.socket, p.servers)), 0o600); err != nil {
		return fmt.Errorf("pgtest/haproxy: %w", err)
	}
	logPath := filepath.Join(p.dir, logName)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("pgtest/haproxy: %w", err)
	}
	defer logf.Close() // the child has its own descriptor
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("pgtest/haproxy: %w", err)
	}
	cmd := exec.Command(bin, "-f", cfgPath, "-db")
	cmd.Dir = p.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w} // fd 3: "log fd@3"
	p.ev.reset(p.servers)
	err = proc.StartBound(cmd, syscall.SIGKILL)
	w.Close()
	if err != nil {
		r.Close()
		return fmt.Errorf("pgtest/haproxy: start %s: %w", bin, err)
	}
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		defer r.Close()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			p.ev.add(time.Now(), sc.Text())
		}
	}()
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		<-logDone
		p.ev.end()
		close(exited)
	}()
	p.cmd, p.exited = cmd, exited
	// For reap, should this process die without Close elsewhere than on
	// Linux, where the kernel kills haproxy with it (proc.StartBound).
	if err := os.WriteFile(filepath.Join(p.dir, pidFile), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return errors.Join(fmt.Errorf("pgtest/haproxy: %w", err), p.stop())
	}
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		servers, err := p.Servers(ctx)
		if err == nil {
			checked := 0
			for _, s := range servers {
				if s.Check != "" && s.Check != "INI" {
					checked++
				}
			}
			if checked == len(p.servers) {
				return nil
			}
			err = fmt.Errorf("servers not all checked yet: %+v", servers)
		}
		select {
		case <-exited:
			return p.withLog(fmt.Errorf("pgtest/haproxy: haproxy exited at start: %s", cmd.ProcessState))
		case <-ctx.Done():
			return errors.Join(p.withLog(fmt.Errorf("pgtest/haproxy: haproxy not ready: %w", err)), p.stop())
		case <-t.C:
		}
	}
}

// withLog appends HAProxy's output to err, and marks it errAddrInUse when
// HAProxy could not bind its port.
func (p *Proxy) withLog(err error) error {
	data, rerr := os.ReadFile(p.LogFile())
	if rerr != nil || len(data) == 0 {
		return err
	}
	tail := strings.TrimSpace(string(data))
	if len(tail) > 4<<10 {
		tail = tail[len(tail)-4<<10:]
	}
	if strings.Contains(tail, "Address already in use") {
		return fmt.Errorf("%w: %w\nhaproxy output (%s):\n%s", errAddrInUse, err, p.LogFile(), tail)
	}
	return fmt.Errorf("%w\nhaproxy output (%s):\n%s", err, p.LogFile(), tail)
}

// stop ends haproxy with SIGTERM (a hard stop: every connection is closed at
// once), then SIGKILL after 5 s, and waits for it to exit.
func (p *Proxy) stop() error {
	if p.cmd == nil {
		return nil
	}
	defer func() { p.cmd = nil }()
	if !proc.Terminate(p.cmd.Process, p.exited, stopWait) {
		return nil
	}
	return fmt.Errorf("pgtest/haproxy: haproxy ignored SIGTERM for %v: killed", stopWait)
}

// Close stops HAProxy, closing every connection through it, and removes its
// directory. It is safe on a nil Proxy and more than once.
func (p *Proxy) Close() error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	proc.Untrack(p)
	err := p.stop()
	if rerr := os.RemoveAll(p.dir); rerr != nil {
		err = errors.Join(err, fmt.Errorf("pgtest/haproxy: %w", rerr))
	}
	return err
}

// Host returns "127.0.0.1".
func (p *Proxy) Host() string { return host }

// Port returns HAProxy's port.
func (p *Proxy) Port() int { return p.port }

// Addr returns "127.0.0.1:PORT".
func (p *Proxy) Addr() string { return net.JoinHostPort(host, strconv.Itoa(p.port)) }

// DSN returns a URL connecting through HAProxy as pgtest's servers expect:
// to the postgres database as the postgres superuser, without a password and
// without TLS.
func (p *Proxy) DSN() string { return pgtest.DSN(p.Addr()) }

// Config returns the configuration in effect, defaults filled in.
func (p *Proxy) Config() Config { return p.cfg }

// Dir returns HAProxy's directory (haproxy.cfg, its output, the stats
// socket), removed by Close.
func (p *Proxy) Dir() string { return p.dir }

// LogFile returns the path of HAProxy's standard output and error.
func (p *Proxy) LogFile() string { return filepath.Join(p.dir, logName) }

// reap is proc.ReapStale's cleanup of a directory whose test process died
// without Close: its haproxy, where the kernel did not kill it (outside
// Linux), then the directory. Errors are ignored: this is housekeeping.
func reap(_ context.Context, dir string) {
	proc.KillNamed(filepath.Join(dir, pidFile), "haproxy")
	_ = os.RemoveAll(dir)
}
