package pgresilient

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgresilient/pgresilient/pgtest"
)

// sockOpts are a socket's TCP settings, read back with getsockopt.
type sockOpts struct {
	keepalive   bool
	idle        time.Duration // TCP_KEEPIDLE
	interval    time.Duration // TCP_KEEPINTVL
	count       int           // TCP_KEEPCNT
	userTimeout time.Duration // TCP_USER_TIMEOUT
}

func (o sockOpts) String() string {
	return fmt.Sprintf("keepalive=%v idle=%v interval=%v count=%d user_timeout=%v",
		o.keepalive, o.idle, o.interval, o.count, o.userTimeout)
}

// tcpSocket returns the TCP connection beneath a pgresilient connection.
func tcpSocket(t *testing.T, conn *sql.Conn) *net.TCPConn {
	t.Helper()
	var tc *net.TCPConn
	if err := conn.Raw(func(dc any) error {
		pc, err := PgxConn(dc)
		if err != nil {
			return err
		}
		nc := pc.PgConn().Conn()
		for range 4 {
			if c, ok := nc.(*net.TCPConn); ok {
				tc = c
				return nil
			}
			u, ok := nc.(interface{ NetConn() net.Conn })
			if !ok {
				break
			}
			nc = u.NetConn()
		}
		return fmt.Errorf("no *net.TCPConn beneath %T", pc.PgConn().Conn())
	}); err != nil {
		t.Fatal(err)
	}
	return tc
}

// pgConnOf returns the *pgconn.PgConn beneath a pgresilient connection.
func pgConnOf(t *testing.T, conn *sql.Conn) *pgconn.PgConn {
	t.Helper()
	var pc *pgconn.PgConn
	if err := conn.Raw(func(dc any) error {
		c, err := PgxConn(dc)
		if err == nil {
			pc = c.PgConn()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return pc
}

// waitCleanup waits for pgx's goroutines that close connections broken
// during a statement: they send a cancel request, which a blackhole holds up
// to 15 s.
func waitCleanup(t *testing.T, pcs ...*pgconn.PgConn) {
	t.Helper()
	for _, pc := range pcs {
		select {
		case <-pc.CleanupDone():
		case <-time.After(20 * time.Second):
			t.Error("pgx's cleanup of a broken connection still running after 20s")
		}
	}
}

// control runs f on tc's file descriptor.
func control(t *testing.T, tc *net.TCPConn, f func(fd int)) {
	t.Helper()
	rc, err := tc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Control(func(fd uintptr) { f(int(fd)) }); err != nil {
		t.Fatal(err)
	}
}

func readSockOpts(t *testing.T, tc *net.TCPConn) sockOpts {
	t.Helper()
	var o sockOpts
	var errs []error
	get := func(fd, level, opt int) int {
		v, err := syscall.GetsockoptInt(fd, level, opt)
		errs = append(errs, err)
		return v
	}
	control(t, tc, func(fd int) {
		o.keepalive = get(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE) != 0
		o.idle = time.Duration(get(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)) * time.Second
		o.interval = time.Duration(get(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL)) * time.Second
		o.count = get(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT)
		o.userTimeout = time.Duration(get(fd, syscall.IPPROTO_TCP, tcpUserTimeout)) * time.Millisecond
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return o
}

// tcpState returns TCP_INFO's tcpi_state: 1 is ESTABLISHED.
func tcpState(t *testing.T, tc *net.TCPConn) uint8 {
	t.Helper()
	var info syscall.TCPInfo
	var errno syscall.Errno
	control(t, tc, func(fd int) {
		size := uint32(unsafe.Sizeof(info))
		_, _, errno = syscall.Syscall6(syscall.SYS_GETSOCKOPT, uintptr(fd), syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
	})
	if errno != 0 {
		t.Fatal(errno)
	}
	return info.State
}

const tcpEstablished = 1

// systemKeepalive reads the kernel's keepalive defaults (this network
// namespace's sysctls).
func systemKeepalive(t *testing.T) (idle, interval time.Duration, count int) {
	t.Helper()
	read := func(name string) int {
		b, err := os.ReadFile("/proc/sys/net/ipv4/" + name)
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	return time.Duration(read("tcp_keepalive_time")) * time.Second,
		time.Duration(read("tcp_keepalive_intvl")) * time.Second, read("tcp_keepalive_probes")
}

// A DSN with libpq's five TCP parameters connects through pgresilient, and
// the socket carries them; raw pgx sends them to the server, which refuses
// them.
func TestTCPParamsOnSocket(t *testing.T) {
	c := needCluster(t)
	ctx := t.Context()
	sysIdle, sysInterval, sysCount := systemKeepalive(t)
	tests := []struct {
		name   string
		params string
		want   sockOpts
	}{
		{"libpq's five", "keepalives=1&keepalives_idle=7&keepalives_interval=3&keepalives_count=4&tcp_user_timeout=12345",
			sockOpts{true, 7 * time.Second, 3 * time.Second, 4, 12345 * time.Millisecond}},
		{"defaults", "",
			sockOpts{true, defaultKeepalivesIdle, defaultKeepalivesInterval, defaultKeepalivesCount, defaultTCPUserTimeout}},
		{"zeros are the system's settings", "keepalives_idle=0&keepalives_interval=0&keepalives_count=0&tcp_user_timeout=0",
			sockOpts{true, sysIdle, sysInterval, sysCount, 0}},
		{"keepalives off", "keepalives=0&tcp_user_timeout=2000",
			sockOpts{false, sysIdle, sysInterval, sysCount, 2 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dsn := c.DSN()
			if tt.params != "" {
				dsn += "&" + tt.params
			}
			db := openDB(t, DriverName, dsn)
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if got := readSockOpts(t, tcpSocket(t, conn)); got != tt.want {
				t.Errorf("socket: %v\nwant    %v", got, tt.want)
			}
			if !strings.Contains(tt.params, "keepalives=1") {
				return
			}
			// Raw pgx, side by side: the server refuses the parameters.
			raw, err := pgx.Connect(ctx, dsn)
			if err == nil {
				raw.Close(ctx)
				t.Fatal("raw pgx connected with libpq's TCP parameters: pgx learnt them, revisit")
			}
			if !strings.Contains(err.Error(), `unrecognized configuration parameter "keepalives`) {
				t.Errorf("raw pgx: %v, want the server's unrecognized configuration parameter", err)
			}
		})
	}
}

// A hand-built Config over pgx's own ConnConfig (whose dialer sets Go's
// keepalive defaults) gets its TCP settings too.
func TestTCPParamsConfig(t *testing.T) {
	c := needCluster(t)
	cc, err := pgx.ParseConfig(c.DSN())
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{ConnConfig: cc, KeepalivesIdle: 1500 * time.Millisecond, KeepalivesCount: 7, TCPUserTimeout: -1}
	cn, err := NewConnectorConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := openDBConnector(t, cn)
	conn, err := db.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Go rounds 1.5s up; -1 leaves the user timeout as dialled (none).
	want := sockOpts{true, 2 * time.Second, defaultKeepalivesInterval, 7, 0}
	if got := readSockOpts(t, tcpSocket(t, conn)); got != want {
		t.Errorf("socket: %v\nwant    %v", got, want)
	}
}

// openKernelOnly opens dsn with the host monitor (monitor.go) out of the
// way, so that only the kernel, through the TCP settings, can end a
// statement on a silent server: the monitor would end it first.
func openKernelOnly(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	cn, err := NewConnector(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cn.mon.setGrace(time.Hour)
	return openDBConnector(t, cn)
}

// scaledTCP are TCP settings about 8 times shorter than the defaults' 25 s,
// for tests: a silent server is noticed after about 3 s.
const scaledTCP = "keepalives_idle=1&keepalives_interval=1&keepalives_count=2&tcp_user_timeout=3000"

// With the TCP settings, a kernel blackhole ends the statements it catches
// and the idle connections after idle + interval × count (or the user
// timeout, for an unacknowledged write), without any deadline; raw pgx's
// statement, side by side, is still waiting.
func TestTCPParamsBlackhole(t *testing.T) {
	b := pgtest.NewBlackholeableT(t)
	ctx := t.Context()
	db := openKernelOnly(t, b.DSN()+"&breaker=off&"+scaledTCP)
	pin := func() *sql.Conn {
		t.Helper()
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	idle, inFlight, write := pin(), pin(), pin()
	idleSock := tcpSocket(t, idle)
	pcs := map[string]*pgconn.PgConn{"in flight": pgConnOf(t, inFlight), "write": pgConnOf(t, write)}
	raw, err := pgx.Connect(ctx, b.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close(context.Background())

	type result struct {
		name string
		took time.Duration
		err  error
	}
	results := make(chan result, 3)
	var start time.Time
	started := make(chan struct{})
	run := func(name string, f func(context.Context) error) {
		go func() {
			<-started
			cctx, cancel := context.WithTimeout(ctx, 12*time.Second)
			defer cancel()
			err := f(cctx)
			results <- result{name, time.Since(start), err}
		}()
	}
	// The statements in flight are sent, and acknowledged, before the
	// blackhole.
	sleepCtx, sleepCancel := context.WithCancel(ctx)
	defer sleepCancel()
	sleepErr := make(chan error, 1)
	go func() { _, err := inFlight.ExecContext(sleepCtx, "select pg_sleep(60)"); sleepErr <- err }()
	rawErr := make(chan error, 1)
	rawCtx, rawCancel := context.WithCancel(ctx)
	defer rawCancel()
	go func() { _, err := raw.Exec(rawCtx, "select pg_sleep(60)"); rawErr <- err }()
	time.Sleep(500 * time.Millisecond)
	if err := b.Blackhole(); err != nil {
		t.Fatal(err)
	}
	defer b.Restore()
	start = time.Now()
	run("in flight", func(ctx context.Context) error {
		select {
		case err := <-sleepErr:
			return err
		case <-ctx.Done():
			sleepCancel()
			<-sleepErr
			return ctx.Err()
		}
	})
	run("write", func(ctx context.Context) error { _, err := write.ExecContext(ctx, "select 1"); return err })
	run("idle", func(ctx context.Context) error {
		for tcpState(t, idleSock) == tcpEstablished {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
		return nil
	})
	close(started)
	var broken []*pgconn.PgConn
	for range 3 {
		r := <-results
		if errors.Is(r.err, ErrConnLost) {
			broken = append(broken, pcs[r.name])
		}
		t.Logf("%s: %v after %v", r.name, r.err, r.took.Round(10*time.Millisecond))
		if r.took < 2*time.Second || r.took > 8*time.Second {
			t.Errorf("%s ended after %v, want about 3s", r.name, r.took)
		}
		if r.name != "idle" && !errors.Is(r.err, ErrConnLost) {
			t.Errorf("%s: %v, want ErrConnLost", r.name, r.err)
		}
		if r.name == "idle" && r.err != nil {
			t.Errorf("idle socket still established: %v", r.err)
		}
	}
	select {
	case err := <-rawErr:
		t.Errorf("raw pgx's statement ended during the blackhole: %v", err)
	default: // still waiting: Go's keepalive (15s + 9 × 15s) has not fired
	}
	// Restore first: pgx's cancel request must reach the server.
	if err := b.Restore(); err != nil {
		t.Fatal(err)
	}
	rawCancel()
	<-rawErr
	// The broken connections' cleanup, whose cancel requests are
	// retransmitted into the restored network.
	waitCleanup(t, broken...)
}

// A healthy server acknowledges keepalive probes: a statement that runs much
// longer than the time a silent server is noticed in is never cut. With the
// scaled settings (noticed after about 3 s), an 8 s statement; the defaults
// differ only by their constants.
func TestTCPParamsLongStatement(t *testing.T) {
	c := needCluster(t)
	db := openDB(t, DriverName, c.DSN()+"&"+scaledTCP)
	start := time.Now()
	if _, err := db.ExecContext(t.Context(), "select pg_sleep(8)"); err != nil {
		t.Fatalf("8 s statement with a 3 s silent-server bound: %v", err)
	}
	if took := time.Since(start); took < 8*time.Second {
		t.Fatalf("pg_sleep(8) took %v", took)
	}
}

// TestTCPParamsMeasure measures, with a kernel blackhole, how long each
// candidate setting takes to end an idle connection, a statement in flight,
// and a write made into the blackhole. The defaults (docs/configuration.md)
// were chosen from its output. It takes about 3 minutes: it runs only with
// PGRESILIENT_MEASURE_TCP=1.
//
//	PGRESILIENT_MEASURE_TCP=1 go test -count=1 -run TestTCPParamsMeasure -v .
func TestTCPParamsMeasure(t *testing.T) {
	if os.Getenv("PGRESILIENT_MEASURE_TCP") != "1" {
		t.Skip("a 3-minute measurement: set PGRESILIENT_MEASURE_TCP=1 to run it")
	}
	const limit = 170 * time.Second
	b := pgtest.NewBlackholeableT(t)
	ctx := t.Context()
	type candidate struct {
		name, params string
		// The kernel's schedule: idle and in flight; a write (0: beyond
		// limit, for tcp_retries2's ~15 minutes).
		want, wantWrite time.Duration
	}
	candidates := []candidate{
		{"pgx's dialer (Go: 15s, 15s, 9)", "keepalives_idle=15&keepalives_interval=15&keepalives_count=9&tcp_user_timeout=0", 150 * time.Second, 0},
		{"off", "keepalives=0&tcp_user_timeout=0", 0, 0},
		{"5s, 5s, 3, 20000ms", "keepalives_idle=5&keepalives_interval=5&keepalives_count=3&tcp_user_timeout=20000", 20 * time.Second, 20 * time.Second},
		{"10s, 5s, 3, 25000ms (default)", "", 25 * time.Second, 25 * time.Second},
		{"15s, 5s, 3, 30000ms", "keepalives_idle=15&keepalives_interval=5&keepalives_count=3&tcp_user_timeout=30000", 30 * time.Second, 30 * time.Second},
		{"30s, 10s, 3, 60000ms", "keepalives_idle=30&keepalives_interval=10&keepalives_count=3&tcp_user_timeout=60000", 60 * time.Second, 60 * time.Second},
		{"10s, 5s, 3, no user timeout", "tcp_user_timeout=0", 25 * time.Second, 0},
		{"10s, 5s, 3, 60000ms", "tcp_user_timeout=60000", 60 * time.Second, 60 * time.Second},
	}
	type probe struct {
		cand  int
		kind  string
		took  time.Duration
		err   error
		ended bool // before limit
	}
	var mu sync.Mutex
	var probes []probe
	var wg sync.WaitGroup
	started := make(chan struct{})
	var start time.Time
	record := func(p probe) {
		p.ended = p.took < limit
		mu.Lock()
		probes = append(probes, p)
		mu.Unlock()
	}
	// At limit, the blackhole is restored, then what is still waiting is
	// ended (pgx's cancel requests then reach the server).
	mctx, stop := context.WithCancel(ctx)
	defer stop()
	var sleeps sync.WaitGroup
	var pcs []*pgconn.PgConn
	for i, cand := range candidates {
		dsn := b.DSN() + "&breaker=off"
		if cand.params != "" {
			dsn += "&" + cand.params
		}
		db := openKernelOnly(t, dsn)
		var conns [3]*sql.Conn
		for j := range conns {
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			conns[j] = conn
		}
		sock := tcpSocket(t, conns[0])
		pcs = append(pcs, pgConnOf(t, conns[1]), pgConnOf(t, conns[2]))
		t.Logf("%s: %v", cand.name, readSockOpts(t, sock))
		sleeps.Add(1)
		done := make(chan error, 1)
		go func() {
			defer sleeps.Done()
			_, err := conns[1].ExecContext(mctx, "select pg_sleep(600)")
			done <- err
		}()
		wg.Add(3)
		go func() { // idle
			defer wg.Done()
			<-started
			for tcpState(t, sock) == tcpEstablished && mctx.Err() == nil {
				time.Sleep(100 * time.Millisecond)
			}
			record(probe{cand: i, kind: "idle", took: time.Since(start)})
		}()
		go func() { // in flight
			defer wg.Done()
			<-started
			err := <-done
			record(probe{cand: i, kind: "in flight", took: time.Since(start), err: err})
		}()
		go func() { // write
			defer wg.Done()
			<-started
			_, err := conns[2].ExecContext(mctx, "select 1")
			record(probe{cand: i, kind: "write", took: time.Since(start), err: err})
		}()
	}
	time.Sleep(time.Second) // the pg_sleeps are acknowledged
	if err := b.Blackhole(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	close(started)
	time.AfterFunc(limit, func() {
		if err := b.Restore(); err != nil {
			t.Error(err)
		}
		stop()
	})
	wg.Wait()
	sleeps.Wait()
	waitCleanup(t, pcs...)

	t.Logf("| setting | idle connection | statement in flight | write into the blackhole |")
	t.Logf("|---|---|---|---|")
	for i, cand := range candidates {
		row := map[string]string{}
		for _, p := range probes {
			if p.cand != i {
				continue
			}
			s := fmt.Sprintf("%.1f s", p.took.Seconds())
			if !p.ended {
				s = fmt.Sprintf("> %.0f s", limit.Seconds())
			}
			row[p.kind] = s
			want := cand.want
			if p.kind == "write" {
				want = cand.wantWrite
			}
			switch {
			case want == 0 && p.ended:
				t.Errorf("%s, %s: ended after %v (%v), want beyond %v", cand.name, p.kind, p.took, p.err, limit)
			case want != 0 && (!p.ended || p.took < want-2*time.Second || p.took > want+5*time.Second):
				t.Errorf("%s, %s: %v (ended %v), want about %v", cand.name, p.kind, p.took, p.ended, want)
			}
		}
		t.Logf("| %s | %s | %s | %s |", cand.name, row["idle"], row["in flight"], row["write"])
	}
}
