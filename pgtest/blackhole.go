//go:build linux

package pgtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A kernel blackhole: the server runs in a private network namespace, reached
// from the test process over a veth pair, and Blackhole makes the kernel drop
// every packet between the two, in both directions, as a network that fails
// without a reset does (a virtual IP moved, a security group changed, a cable
// pulled). The client's writes stay unacknowledged and its keepalive probes
// unanswered, so TCP keepalives, TCP_USER_TIMEOUT and retransmission timeouts
// behave as they would in production. faultproxy's Freeze cannot show that:
// its kernel still acknowledges every byte.
//
// Addresses: each Blackholeable takes a /30 of the link-local range
// 169.254.100.0 to 169.254.199.255 (never 169.254.169.254, the cloud metadata
// address): .1 is the test process's end of the veth pair, .2 the server's.
// Link-local addresses are never routed off the machine. Nothing else changes
// in the test process's network namespace: the blackhole is an ip rule inside
// the server's namespace, and the veth pair disappears with that namespace.

// ErrNotRoot is matched (with errors.Is) by StartBlackholeable's error when
// the process is not root: network namespaces, veth pairs and ip rules need
// it. NewBlackholeableT skips the test then.
var ErrNotRoot = errors.New("pgtest: a kernel blackhole needs root (a network namespace, a veth pair, ip rules)")

// Blackholeable is a throwaway PostgreSQL server in a private network
// namespace whose packets Blackhole silences. Connect to it with DSN (or Addr,
// Host and Port): that path goes through the namespace and is the one
// Blackhole cuts.
//
// Its methods are safe for concurrent use.
type Blackholeable struct {
	// Cluster is the server. Its own DSN, Addr, Exec, WithConn, QueryValue,
	// ClientBackends and TerminateBackends reach the server through another
	// path, 127.0.0.1 relayed to the server's Unix socket, which Blackhole
	// never touches: use them to watch the server during a blackhole. Do not
	// connect the code under test through it. Cluster.Stop works; Resume
	// and Restart do not (they would start the server outside the
	// namespace, which fails); use Blackholeable.Restart.
	Cluster *Cluster

	ns     *netns
	link   string // the veth pair's end in our namespace; its peer is in ns
	peer   string // the peer's name inside ns
	client string // our end's address, 169.254.A.B+1
	host   string // the server's address, 169.254.A.B+2
	admin  *relay // Cluster's address: 127.0.0.1:port to the server

	mu         sync.Mutex
	blackholed bool
	closed     bool
}

// blackholeRulePrefs are the preferences of the two ip rules Blackhole adds in
// the server's namespace, where the local table's rule moves to localPref so
// that they come first.
const (
	ruleIn    = "10" // packets arriving from our end
	ruleOut   = "11" // packets leaving for our end
	localPref = "100"
)

var blackholeSeq atomic.Int64

// StartBlackholeable starts a throwaway cluster, as Start does, inside a
// private network namespace, and connects the namespace to the test process
// with a veth pair. ctx bounds the whole start. It needs root (the error then
// matches ErrNotRoot) and the ip command (Debian/Ubuntu: apt-get install
// iproute2). On failure nothing is left behind. Close undoes everything; a
// process killed before Close leaves a server running in the namespace, which
// the next Start or StartBlackholeable stops (the namespace and its veth pair
// vanish with it).
func StartBlackholeable(ctx context.Context) (*Blackholeable, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if _, err := ipPath(); err != nil {
		return nil, err
	}
	ctx, cancel := withDefaultTimeout(ctx, 2*time.Minute)
	defer cancel()
	c, err := newCluster(ctx)
	if err != nil {
		return nil, err
	}
	b := &Blackholeable{Cluster: c}
	if err := b.start(ctx); err != nil {
		return nil, errors.Join(err, b.Close())
	}
	return b, nil
}

// NewBlackholeableT starts a Blackholeable for one test and closes it when
// the test ends, passed, failed or panicked (t.Cleanup). It skips the test
// when the process is not root (and when PGRESILIENT_SKIP_INTEGRATION=1), and
// fails it on any other error.
func NewBlackholeableT(t testing.TB) *Blackholeable {
	t.Helper()
	if SkipRequested() {
		t.Skip(SkipEnv + "=1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := StartBlackholeable(ctx)
	if errors.Is(err, ErrNotRoot) {
		t.Skipf("%v: skipped, run the tests as root to include it", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("pgtest: close the blackholeable cluster: %v", err)
		}
	})
	return b
}

// start makes the namespace and the veth pair, then creates and starts the
// server in the namespace.
func (b *Blackholeable) start(ctx context.Context) error {
	ns, err := newNetns()
	if err != nil {
		return err
	}
	b.ns = ns
	if err := b.wire(ctx); err != nil {
		return err
	}
	c := b.Cluster
	// The Cluster's own address: a free 127.0.0.1 port of ours, relayed to
	// the server's Unix socket (or, when the temporary directory's path is
	// too long for one, to its address in the namespace).
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	c.port = ln.Addr().(*net.TCPAddr).Port
	network, target := "unix", filepath.Join(c.dir, ".s.PGSQL."+strconv.Itoa(c.port))
	if !strings.Contains(c.settings(), "unix_socket_directories = "+quoteConf(c.dir)) {
		network, target = "tcp", b.Addr()
	}
	b.admin = newRelay(ln, network, target)

	if _, err := c.run.Run(ctx, c.dir, "initdb",
		"-D", c.data, "-U", Superuser, "-A", "trust", "-E", "UTF8", "--locale=C", "-N"); err != nil {
		return err
	}
	hba := "# written by pgtest (blackholeable)\n" +
		"host  all  " + PasswordUser + "  " + b.client + "/32  scram-sha-256\n" +
		"host  all  all  " + b.client + "/32  trust\n" +
		"host  replication  all  " + b.client + "/32  trust\n" +
		"local all  " + PasswordUser + "  scram-sha-256\n" +
		"local all  all  trust\n"
	if err := c.writeFile("pg_hba.conf", hba, false); err != nil {
		return err
	}
	// pgtest.conf as for any cluster, then the namespace's address instead
	// of 127.0.0.1.
	const nsConf = "pgtest-netns.conf"
	if err := c.writeFile("postgresql.conf", "\ninclude '"+confFile+"'\ninclude '"+nsConf+"'\n", true); err != nil {
		return err
	}
	if err := c.writeFile(confFile, c.settings(), false); err != nil {
		return err
	}
	if err := c.writeFile(nsConf, "listen_addresses = '"+b.host+"'\n", false); err != nil {
		return err
	}
	if err := b.pgctl(ctx, "start"); err != nil {
		return err
	}
	return c.Exec(ctx, "CREATE ROLE "+PasswordUser+" LOGIN PASSWORD '"+Password+"';"+
		"GRANT CREATE ON SCHEMA public TO "+PasswordUser)
}

// pgctl runs pg_ctl start or restart inside the namespace, so that the server
// it starts lives there, and waits until the server accepts connections.
func (b *Blackholeable) pgctl(ctx context.Context, args ...string) error {
	c := b.Cluster
	ctx, cancel := withDefaultTimeout(ctx, defaultWait)
	defer cancel()
	from := c.logSize()
	args = append(args, "-D", c.data, "-l", c.log, "-w", "-t", waitSeconds(ctx))
	var err error
	if nerr := b.ns.do(func() { _, err = c.run.Run(ctx, c.dir, "pg_ctl", args...) }); nerr != nil {
		return nerr
	}
	if err != nil {
		return c.withLog(err, from)
	}
	return c.waitReady(ctx, from)
}

// wire creates the veth pair, moves one end into the namespace, and gives
// both ends their addresses.
func (b *Blackholeable) wire(ctx context.Context) error {
	n := blackholeSeq.Add(1)
	pid := os.Getpid()
	// Interface names have at most 15 bytes.
	b.link = fmt.Sprintf("pgbh%d.%d", pid%10_000_000, n%1000)
	tmpPeer := fmt.Sprintf("pgbp%d.%d", pid%10_000_000, n%1000)
	b.peer = "pgbh0"
	subnet, err := freeSubnet(pid, n)
	if err != nil {
		return err
	}
	b.client = net.IPv4(subnet[0], subnet[1], subnet[2], subnet[3]+1).String()
	b.host = net.IPv4(subnet[0], subnet[1], subnet[2], subnet[3]+2).String()

	if err := ipCmd(ctx, "link", "add", b.link, "type", "veth", "peer", "name", tmpPeer); err != nil {
		b.link = "" // nothing to delete
		return err
	}
	if err := ipCmd(ctx, "link", "set", tmpPeer, "netns", strconv.Itoa(b.ns.tid), "name", b.peer); err != nil {
		return err
	}
	if err := ipCmd(ctx, "addr", "add", b.client+"/30", "dev", b.link); err != nil {
		return err
	}
	if err := ipCmd(ctx, "link", "set", b.link, "up"); err != nil {
		return err
	}
	var errs []error
	nerr := b.ns.do(func() {
		for _, args := range [][]string{
			{"link", "set", "lo", "up"},
			{"addr", "add", b.host + "/30", "dev", b.peer},
			{"link", "set", b.peer, "up"},
			// Let the blackhole rules come before local delivery.
			{"rule", "add", "pref", localPref, "lookup", "local"},
			{"rule", "del", "pref", "0", "lookup", "local"},
		} {
			if err := ipCmd(ctx, args...); err != nil {
				errs = append(errs, err)
				return
			}
		}
	})
	return errors.Join(nerr, errors.Join(errs...))
}

// freeSubnet returns the first address of a /30 between 169.254.100.0 and
// 169.254.199.255 that no interface of ours uses, trying first one derived
// from the process and the sequence number, so that concurrent test
// processes rarely try the same.
func freeSubnet(pid int, n int64) (net.IP, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	const slots = 100 * 64 // 169.254.100-199, 64 /30s each
	start := (pid*16 + int(n)) % slots
	for i := range slots {
		s := (start + i) % slots
		ip := net.IPv4(169, 254, byte(100+s/64), byte(s%64*4)).To4()
		subnet := &net.IPNet{IP: ip, Mask: net.CIDRMask(30, 32)}
		used := false
		for _, a := range addrs {
			if an, ok := a.(*net.IPNet); ok && (subnet.Contains(an.IP) || an.Contains(ip)) {
				used = true
				break
			}
		}
		if !used {
			return ip, nil
		}
	}
	return nil, errors.New("pgtest: no free /30 left in 169.254.100.0-169.254.199.255")
}

// ipPath finds the ip command, in PATH or where Debian puts it (a PATH
// without sbin is common outside login shells).
func ipPath() (string, error) {
	path, err := exec.LookPath("ip")
	if err == nil {
		return path, nil
	}
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip"} {
		if _, serr := os.Stat(p); serr == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("pgtest: the ip command is needed for a kernel blackhole "+
		"(Debian/Ubuntu: apt-get install iproute2): %w", err)
}

// ipCmd runs the ip command on the calling thread (see netns.do).
func ipCmd(ctx context.Context, args ...string) error {
	path, err := ipPath()
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgtest: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Host returns the server's address in its namespace, 169.254.X.Y.
func (b *Blackholeable) Host() string { return b.host }

// Port returns the server's port (the same number as Cluster.Port).
func (b *Blackholeable) Port() int { return b.Cluster.port }

// Addr returns "169.254.X.Y:PORT", the address Blackhole silences.
func (b *Blackholeable) Addr() string { return net.JoinHostPort(b.host, strconv.Itoa(b.Cluster.port)) }

// DSN returns a URL connecting through the namespace, as Cluster.DSN does
// (the postgres superuser, trusted, no TLS): the connections Blackhole
// silences.
func (b *Blackholeable) DSN() string { return b.Cluster.DSNAt(b.Addr()) }

// PasswordDSN returns a URL connecting through the namespace as
// PasswordUser with password, as Cluster.PasswordDSN does.
func (b *Blackholeable) PasswordDSN(password string) string {
	return b.Cluster.PasswordDSN(b.Addr(), password)
}

// Blackhole makes the kernel drop every packet between the test process and
// the server, both ways, from now on: connections stay open without a reset,
// writes stay unacknowledged, new connections get no answer to their SYN.
// Blackholing twice is not an error.
func (b *Blackholeable) Blackhole() error {
	return b.setBlackhole(true)
}

// Restore undoes Blackhole: packets flow again, and TCP delivers what it
// retransmits; connections whose sockets gave up meanwhile stay broken.
// Restoring when not blackholed is not an error.
func (b *Blackholeable) Restore() error {
	return b.setBlackhole(false)
}

// Blackholed reports whether Blackhole is in force.
func (b *Blackholeable) Blackholed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.blackholed
}

func (b *Blackholeable) setBlackhole(on bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errClosed
	}
	if b.blackholed == on {
		return nil
	}
	rules := [][]string{
		{"pref", ruleIn, "iif", b.peer, "blackhole"},
		{"pref", ruleOut, "to", b.client, "blackhole"},
	}
	verb := "add"
	if !on {
		verb = "del"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var errs []error
	nerr := b.ns.do(func() {
		for _, r := range rules {
			if err := ipCmd(ctx, append([]string{"rule", verb}, r...)...); err != nil {
				errs = append(errs, err)
			}
		}
	})
	if err := errors.Join(nerr, errors.Join(errs...)); err != nil {
		return err
	}
	b.blackholed = on
	return nil
}

// Restart restarts the server as Cluster.Restart does, inside the namespace.
// It works while blackholed too: pg_ctl and the readiness check do not go
// through the veth pair.
func (b *Blackholeable) Restart(ctx context.Context, mode ShutdownMode) error {
	if err := checkMode(mode); err != nil {
		return err
	}
	c := b.Cluster
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errClosed
	}
	ctx, cancel := withDefaultTimeout(ctx, 2*defaultWait)
	defer cancel()
	return b.pgctl(ctx, "restart", "-m", string(mode))
}

// Close stops the server, removes its directory, the veth pair and the
// namespace. It is safe on a nil Blackholeable and more than once.
func (b *Blackholeable) Close() error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	errs := []error{b.Cluster.Close()}
	if b.admin != nil {
		b.admin.close()
	}
	if b.link != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		// Deleting one end deletes both.
		if err := ipCmd(ctx, "link", "del", b.link); err != nil {
			if _, lerr := net.InterfaceByName(b.link); lerr == nil {
				errs = append(errs, err)
			}
		}
		cancel()
	}
	if b.ns != nil {
		b.ns.close()
	}
	return errors.Join(errs...)
}

// netns is a private network namespace held by one OS thread: a goroutine
// locked to it unshared its network namespace and runs what do sends it, so
// that sockets it opens and processes it starts live in the namespace. The
// namespace has no name: it vanishes with that thread and the last process in
// it.
type netns struct {
	tid   int
	funcs chan func()
	done  chan struct{}
}

var errNetnsClosed = errors.New("pgtest: network namespace closed")

func newNetns() (*netns, error) {
	ns := &netns{funcs: make(chan func()), done: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		defer close(ns.done)
		// Never unlocked: the thread, whose namespace differs from every
		// other's, exits with this goroutine instead of going back to the
		// scheduler.
		runtime.LockOSThread()
		if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
			ready <- fmt.Errorf("pgtest: unshare the network namespace: %w", err)
			return
		}
		ns.tid = syscall.Gettid()
		ready <- nil
		for f := range ns.funcs {
			f()
		}
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	return ns, nil
}

// do runs f on the namespace's thread and waits for it. f must not start
// goroutines that need the namespace: they run on other threads.
func (ns *netns) do(f func()) (err error) {
	finished := make(chan struct{})
	defer func() {
		if recover() != nil { // send on the closed channel
			err = errNetnsClosed
		}
	}()
	ns.funcs <- func() {
		defer close(finished)
		f()
	}
	<-finished
	return nil
}

func (ns *netns) close() {
	close(ns.funcs)
	<-ns.done
}

// relay forwards every connection accepted by ln to network/target, for the
// Cluster's own address.
type relay struct {
	ln              net.Listener
	network, target string

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func newRelay(ln net.Listener, network, target string) *relay {
	r := &relay{ln: ln, network: network, target: target, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	return r
}

func (r *relay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go r.serve(c)
	}
}

// track records c for close; false when the relay is closed (c is closed).
func (r *relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		c.Close()
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *relay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	c.Close()
}

func (r *relay) serve(client net.Conn) {
	defer r.wg.Done()
	if !r.track(client) {
		return
	}
	defer r.untrack(client)
	server, err := net.DialTimeout(r.network, r.target, 5*time.Second)
	if err != nil {
		return
	}
	if !r.track(server) {
		return
	}
	defer r.untrack(server)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(server, client)
	go pipe(client, server)
	<-done
	// One side ended: end both, so the other copy returns too.
	client.Close()
	server.Close()
	<-done
}

func (r *relay) close() {
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.ln.Close()
	r.wg.Wait()
}
