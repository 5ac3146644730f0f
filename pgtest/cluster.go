// Package pgtest starts throwaway PostgreSQL clusters for integration tests.
//
// Each cluster lives in its own temporary directory, listens only on
// 127.0.0.1 at a free port, trusts the "postgres" superuser without a
// password, and requires a scram-sha-256 password for PasswordUser. Tests own
// it completely: they may stop, restart and kill it at will.
//
// A package's tests share one cluster started in TestMain:
//
//	var cluster *pgtest.Cluster
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m, &cluster)) }
//
//	func TestSomething(t *testing.T) {
//		cl := pgtest.Require(t, cluster)
//		db, err := sql.Open("pgx", cl.DSN())
//		...
//	}
//
// The server binaries are found by BinDir. When they are missing RunMain fails
// with a message saying how to install them; only PGRESILIENT_SKIP_INTEGRATION=1
// skips the tests instead.
//
// For high availability, StartStandby makes a streaming standby of a cluster
// (with Promote, SetSynchronous and SetReadOnly). Package pgtest/patroni
// starts a Patroni cluster over etcd, with switchover and failover, and
// pgtest/haproxy an HAProxy in front of it.
package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgresilient/pgresilient/pgtest/internal/proc"
)

const (
	// PasswordUser is a login role that must authenticate with Password over
	// scram-sha-256. It may create objects in the public schema.
	PasswordUser = "pgresilient_pw"
	// Password is PasswordUser's password.
	Password = "s3cret-Pw-0f-pgtest"

	// Superuser is the role DSN connects as, trusted without a password.
	Superuser = "postgres"

	// Database is the database every DSN names.
	Database = "postgres"
)

// ShutdownMode is how Stop and Restart shut the server down, as pg_ctl's -m
// names it.
type ShutdownMode string

// The shutdown modes.
const (
	ModeSmart     ShutdownMode = "smart"     // wait for every client to disconnect
	ModeFast      ShutdownMode = "fast"      // roll back and disconnect clients, then shut down cleanly
	ModeImmediate ShutdownMode = "immediate" // kill everything at once; crash recovery on the next start
)

const (
	host        = proc.Host
	dirPrefix   = "pgresilient-pgtest-"
	logFile     = "postgres.log" // server log, beside the data directory
	confFile    = "pgtest.conf"  // our settings, included from postgresql.conf
	portRetries = 3

	defaultWait = 60 * time.Second // for pg_ctl -t and readiness when ctx has no deadline
	pollEvery   = 20 * time.Millisecond
)

// errClosed is returned by lifecycle methods after Close.
var errClosed = errors.New("pgtest: cluster closed")

// errAddrInUse marks a start that failed because another process took the
// port between our probe and the server's bind.
var errAddrInUse = errors.New("pgtest: port already in use")

// Cluster is a throwaway PostgreSQL cluster started by Start. Its methods are
// safe for concurrent use; lifecycle changes (Stop, Resume, Restart, Close)
// run one at a time.
type Cluster struct {
	run  *proc.Runner
	dir  string // the cluster's own temporary directory
	data string // dir/data, the PostgreSQL data directory
	log  string // dir/postgres.log
	port int    // fixed after Start

	mu     sync.Mutex // serializes lifecycle changes
	closed bool
	pm     *postmaster // the server start started; nil before
}

// postmaster is a server process that start started: our child.
type postmaster struct {
	pid    int
	exited chan struct{} // closed once it has exited and been waited for
}

// Start creates a cluster with initdb in a fresh temporary directory, starts
// it on a free 127.0.0.1 port, waits until it accepts connections and creates
// PasswordUser. It retries with another port, up to 3 times in all, when the
// chosen one was taken meanwhile. ctx bounds the whole start.
//
// When running as root, the server and its tools run as the "postgres"
// account, which then owns the temporary directory.
//
// The server is a child of the calling process. Should the process exit
// without Close, killed or out of time (go test -timeout runs no cleanup),
// the server stops at once: on Linux the kernel sends it SIGQUIT (an
// immediate shutdown), and the process's watchdog, a copy of the running
// executable started by the first Start (or pgtest/patroni's Start) in a
// session of its own, stops it too and removes the directory when the pipe
// from the process ends. The test helpers (NewT, RunMain, NewBouncerT,
// pgtest/patroni's NewT) also close everything on SIGINT and SIGTERM before
// the process exits. Directories left by test processes that died anyway (the
// watchdog killed too) are removed, and their servers stopped, on the way.
//
// On failure nothing is left behind, and the error includes the server log's
// tail when the server itself failed.
func Start(ctx context.Context) (*Cluster, error) {
	c, err := newCluster(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.create(ctx); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

// newCluster finds the binaries, reaps stale clusters and makes a fresh
// directory, owned by the server's account and naming us as its owner.
func newCluster(ctx context.Context) (*Cluster, error) {
	r, base, err := runnerAndBase()
	if err != nil {
		return nil, err
	}
	// Clusters that test processes killed before their Close (a test
	// timeout, kill -9) left, their watchdog killed too: their servers and
	// PgBouncers are stopped, their directories removed.
	proc.ReapStale(ctx, base, dirPrefix, func(ctx context.Context, dir string) { proc.ReapCluster(ctx, r, dir) })
	dir, err := os.MkdirTemp(base, dirPrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	c := &Cluster{
		run:  r,
		dir:  dir,
		data: filepath.Join(dir, "data"),
		log:  filepath.Join(dir, logFile),
	}
	proc.Track(c)
	if err := proc.Watch(proc.KindCluster, dir, r.BinDir); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	if err := os.WriteFile(filepath.Join(c.dir, proc.OwnerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, errors.Join(fmt.Errorf("pgtest: %w", err), c.Close())
	}
	if err := c.run.Chown(c.dir); err != nil {
		return nil, errors.Join(fmt.Errorf("pgtest: %w", err), c.Close())
	}
	return c, nil
}

// runnerAndBase finds the server binaries and returns the runner for them
// and the directory the temporary directories go in.
func runnerAndBase() (*proc.Runner, string, error) {
	binDir, err := BinDir()
	if err != nil {
		return nil, "", err
	}
	r, err := proc.NewRunner(binDir)
	if err != nil {
		return nil, "", err
	}
	base, err := proc.TempBase(r)
	if err != nil {
		return nil, "", err
	}
	return r, base, nil
}

// create fills the fresh directory, starts the server and creates the roles.
func (c *Cluster) create(ctx context.Context) error {
	if _, err := c.run.Run(ctx, c.dir, "initdb",
		"-D", c.data, "-U", Superuser, "-A", "trust", "-E", "UTF8", "--locale=C", "-N"); err != nil {
		return err
	}
	hba := "# written by pgtest\n" +
		"host  all  " + PasswordUser + "  127.0.0.1/32  scram-sha-256\n" +
		"host  all  all  127.0.0.1/32  trust\n" +
		"host  replication  all  127.0.0.1/32  trust\n" +
		"local all  all  trust\n"
	if err := c.writeFile("pg_hba.conf", hba, false); err != nil {
		return err
	}
	if err := c.writeFile("postgresql.conf", "\ninclude '"+confFile+"'\n", true); err != nil {
		return err
	}
	if err := c.startOnFreePort(ctx); err != nil {
		return err
	}
	return c.Exec(ctx, "CREATE ROLE "+PasswordUser+" LOGIN PASSWORD '"+Password+"';"+
		"GRANT CREATE ON SCHEMA public TO "+PasswordUser)
}

// startOnFreePort writes pgtest.conf for a free port and starts the server,
// retrying with another port when the chosen one was taken meanwhile.
func (c *Cluster) startOnFreePort(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		port, err := proc.FreePort()
		if err != nil {
			return err
		}
		c.port = port
		if err := c.writeFile(confFile, c.settings(), false); err != nil {
			return err
		}
		err = c.start(ctx)
		if err == nil {
			return nil
		}
		if attempt < portRetries && errors.Is(err, errAddrInUse) {
			continue
		}
		return err
	}
}

// settings is the content of pgtest.conf: a server fit for tests, not for
// data anyone wants to keep.
func (c *Cluster) settings() string {
	// A Unix socket path is limited to about 100 bytes; without one, nothing
	// here needs it (start waits on postmaster.pid).
	sock := c.dir
	if len(sock)+len("/.s.PGSQL.65535") >= 100 {
		sock = ""
	}
	lines := []string{
		"# written by pgtest",
		"listen_addresses = '" + host + "'",
		"port = " + strconv.Itoa(c.port),
		"unix_socket_directories = " + quoteConf(sock),
		"fsync = off",
		"synchronous_commit = off",
		"full_page_writes = off",
		"max_connections = 200",
		"shared_buffers = 32MB",
		"logging_collector = off",
		"password_encryption = 'scram-sha-256'",
		// Standbys (StartStandby) replicate from any cluster.
		"wal_level = replica",
		"max_wal_senders = 10",
		"hot_standby = on",
	}
	return strings.Join(lines, "\n") + "\n"
}

// quoteConf quotes s as a postgresql.conf string.
func quoteConf(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// writeFile writes (or appends to) a file of the data directory, owned by the
// server's account.
func (c *Cluster) writeFile(name, content string, appendTo bool) error {
	path := filepath.Join(c.data, name)
	flag := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if appendTo {
		flag = os.O_WRONLY | os.O_CREATE | os.O_APPEND
	}
	f, err := os.OpenFile(path, flag, 0o600)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	_, err = f.WriteString(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = c.run.Chown(path)
	}
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// Host returns the address the server listens on: "127.0.0.1".
func (c *Cluster) Host() string { return host }

// Port returns the server's TCP port. It stays the same across Stop, Resume
// and Restart.
func (c *Cluster) Port() int { return c.port }

// Addr returns "127.0.0.1:PORT".
func (c *Cluster) Addr() string { return net.JoinHostPort(host, strconv.Itoa(c.port)) }

// Dir returns the cluster's temporary directory. It holds the data directory
// "data" and the server log "postgres.log", and is removed by Close.
func (c *Cluster) Dir() string { return c.dir }

// LogFile returns the path of the server log.
func (c *Cluster) LogFile() string { return c.log }

// DSN returns a URL connecting to the postgres database as the postgres
// superuser, without a password (trust), and without TLS.
func (c *Cluster) DSN() string { return c.DSNAt(c.Addr()) }

// DSNAt returns DSN's URL with another address ("host:port", as every Addr
// method returns it), such as a proxy's in front of the cluster.
func (c *Cluster) DSNAt(addr string) string { return DSN(addr) }

// DSN returns a URL connecting at addr ("host:port") as pgtest's servers
// expect: to the Database database as the Superuser, without a password and
// without TLS. Cluster.DSNAt, a Patroni node's and an HAProxy's DSN are
// this.
func DSN(addr string) string { return dsn(url.User(Superuser), addr) }

// PasswordDSN returns a URL connecting at addr ("host:port") as PasswordUser
// with the given password, which is escaped as needed. The server checks it
// with scram-sha-256: only Password succeeds.
func (c *Cluster) PasswordDSN(addr, password string) string {
	return dsn(url.UserPassword(PasswordUser, password), addr)
}

func dsn(user *url.Userinfo, addr string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     user,
		Host:     addr,
		Path:     "/" + Database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Stop stops the server with mode and returns once it has exited. Smart
// waits for every client to disconnect. ctx bounds the wait (without a
// deadline, a minute). Stopping a stopped server is an error.
func (c *Cluster) Stop(ctx context.Context, mode ShutdownMode) error {
	if err := checkMode(mode); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errClosed
	}
	ctx, cancel := withDefaultTimeout(ctx, defaultWait+10*time.Second)
	defer cancel()
	_, err := c.run.Run(ctx, c.dir, "pg_ctl", "stop", "-D", c.data, "-m", string(mode), "-w", "-t", waitSeconds(ctx))
	if err == nil {
		c.waitExited()
	}
	return err
}

// Resume starts the server again after Stop, on the same port and data, and
// returns once it accepts connections. ctx bounds the wait. Resuming a running
// server is an error.
func (c *Cluster) Resume(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errClosed
	}
	return c.start(ctx)
}

// Restart stops the server with mode (as Stop does; it may also be stopped
// already) and starts it again, returning once it accepts connections. Every
// existing connection is gone afterwards. ctx bounds the wait (without a
// deadline, two minutes).
func (c *Cluster) Restart(ctx context.Context, mode ShutdownMode) error {
	if err := checkMode(mode); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errClosed
	}
	ctx, cancel := withDefaultTimeout(ctx, 2*defaultWait)
	defer cancel()
	if c.Running() {
		from := c.logSize()
		if _, err := c.run.Run(ctx, c.dir, "pg_ctl", "stop", "-D", c.data, "-m", string(mode),
			"-w", "-t", waitSeconds(ctx)); err != nil {
			return c.withLog(err, from)
		}
	}
	c.waitExited()
	return c.start(ctx)
}

// Running reports whether the server process is alive, as pg_ctl status sees
// it. A server that is alive may still be starting up or shutting down.
func (c *Cluster) Running() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.run.Run(ctx, c.dir, "pg_ctl", "status", "-D", c.data)
	return err == nil
}

// Close stops the server immediately and removes the cluster's directory.
// It is safe on a nil Cluster, after a failed Start, and more than once: calls
// after the first do nothing and return nil.
func (c *Cluster) Close() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	proc.Untrack(c)
	var errs []error
	if _, err := os.Stat(filepath.Join(c.data, "postmaster.pid")); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), closeStopWait)
		_, err := c.run.Run(ctx, c.dir, "pg_ctl", "stop", "-D", c.data, "-m", string(ModeImmediate), "-w", "-t", waitSeconds(ctx))
		cancel()
		if err != nil && c.Running() {
			// The immediate shutdown did not end in time (seen on a
			// loaded machine with a server started by pg_ctl in a network
			// namespace): the data is thrown away anyway, so kill the
			// postmaster; its backends exit when they see it gone.
			c.killPostmaster()
		}
		// A stale postmaster.pid (the server crashed) makes pg_ctl fail
		// with nothing left to stop.
		if err != nil && c.Running() {
			errs = append(errs, err)
		}
	}
	c.waitExited()
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("pgtest: %w", err))
	}
	if len(errs) == 0 {
		proc.Unwatch(c.dir)
	}
	return errors.Join(errs...)
}

// closeStopWait bounds Close's immediate shutdown before it kills the
// postmaster.
const closeStopWait = 15 * time.Second

// killPostmaster sends SIGKILL to the process postmaster.pid names, and waits
// up to 5 s for it to be gone.
func (c *Cluster) killPostmaster() {
	b, err := os.ReadFile(filepath.Join(c.data, "postmaster.pid"))
	if err != nil {
		return
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 1 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			_ = os.Remove(filepath.Join(c.data, "postmaster.pid"))
			return
		}
	}
}

// start starts the server and waits until it accepts connections.
//
// The server is our child, started as pg_ctl start would (in a session of its
// own, its output appended to the log) but not detached: so it can be bound
// to this process (proc.StartBound), and on Linux gets SIGQUIT, an immediate
// shutdown, when the process exits without Close, even if the watchdog was
// killed with it.
func (c *Cluster) start(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx, defaultWait)
	defer cancel()
	from := c.logSize()
	logf, err := os.OpenFile(c.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer logf.Close() // the server has its own descriptor
	if err := c.run.Chown(c.log); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	cmd := exec.Command(filepath.Join(c.run.BinDir, "postgres"), "-D", c.data)
	cmd.Dir = c.dir
	cmd.Env = proc.ServerEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.run.Cred, Setsid: true}
	if err := proc.StartBound(cmd, syscall.SIGQUIT); err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	pm := &postmaster{pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(pm.exited)
	}()
	if err := c.waitStarted(ctx, pm); err != nil {
		_ = syscall.Kill(pm.pid, syscall.SIGQUIT)
		select {
		case <-pm.exited:
		case <-time.After(10 * time.Second):
		}
		return c.withLog(err, from)
	}
	c.pm = pm
	return c.waitReady(ctx, from)
}

// waitStarted waits until the server pm says in postmaster.pid that it
// accepts connections, as pg_ctl start -w does, or has exited.
func (c *Cluster) waitStarted(ctx context.Context, pm *postmaster) error {
	t := time.NewTicker(pollEvery / 4)
	defer t.Stop()
	for {
		b, _ := os.ReadFile(filepath.Join(c.data, "postmaster.pid"))
		// pid, data directory, start time, port, socket directory, listen
		// address, shared memory key, status.
		lines := strings.Split(string(b), "\n")
		if len(lines) >= 8 && strings.TrimSpace(lines[0]) == strconv.Itoa(pm.pid) {
			switch strings.TrimSpace(lines[7]) {
			case "ready", "standby":
				return nil
			}
		}
		select {
		case <-pm.exited:
			return errors.New("pgtest: postgres exited at start")
		case <-ctx.Done():
			return fmt.Errorf("pgtest: postgres not started: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// waitExited waits a while for the server start started to exit, once told
// to stop.
func (c *Cluster) waitExited() {
	if c.pm == nil {
		return
	}
	select {
	case <-c.pm.exited:
	case <-time.After(10 * time.Second):
	}
}

// waitReady polls until a connection succeeds. pg_ctl -w has normally waited
// already, so the first attempt usually does.
func (c *Cluster) waitReady(ctx context.Context, logFrom int64) error {
	ctx, cancel := withDefaultTimeout(ctx, defaultWait)
	defer cancel()
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		err := c.WithConn(ctx, func(*pgx.Conn) error { return nil })
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return c.withLog(fmt.Errorf("pgtest: server not accepting connections: %w", err), logFrom)
		case <-t.C:
		}
	}
}

// logSize returns the server log's current size, to show only what a
// command adds to it.
func (c *Cluster) logSize() int64 {
	fi, err := os.Stat(c.log)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// withLog appends the tail of what the server logged since offset from to err,
// and marks it errAddrInUse when the server could not bind its port.
func (c *Cluster) withLog(err error, from int64) error {
	b, rerr := os.ReadFile(c.log)
	if rerr != nil || int64(len(b)) <= from {
		return err
	}
	b = b[from:]
	const maxTail = 4 << 10
	if len(b) > maxTail {
		b = b[len(b)-maxTail:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	tail := strings.TrimSpace(string(b))
	if strings.Contains(tail, "Address already in use") {
		return fmt.Errorf("%w: %w\nserver log (%s):\n%s", errAddrInUse, err, c.log, tail)
	}
	return fmt.Errorf("%w\nserver log (%s):\n%s", err, c.log, tail)
}

func checkMode(mode ShutdownMode) error {
	switch mode {
	case ModeSmart, ModeFast, ModeImmediate:
		return nil
	}
	return fmt.Errorf("pgtest: invalid shutdown mode %q (want smart, fast or immediate)", mode)
}

// withDefaultTimeout bounds ctx by d unless it already has a deadline.
func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// waitSeconds is pg_ctl's -t argument: the time left before ctx's deadline, in
// whole seconds, at least 1.
func waitSeconds(ctx context.Context) string {
	secs := int(defaultWait / time.Second)
	if dl, ok := ctx.Deadline(); ok {
		secs = max(1, int(time.Until(dl)/time.Second))
	}
	return strconv.Itoa(secs)
}
