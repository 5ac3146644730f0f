package patroni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgresilient/pgresilient/pgtest"
	"github.com/pgresilient/pgresilient/pgtest/internal/proc"
)

// ErrNotFound is matched (with errors.Is) by the error Start returns when
// patroni or etcd is not on PATH. The message says how to install them.
var ErrNotFound = errors.New("pgtest/patroni: patroni or etcd not found on PATH")

// installHint is appended to every ErrNotFound error.
const installHint = "install them (Debian/Ubuntu: apt-get install patroni etcd-server); " +
	"set " + pgtest.SkipEnv + "=1 to skip the integration tests instead"

// Settings of the Patroni cluster Start makes: a leader that stops renewing
// its key loses it within TTL, and a failover follows.
const (
	TTL          = 10 * time.Second // ttl: the leader key's lifetime
	loopWait     = 1                // loop_wait, seconds
	retryTimeout = 4                // retry_timeout, seconds: loop_wait + 2*retry_timeout <= ttl
	scope        = "pgtest"
)

const (
	host      = proc.Host
	dirPrefix = "pgresilient-patroni-" // not pgtest's: reaping a cluster would remove it without its processes
	startWait = 3 * time.Minute        // Start's bound when ctx has none
	pollEvery = 100 * time.Millisecond
)

// errClosed is returned by KillNode and StartNode after Close.
var errClosed = errors.New("pgtest/patroni: cluster closed")

// Cluster is a throwaway high-availability cluster started by Start: one
// etcd member and Patroni nodes, each managing a PostgreSQL server, all on
// 127.0.0.1 at free ports, all data in one temporary directory. Its methods
// are safe for concurrent use.
type Cluster struct {
	run   *proc.Runner
	dir   string
	etcd  *child
	eport int // etcd client port
	nodes []*Node
	http  *http.Client

	mu     sync.Mutex // serializes KillNode, StartNode and Close
	closed bool
}

// Node is one Patroni node and its PostgreSQL server.
type Node struct {
	Name    string // Patroni's member name: "node1", "node2", ...
	Port    int    // PostgreSQL's port on 127.0.0.1
	APIPort int    // Patroni's REST API port on 127.0.0.1

	dir     string // the node's directory: config, log, data
	cfg     string
	log     string
	patroni *child // nil once killed
}

// DSN returns a URL connecting to the node's server as the postgres superuser
// without a password, and without TLS.
func (n *Node) DSN() string { return pgtest.DSN(net.JoinHostPort(host, strconv.Itoa(n.Port))) }

// LogFile returns the path of the node's log: Patroni's and its server's.
func (n *Node) LogFile() string { return n.log }

// child is a process we started (etcd, patroni), and its exit.
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited and been waited for
	log  *os.File
}

// NewT starts a Patroni cluster of nodes nodes for a test and closes it when
// the test ends, also when it fails or panics, and on SIGINT or SIGTERM
// before the process exits. It skips the test when
// PGRESILIENT_SKIP_INTEGRATION=1 and fails it when the cluster cannot start,
// for instance because patroni or etcd is missing (the message says how to
// install them).
func NewT(t testing.TB, nodes int) *Cluster {
	t.Helper()
	if pgtest.SkipRequested() {
		t.Skip(pgtest.SkipEnv + "=1")
	}
	proc.CloseOnSignal()
	ctx, cancel := context.WithTimeout(context.Background(), startWait)
	defer cancel()
	p, err := Start(ctx, nodes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

// Start starts etcd and nodes Patroni nodes (at least 1; 2 for a failover),
// and returns once one of them leads and every other one streams from it as
// a replica, the synchronous standby among them. The cluster runs with
// Patroni's synchronous_mode, so a commit acknowledged by the leader is on a
// standby too and survives a failover; a short ttl (TTL) makes the failover
// after KillNode take seconds. etcd is served over its v3 API. The servers
// are PostgreSQL's binaries that pgtest.BinDir finds. ctx bounds the start (3
// minutes if it has no deadline).
//
// When running as root, etcd, Patroni and PostgreSQL run as the "postgres"
// account. Should the test process exit without Close (a test timeout, kill
// -9), the watchdog (see pgtest.Start) kills every process of the cluster
// and removes its directory; NewT also closes it on SIGINT and SIGTERM.
// Directories left by test processes that died anyway are removed on the way,
// and their processes killed. Everything listens on 127.0.0.1 only. On
// failure nothing is left behind and the error includes the logs' tails.
func Start(ctx context.Context, nodes int) (*Cluster, error) {
	if nodes < 1 {
		return nil, fmt.Errorf("pgtest/patroni: Start: %d nodes", nodes)
	}
	patroniBin, etcdBin, err := binaries()
	if err != nil {
		return nil, err
	}
	binDir, err := pgtest.BinDir()
	if err != nil {
		return nil, err
	}
	r, err := proc.NewRunner(binDir)
	if err != nil {
		return nil, err
	}
	base, err := proc.TempBase(r)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startWait)
		defer cancel()
	}
	reapStale(base)
	dir, err := os.MkdirTemp(base, dirPrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("pgtest/patroni: %w", err)
	}
	p := &Cluster{
		run:  r,
		dir:  dir,
		http: &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 5 * time.Second},
	}
	proc.Track(p)
	if err := proc.Watch(proc.KindHA, dir, r.BinDir); err != nil {
		return nil, errors.Join(err, p.Close())
	}
	if err := p.create(ctx, patroniBin, etcdBin, nodes); err != nil {
		return nil, errors.Join(err, p.Close())
	}
	return p, nil
}

// reapStale reaps the beds in base whose owner died, their watchdog killed
// too: their processes, found by their proc.MarkEnv mark since PostgreSQL
// detaches from Patroni, are killed and their directories removed. Errors are
// ignored: this is housekeeping.
func reapStale(base string) {
	proc.ReapStale(context.Background(), base, dirPrefix, func(ctx context.Context, dir string) { _ = proc.ReapHA(ctx, dir) })
}

// binaries finds patroni and etcd on PATH.
func binaries() (patroni, etcd string, err error) {
	patroni, err1 := exec.LookPath("patroni")
	etcd, err2 := exec.LookPath("etcd")
	if err := errors.Join(err1, err2); err != nil {
		return "", "", fmt.Errorf("%w (%v); %s", ErrNotFound, err, installHint)
	}
	return patroni, etcd, nil
}

func (p *Cluster) create(ctx context.Context, patroniBin, etcdBin string, nodes int) error {
	if err := os.WriteFile(filepath.Join(p.dir, proc.OwnerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("pgtest/patroni: %w", err)
	}
	if err := p.run.Chown(p.dir); err != nil {
		return fmt.Errorf("pgtest/patroni: %w", err)
	}
	ports, err := proc.FreePorts(2 + 2*nodes)
	if err != nil {
		return err
	}
	p.eport = ports[0]
	if err := p.startEtcd(ctx, etcdBin, ports[0], ports[1]); err != nil {
		return err
	}
	for i := range nodes {
		n := &Node{
			Name:    "node" + strconv.Itoa(i+1),
			Port:    ports[2+2*i],
			APIPort: ports[3+2*i],
		}
		n.dir = filepath.Join(p.dir, n.Name)
		n.cfg = filepath.Join(n.dir, "patroni.yml")
		n.log = filepath.Join(n.dir, "patroni.log")
		if err := p.writeNodeConfig(n); err != nil {
			return err
		}
		p.nodes = append(p.nodes, n)
	}
	for _, n := range p.nodes {
		if err := p.startNode(n, patroniBin); err != nil {
			return err
		}
	}
	if err := p.WaitHealthy(ctx); err != nil {
		return p.withLogs(err)
	}
	return nil
}

func loopbackURL(port int) string { return "http://" + net.JoinHostPort(host, strconv.Itoa(port)) }

func (p *Cluster) startEtcd(ctx context.Context, bin string, client, peer int) error {
	edir := filepath.Join(p.dir, "etcd")
	if err := p.mkdir(edir); err != nil {
		return err
	}
	cu, pu := loopbackURL(client), loopbackURL(peer)
	etcd, err := p.spawn(edir, filepath.Join(edir, "etcd.log"), bin,
		"--name", "pgtest",
		"--data-dir", filepath.Join(edir, "data"),
		"--listen-client-urls", cu, "--advertise-client-urls", cu,
		"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
		"--initial-cluster", "pgtest="+pu,
		"--initial-cluster-state", "new",
		"--initial-cluster-token", filepath.Base(p.dir))
	if err != nil {
		return err
	}
	p.etcd = etcd
	err = pollUntil(ctx, "etcd healthy", func() (bool, error) {
		select {
		case <-etcd.done:
			return false, errors.New("etcd exited")
		default:
		}
		var h struct{ Health string }
		err := p.getJSON(ctx, cu+"/health", &h)
		return err == nil && h.Health == "true", err
	})
	if err != nil {
		return fmt.Errorf("%w\n%s", err, logTail(filepath.Join(edir, "etcd.log")))
	}
	return nil
}

// writeNodeConfig writes the node's Patroni configuration. JSON is YAML, and
// quotes paths safely.
func (p *Cluster) writeNodeConfig(n *Node) error {
	if err := p.mkdir(n.dir); err != nil {
		return err
	}
	hba := []string{
		"local all all trust",
		"host all all 127.0.0.1/32 trust",
		"host replication all 127.0.0.1/32 trust",
	}
	sock := n.dir
	if len(sock)+len("/.s.PGSQL.65535") >= 100 {
		sock = ""
	}
	pgAddr := net.JoinHostPort(host, strconv.Itoa(n.Port))
	apiAddr := net.JoinHostPort(host, strconv.Itoa(n.APIPort))
	cfg := map[string]any{
		"scope":     scope,
		"namespace": "/pgtest/",
		"name":      n.Name,
		"log":       map[string]any{"level": "INFO"},
		"restapi":   map[string]any{"listen": apiAddr, "connect_address": apiAddr},
		"etcd3":     map[string]any{"hosts": []string{net.JoinHostPort(host, strconv.Itoa(p.eport))}, "protocol": "http"},
		"bootstrap": map[string]any{
			"dcs": map[string]any{
				"ttl":                     int(TTL / time.Second),
				"loop_wait":               loopWait,
				"retry_timeout":           retryTimeout,
				"maximum_lag_on_failover": 16 << 20,
				"synchronous_mode":        true,
				"postgresql": map[string]any{
					"use_pg_rewind": true,
					"use_slots":     true,
					"parameters": map[string]any{
						"wal_level":       "replica",
						"hot_standby":     "on",
						"wal_log_hints":   "on",
						"max_wal_senders": 10,
						"wal_keep_size":   "128MB",
					},
				},
			},
			"initdb": []any{map[string]string{"encoding": "UTF8"}, map[string]string{"locale": "C"}, "no-sync"},
		},
		"postgresql": map[string]any{
			"listen":          pgAddr,
			"connect_address": pgAddr,
			"data_dir":        filepath.Join(n.dir, "data"),
			"bin_dir":         p.run.BinDir,
			"pgpass":          filepath.Join(n.dir, "pgpass"),
			"authentication": map[string]any{
				"superuser":   map[string]string{"username": pgtest.Superuser},
				"replication": map[string]string{"username": pgtest.Superuser},
				"rewind":      map[string]string{"username": pgtest.Superuser},
			},
			"parameters": map[string]any{
				"unix_socket_directories": sock,
				"fsync":                   "off",
				"full_page_writes":        "on", // pg_rewind needs it
				"shared_buffers":          "32MB",
				"max_connections":         200,
				"password_encryption":     "scram-sha-256",
			},
			"pg_hba": hba,
		},
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("pgtest/patroni: %w", err)
	}
	if err := os.WriteFile(n.cfg, b, 0o600); err != nil {
		return fmt.Errorf("pgtest/patroni: %w", err)
	}
	if err := p.run.Chown(n.cfg); err != nil {
		return fmt.Errorf("pgtest/patroni: %w", err)
	}
	return nil
}

func (p *Cluster) startNode(n *Node, bin string) error {
	c, err := p.spawn(n.dir, n.log, bin, n.cfg)
	if err != nil {
		return err
	}
	n.patroni = c
	return nil
}

// spawn starts bin with args in dir, as the server's account, its output
// appended to logPath, marked with proc.MarkEnv=dir.
func (p *Cluster) spawn(dir, logPath, bin string, args ...string) (*child, error) {
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("pgtest/patroni: %w", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(proc.ServerEnv(), proc.MarkEnv+"="+dir, "HOME="+dir)
	cmd.Stdout, cmd.Stderr = f, f
	if p.run.Cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.run.Cred}
	}
	if err := proc.StartBound(cmd, syscall.SIGKILL); err != nil {
		f.Close()
		return nil, fmt.Errorf("pgtest/patroni: %s: %w", filepath.Base(bin), err)
	}
	c := &child{cmd: cmd, done: make(chan struct{}), log: f}
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(c.done)
	}()
	return c, nil
}

func (p *Cluster) mkdir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("pgtest/patroni: %w", err)
	}
	if err := p.run.Chown(dir); err != nil {
		return fmt.Errorf("pgtest/patroni: %w", err)
	}
	return nil
}

// Member is a member as Patroni's REST API /cluster lists it.
type Member struct {
	Name     string `json:"name"`
	Role     string `json:"role"`  // "leader", "sync_standby", "replica"
	State    string `json:"state"` // "running", "streaming", "starting", "stopped", ...
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Timeline int    `json:"timeline"`
}

// Members returns the cluster's members as the REST API of the first live
// node that answers reports them.
func (p *Cluster) Members(ctx context.Context) ([]Member, error) {
	var errs []error
	for _, n := range p.liveNodes() {
		var c struct{ Members []Member }
		err := p.getJSON(ctx, loopbackURL(n.APIPort)+"/cluster", &c)
		if err == nil {
			return c.Members, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, errors.New("pgtest/patroni: no live Patroni node")
	}
	return nil, errors.Join(errs...)
}

// Leader returns the name of the running leader, from the REST API's
// /cluster, or an error when there is none.
func (p *Cluster) Leader(ctx context.Context) (string, error) {
	members, err := p.Members(ctx)
	if err != nil {
		return "", err
	}
	for _, m := range members {
		if m.Role == "leader" && m.State == "running" {
			return m.Name, nil
		}
	}
	return "", fmt.Errorf("pgtest/patroni: no running leader among %+v", members)
}

// WaitLeader waits until a node other than notName (which may be "") leads
// and its server accepts writes, and returns its name. ctx bounds the wait.
func (p *Cluster) WaitLeader(ctx context.Context, notName string) (string, error) {
	var leader string
	err := pollUntil(ctx, "a leader other than "+strconv.Quote(notName), func() (bool, error) {
		var err error
		leader, err = p.Leader(ctx)
		if err != nil || leader == notName {
			return false, err
		}
		ok, err := p.acceptsWrites(ctx, p.Node(leader))
		return ok, err
	})
	return leader, err
}

// acceptsWrites reports whether n's server is out of recovery and writable.
func (p *Cluster) acceptsWrites(ctx context.Context, n *Node) (bool, error) {
	cfg, err := pgx.ParseConfig(n.DSN())
	if err != nil {
		return false, err
	}
	cfg.ConnectTimeout = 2 * time.Second
	cfg.RuntimeParams["application_name"] = proc.AdminApp
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var ok bool
	err = conn.QueryRow(ctx, "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'").Scan(&ok)
	return ok, err
}

// WaitHealthy waits until there is a running leader whose server accepts
// writes and every other node is a running replica, one of them the
// synchronous standby: what Start waits for, and what a node
// restarted by StartNode gets back to. ctx bounds the wait. It fails at once
// when a node's Patroni has been killed (and not started again).
func (p *Cluster) WaitHealthy(ctx context.Context) error {
	p.mu.Lock()
	procs := make(map[string]*child, len(p.nodes))
	for _, n := range p.nodes {
		procs[n.Name] = n.patroni
	}
	p.mu.Unlock()
	for name, c := range procs {
		if c == nil {
			return fmt.Errorf("pgtest/patroni: patroni %s was killed", name)
		}
	}
	return pollUntil(ctx, "a healthy Patroni cluster", func() (bool, error) {
		for name, c := range procs {
			select {
			case <-c.done:
				return false, fmt.Errorf("patroni %s exited", name)
			default:
			}
		}
		members, err := p.Members(ctx)
		if err != nil {
			return false, err
		}
		var leaders, replicas, syncs int
		for _, m := range members {
			running := m.State == "running" || m.State == "streaming"
			switch {
			case m.Role == "leader" && m.State == "running":
				leaders++
			case m.Role == "sync_standby" && running:
				syncs++
				replicas++
			case m.Role == "replica" && running:
				replicas++
			}
		}
		if leaders != 1 || replicas != len(p.nodes)-1 || (len(p.nodes) > 1 && syncs == 0) {
			return false, fmt.Errorf("members %+v", members)
		}
		leader, err := p.Leader(ctx)
		if err != nil {
			return false, err
		}
		return p.acceptsWrites(ctx, p.Node(leader))
	})
}

// Switchover asks Patroni (POST /switchover on the leader's REST API) to hand
// the leadership to another running node, the synchronous standby, and
// returns the new leader's name once it accepts writes. The old leader
// follows it as a replica.
func (p *Cluster) Switchover(ctx context.Context) (string, error) {
	members, err := p.Members(ctx)
	if err != nil {
		return "", err
	}
	var leader, candidate string
	for _, m := range members {
		switch {
		case m.Role == "leader":
			leader = m.Name
		case m.Role == "sync_standby" && (m.State == "running" || m.State == "streaming"):
			candidate = m.Name
		}
	}
	if leader == "" || candidate == "" {
		return "", fmt.Errorf("pgtest/patroni: switchover: no leader or no synchronous standby among %+v", members)
	}
	body, _ := json.Marshal(map[string]string{"leader": leader, "candidate": candidate})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		loopbackURL(p.Node(leader).APIPort)+"/switchover", bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("pgtest/patroni: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	client := *p.http
	client.Timeout = 0 // Patroni answers once the switchover is done: ctx bounds it
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("pgtest/patroni: switchover: %w", err)
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("pgtest/patroni: switchover %s -> %s: %s: %s", leader, candidate, resp.Status, bytes.TrimSpace(msg))
	}
	return p.WaitLeader(ctx, leader)
}

// Node returns the node named name, or nil.
func (p *Cluster) Node(name string) *Node {
	for _, n := range p.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Nodes returns every node, killed ones included, in order.
func (p *Cluster) Nodes() []*Node { return slices.Clone(p.nodes) }

// Dir returns the cluster's temporary directory, removed by Close.
func (p *Cluster) Dir() string { return p.dir }

// EtcdURL returns the URL of etcd's client API.
func (p *Cluster) EtcdURL() string { return loopbackURL(p.eport) }

// DSN returns a multi-host URL over every node's server, as the postgres
// superuser without a password and without TLS:
// postgres://postgres@127.0.0.1:P1,127.0.0.1:P2/postgres?sslmode=disable.
// Add target_session_attrs=read-write (or primary) to reach the leader
// whichever it is.
func (p *Cluster) DSN() string {
	hosts := make([]string, len(p.nodes))
	for i, n := range p.nodes {
		hosts[i] = net.JoinHostPort(host, strconv.Itoa(n.Port))
	}
	return "postgres://" + pgtest.Superuser + "@" + strings.Join(hosts, ",") + "/" + pgtest.Database + "?sslmode=disable"
}

// KillNode kills the node's Patroni and then its PostgreSQL server with
// SIGKILL, and returns once they are gone. Nobody renews the leader key of a
// killed leader: it expires within TTL and another node takes over
// (see WaitLeader). Killing the synchronous standby instead makes the
// leader's commits wait until Patroni, within a few loop_waits, turns
// synchronous replication off (synchronous_mode is not strict). StartNode
// brings the node back.
func (p *Cluster) KillNode(ctx context.Context, name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	n, err := p.openNode(name)
	if err != nil {
		return err
	}
	if n.patroni != nil {
		_ = n.patroni.cmd.Process.Kill()
		select {
		case <-n.patroni.done:
		case <-ctx.Done():
			return fmt.Errorf("pgtest/patroni: killing patroni %s: %w", name, ctx.Err())
		}
		n.patroni = nil
	}
	return proc.KillMarked(ctx, n.dir, false)
}

// StartNode starts a node's Patroni again after KillNode. It returns at once;
// the node rejoins as a replica of the current leader in the background
// (WaitHealthy tells when).
func (p *Cluster) StartNode(name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	n, err := p.openNode(name)
	if err != nil {
		return err
	}
	if n.patroni != nil {
		return fmt.Errorf("pgtest/patroni: Patroni node %q is running", name)
	}
	bin, _, err := binaries()
	if err != nil {
		return err
	}
	return p.startNode(n, bin)
}

// openNode returns the node called name of a cluster not closed; p.mu is
// held.
func (p *Cluster) openNode(name string) (*Node, error) {
	if p.closed {
		return nil, errClosed
	}
	n := p.Node(name)
	if n == nil {
		return nil, fmt.Errorf("pgtest/patroni: no Patroni node %q", name)
	}
	return n, nil
}

// liveNodes are the nodes whose Patroni we have not killed.
func (p *Cluster) liveNodes() []*Node {
	p.mu.Lock()
	defer p.mu.Unlock()
	var live []*Node
	for _, n := range p.nodes {
		if n.patroni != nil {
			live = append(live, n)
		}
	}
	return live
}

// Close kills every process of the cluster (etcd, Patroni, PostgreSQL) with
// SIGKILL, waits until they are gone and removes the directory. It is safe on
// a nil Cluster and more than once: calls after the first do nothing.
func (p *Cluster) Close() error {
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
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	// Patroni first, so that none restarts its server meanwhile.
	for _, n := range p.nodes {
		if n.patroni != nil {
			_ = n.patroni.cmd.Process.Kill()
			<-n.patroni.done
			n.patroni = nil
		}
	}
	if err := proc.KillMarked(ctx, p.dir, true); err != nil {
		errs = append(errs, err)
	}
	if p.etcd != nil {
		<-p.etcd.done
	}
	if err := os.RemoveAll(p.dir); err != nil {
		errs = append(errs, fmt.Errorf("pgtest/patroni: %w", err))
	}
	if len(errs) == 0 {
		proc.Unwatch(p.dir)
	}
	return errors.Join(errs...)
}

// withLogs appends the tails of etcd's and every node's log to err.
func (p *Cluster) withLogs(err error) error {
	var b strings.Builder
	for _, n := range p.nodes {
		b.WriteString("\n" + logTail(n.log))
	}
	return fmt.Errorf("%w%s", err, b.String())
}

// logTail returns the last lines of a log, headed by its path.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return path + ": " + err.Error()
	}
	const maxTail = 3 << 10
	if len(b) > maxTail {
		b = b[len(b)-maxTail:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return path + ":\n" + strings.TrimSpace(string(b))
}

func (p *Cluster) getJSON(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// pollUntil calls cond every pollEvery until it returns true, and fails with
// what and cond's last error when ctx ends first.
func pollUntil(ctx context.Context, what string, cond func() (bool, error)) error {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return fmt.Errorf("pgtest/patroni: waiting for %s: %w", what, err)
		case <-t.C:
		}
	}
}
