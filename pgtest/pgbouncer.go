package pgtest

import (
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

	"github.com/jackc/pgx/v5"

	"github.com/pgresilient/pgresilient/pgtest/internal/proc"
)

// PoolMode is when a Bouncer's client gives its server connection back, as
// PgBouncer's pool_mode names it.
type PoolMode string

// The pool modes.
const (
	PoolSession     PoolMode = "session"     // a client keeps one server connection until it disconnects
	PoolTransaction PoolMode = "transaction" // a client holds a server connection only for one transaction
)

// BouncerAdminDB is the name of PgBouncer's admin console database.
const BouncerAdminDB = "pgbouncer"

// ErrBouncerNotFound is matched (errors.Is) by the error StartBouncer returns
// when the pgbouncer binary is missing. The message says how to install it.
var ErrBouncerNotFound = errors.New("pgtest: pgbouncer not found")

const (
	bouncerLog      = "pgbouncer.log"
	bouncerStopWait = 10 * time.Second
)

// BouncerConfig chooses how a Bouncer pools. Zero fields take the defaults
// noted; the small limits exist so that tests can provoke PgBouncer's own
// errors ("no more connections allowed (max_client_conn)",
// "query_wait_timeout").
type BouncerConfig struct {
	PoolMode         PoolMode      // PoolSession or PoolTransaction; "" is PoolSession
	MaxClientConn    int           // client connections accepted in all; 0 is 100
	DefaultPoolSize  int           // server connections per user and database; 0 is 20
	QueryWaitTimeout time.Duration // how long a client may wait for a server connection; 0 is 120 s (PgBouncer's default)
	ServerLoginRetry time.Duration // wait before a new server login after one failed; 0 is 500 ms (PgBouncer's default, 15 s, would stall tests after a server restart)
}

// Bouncer is a PgBouncer started by StartBouncer in front of a Cluster,
// listening on 127.0.0.1 at a port of its own. It trusts every user named in
// its auth file (Superuser and PasswordUser) without a password and logs in
// to the cluster as them; Superuser is an admin of the console database
// "pgbouncer". Its methods are safe for concurrent use; Restart and Close run
// one at a time.
//
// PgBouncer runs as a child of the test process; on Linux it is killed when
// the test process exits without Close (a timeout, kill -9), and on SIGINT or
// SIGTERM NewBouncerT closes it before the process exits.
type Bouncer struct {
	run     *proc.Runner
	bin     string
	cluster *Cluster
	cfg     BouncerConfig
	dir     string // cluster.Dir()/pgbouncer-*: config, auth file, log, pid file
	ini     string
	log     string
	port    int

	mu     sync.Mutex // serializes lifecycle changes
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	closed bool
}

// bouncerPaths are searched for pgbouncer after PATH: Debian puts it in
// /usr/sbin, which a normal user's PATH may lack.
var bouncerPaths = []string{"/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer"}

// bouncerBinary finds pgbouncer on PATH or in bouncerPaths.
func bouncerBinary() (string, error) {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	for _, p := range bouncerPaths {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w on PATH or in /usr/sbin: install it (Debian/Ubuntu: apt-get install pgbouncer; "+
		"its own service is not used) or set %s=1 to skip the integration tests", ErrBouncerNotFound, SkipEnv)
}

// NewBouncerT starts a Bouncer in front of c for one test and closes it at
// the test's end, or on SIGINT or SIGTERM before the process exits. It skips the test when PGRESILIENT_SKIP_INTEGRATION=1 and
// fails it when pgbouncer is missing (the message says how to install it).
func NewBouncerT(t testing.TB, c *Cluster, cfg BouncerConfig) *Bouncer {
	t.Helper()
	if SkipRequested() {
		t.Skip(SkipEnv + "=1")
	}
	proc.CloseOnSignal()
	ctx, cancel := context.WithTimeout(context.Background(), defaultWait)
	defer cancel()
	b, err := StartBouncer(ctx, c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close pgbouncer: %v", err)
		}
	})
	return b
}

// StartBouncer starts PgBouncer in front of c, in a directory of its own
// inside c.Dir(), on a free 127.0.0.1 port, and returns once its admin
// console answers. As root it runs as the "postgres" account, as the cluster
// does. It retries with another port, up to 3 times in all, when the chosen
// one was taken meanwhile. Close stops it; should the test process exit
// without Close, Linux kills it, and the watchdog of its cluster (see Start)
// or the next Start's reaping does elsewhere.
func StartBouncer(ctx context.Context, c *Cluster, cfg BouncerConfig) (*Bouncer, error) {
	bin, err := bouncerBinary()
	if err != nil {
		return nil, err
	}
	switch cfg.PoolMode {
	case "":
		cfg.PoolMode = PoolSession
	case PoolSession, PoolTransaction:
	default:
		return nil, fmt.Errorf("pgtest: invalid pool mode %q (want %q or %q)", cfg.PoolMode, PoolSession, PoolTransaction)
	}
	if cfg.MaxClientConn <= 0 {
		cfg.MaxClientConn = 100
	}
	if cfg.DefaultPoolSize <= 0 {
		cfg.DefaultPoolSize = 20
	}
	if cfg.QueryWaitTimeout <= 0 {
		cfg.QueryWaitTimeout = 120 * time.Second
	}
	if cfg.ServerLoginRetry <= 0 {
		cfg.ServerLoginRetry = 500 * time.Millisecond
	}
	dir, err := os.MkdirTemp(c.Dir(), proc.BouncerDirPrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	b := &Bouncer{
		run:     c.run,
		bin:     bin,
		cluster: c,
		cfg:     cfg,
		dir:     dir,
		ini:     filepath.Join(dir, "pgbouncer.ini"),
		log:     filepath.Join(dir, bouncerLog),
	}
	proc.Track(b)
	if err := b.create(ctx); err != nil {
		return nil, errors.Join(err, b.Close())
	}
	return b, nil
}

func (b *Bouncer) create(ctx context.Context) error {
	if err := b.run.Chown(b.dir); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	auth := fmt.Sprintf("%q \"\"\n%q %q\n", Superuser, PasswordUser, Password)
	if err := b.writeFile("userlist.txt", auth); err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		port, err := proc.FreePort()
		if err != nil {
			return err
		}
		b.port = port
		if err := b.writeFile("pgbouncer.ini", b.settings()); err != nil {
			return err
		}
		err = b.start(ctx)
		if err == nil {
			return nil
		}
		if attempt < portRetries && errors.Is(err, errAddrInUse) {
			continue
		}
		return err
	}
}

func seconds(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }

// settings is the content of pgbouncer.ini.
func (b *Bouncer) settings() string {
	lines := []string{
		"; written by pgtest",
		"[databases]",
		"* = host=" + host + " port=" + strconv.Itoa(b.cluster.Port()),
		"[pgbouncer]",
		"listen_addr = " + host,
		"listen_port = " + strconv.Itoa(b.port),
		"unix_socket_dir =",
		"auth_type = trust",
		"auth_file = " + filepath.Join(b.dir, "userlist.txt"),
		"admin_users = " + Superuser,
		"pool_mode = " + string(b.cfg.PoolMode),
		"max_client_conn = " + strconv.Itoa(b.cfg.MaxClientConn),
		"default_pool_size = " + strconv.Itoa(b.cfg.DefaultPoolSize),
		"query_wait_timeout = " + seconds(b.cfg.QueryWaitTimeout),
		"server_login_retry = " + seconds(b.cfg.ServerLoginRetry),
		"ignore_startup_parameters = extra_float_digits",
		"log_connections = 1",
		"log_disconnections = 1",
		"log_pooler_errors = 1",
	}
	return strings.Join(lines, "\n") + "\n"
}

func (b *Bouncer) writeFile(name, content string) error {
	path := filepath.Join(b.dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := b.run.Chown(path); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// start runs pgbouncer in the foreground as our child, its output appended to
// the log, and waits until the admin console answers.
func (b *Bouncer) start(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx, defaultWait)
	defer cancel()
	from := fileSize(b.log)
	logf, err := os.OpenFile(b.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(b.bin, b.ini)
	cmd.Dir = b.dir
	cmd.Env = proc.ServerEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	if b.run.Cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: b.run.Cred}
	}
	if err := proc.StartBound(cmd, syscall.SIGKILL); err != nil {
		return fmt.Errorf("pgtest: start pgbouncer: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	b.cmd, b.exited = cmd, exited
	// For proc.ReapBouncers, should this process die without Close.
	if err := os.WriteFile(filepath.Join(b.dir, proc.BouncerPidFile), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return errors.Join(fmt.Errorf("pgtest: %w", err), b.stop())
	}
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		err := b.WithAdmin(ctx, func(conn *pgx.Conn) error {
			_, err := conn.Exec(ctx, "SHOW VERSION")
			return err
		})
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return b.withLog(fmt.Errorf("pgtest: pgbouncer exited at start: %s", cmd.ProcessState), from)
		case <-ctx.Done():
			return errors.Join(b.withLog(fmt.Errorf("pgtest: pgbouncer not answering: %w", err), from), b.stop())
		case <-t.C:
		}
	}
}

// stop ends the running pgbouncer with SIGTERM (an immediate shutdown in
// PgBouncer 1.18: every client connection is closed at once), then SIGKILL
// after 10 s, and waits for it to exit.
func (b *Bouncer) stop() error {
	if b.cmd == nil {
		return nil
	}
	defer func() { b.cmd = nil }()
	if !proc.Terminate(b.cmd.Process, b.exited, bouncerStopWait) {
		return nil
	}
	return fmt.Errorf("pgtest: pgbouncer ignored SIGTERM for %v: killed", bouncerStopWait)
}

// Restart stops PgBouncer (every client and server connection is closed at
// once) and starts it again on the same port, returning once it answers.
func (b *Bouncer) Restart(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errBouncerClosed
	}
	if err := b.stop(); err != nil {
		return err
	}
	return b.start(ctx)
}

// Close stops PgBouncer and removes its directory. It is safe on a nil
// Bouncer and more than once.
func (b *Bouncer) Close() error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	proc.Untrack(b)
	err := b.stop()
	if rerr := os.RemoveAll(b.dir); rerr != nil {
		err = errors.Join(err, fmt.Errorf("pgtest: %w", rerr))
	}
	return err
}

var errBouncerClosed = errors.New("pgtest: pgbouncer closed")

// Host returns "127.0.0.1".
func (b *Bouncer) Host() string { return host }

// Port returns PgBouncer's port; it stays the same across Restart.
func (b *Bouncer) Port() int { return b.port }

// Addr returns "127.0.0.1:PORT".
func (b *Bouncer) Addr() string { return net.JoinHostPort(host, strconv.Itoa(b.port)) }

// Dir returns PgBouncer's directory (configuration, auth file, log).
func (b *Bouncer) Dir() string { return b.dir }

// LogFile returns the path of PgBouncer's log.
func (b *Bouncer) LogFile() string { return b.log }

// Config returns the configuration in effect, defaults filled in.
func (b *Bouncer) Config() BouncerConfig { return b.cfg }

// DSN returns a URL connecting through PgBouncer to the cluster's postgres
// database as Superuser, without TLS. Add the pool mode's pgx parameters
// yourself (transaction pooling needs default_query_exec_mode).
func (b *Bouncer) DSN() string { return b.cluster.DSNAt(b.Addr()) }

// AdminDSN returns a URL for PgBouncer's admin console (database "pgbouncer",
// as Superuser). The console speaks only the simple query protocol.
func (b *Bouncer) AdminDSN() string {
	return strings.Replace(b.DSN(), "/"+Database+"?", "/"+BouncerAdminDB+"?", 1) + "&default_query_exec_mode=simple_protocol"
}

// WithAdmin opens a connection to the admin console, passes it to fn and
// closes it.
func (b *Bouncer) WithAdmin(ctx context.Context, fn func(conn *pgx.Conn) error) error {
	cfg, err := pgx.ParseConfig(b.AdminDSN())
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	cfg.ConnectTimeout = 5 * time.Second
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("pgtest: connect to the pgbouncer console: %w", err)
	}
	err = fn(conn)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	return errors.Join(err, conn.Close(cctx))
}

// Admin runs one admin console command, such as "SHOW POOLS" (its rows are
// discarded; use WithAdmin to read them).
func (b *Bouncer) Admin(ctx context.Context, command string) error {
	return b.WithAdmin(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, command)
		if err != nil {
			return fmt.Errorf("pgtest: pgbouncer %s: %w", command, err)
		}
		return nil
	})
}

// Reconnect runs RECONNECT on the cluster's database: every server connection
// is closed as soon as it is released (after its transaction, or its client
// session in session pooling) and replaced by a new one. Clients see nothing.
func (b *Bouncer) Reconnect(ctx context.Context) error {
	return b.Admin(ctx, "RECONNECT "+Database)
}

// Pause runs PAUSE on the cluster's database and returns when it is done:
// every server connection has been released and closed. In session pooling
// that means every client has disconnected: with an idle database/sql pool
// open, Pause waits until ctx ends. Queries issued meanwhile wait until
// Resume.
func (b *Bouncer) Pause(ctx context.Context) error {
	return b.Admin(ctx, "PAUSE "+Database)
}

// Resume runs RESUME on the cluster's database, after Pause or Kill.
func (b *Bouncer) Resume(ctx context.Context) error {
	return b.Admin(ctx, "RESUME "+Database)
}

// Kill runs KILL on the cluster's database: every client and server
// connection of it is closed at once, clients with FATAL 08P01 "database
// removed". The database then stays paused, as PgBouncer does: new queries
// wait until Resume.
func (b *Bouncer) Kill(ctx context.Context) error {
	return b.Admin(ctx, "KILL "+Database)
}

// withLog appends what PgBouncer logged since offset from to err, and marks
// it errAddrInUse when PgBouncer could not bind its port.
func (b *Bouncer) withLog(err error, from int64) error {
	data, rerr := os.ReadFile(b.log)
	if rerr != nil || int64(len(data)) <= from {
		return err
	}
	tail := strings.TrimSpace(string(data[from:]))
	if len(tail) > 4<<10 {
		tail = tail[len(tail)-4<<10:]
	}
	if strings.Contains(tail, "Address already in use") {
		return fmt.Errorf("%w: %w\npgbouncer log (%s):\n%s", errAddrInUse, err, b.log, tail)
	}
	return fmt.Errorf("%w\npgbouncer log (%s):\n%s", err, b.log, tail)
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}
