package pgresilient

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ngrok/sqlmw"

	"github.com/pgresilient/pgresilient/internal/benchcpu"
	"github.com/pgresilient/pgresilient/internal/selectone"
	"github.com/pgresilient/pgresilient/pgtest"
)

// The benchmarks compare pgresilient with the drivers it competes with, on
// the package's throwaway cluster. Each runs one sub-benchmark per driver,
// named driver=NAME, so that benchstat can put them side by side:
//
//	go test -run '^$' -bench . -count 6 -benchmem . | tee bench.txt
//	benchstat -col /driver bench.txt
//
// docs/performance.md has a run and what it means. Every sub-benchmark
// reports, besides ns/op, B/op and allocs/op, the CPU time the benchmark
// process spent per operation (cpu-ns/op): the client's share, since the
// server runs in processes of its own.

// benchDriver is one of the compared drivers.
type benchDriver struct {
	name string
	open func(dsn string) (*sql.DB, error)
}

// benchDrivers are the compared drivers, the baseline first: benchstat
// compares every column with the first.
var benchDrivers = []benchDriver{
	{"pgx", func(dsn string) (*sql.DB, error) { return sql.Open("pgx", dsn) }},
	{"pgresilient", func(dsn string) (*sql.DB, error) { return sql.Open(DriverName, dsn) }},
	// No breaker and no automatic rollback: what the conn and baseConn
	// layers cost by themselves, resilience aside.
	{"pgresilient-lean", func(dsn string) (*sql.DB, error) {
		return sql.Open(DriverName, withParams(dsn, "breaker=off&tx_autorollback=off"))
	}},
	// One user interceptor that does nothing: the price of the sqlmw chain,
	// which the default configuration does without.
	{"pgresilient-nullmw", func(dsn string) (*sql.DB, error) {
		c, err := NewConnector(dsn, WithInterceptor(sqlmw.NullInterceptor{}))
		if err != nil {
			return nil, err
		}
		return sql.OpenDB(c), nil
	}},
}

// withParams appends URL query parameters to a URL DSN.
func withParams(dsn, params string) string {
	if strings.Contains(dsn, "?") {
		return dsn + "&" + params
	}
	return dsn + "?" + params
}

// benchParallelConns is the number of goroutines, and of pooled connections,
// of the parallel benchmarks.
const benchParallelConns = 8

// forEachDriver runs fn as a sub-benchmark for each driver, on a pool of at
// most conns connections, all open and used once before fn starts. The pool is
// closed after each run of fn (checking that nothing is left in use), and
// once every driver ran, the server must have no client connection left.
func forEachDriver(b *testing.B, conns int, fn func(b *testing.B, db *sql.DB)) {
	c := pgtest.Require(b, cluster)
	if !c.Running() {
		b.Fatal("the cluster is not running")
	}
	dsn := c.DSN()
	b.Cleanup(func() { waitNoBackends(b, c) })
	for _, d := range benchDrivers {
		b.Run("driver="+d.name, func(b *testing.B) {
			defer watchdog(b, c, benchHangTimeout)()
			db := openBenchDB(b, d, dsn, conns)
			fn(b, db)
		})
	}
}

// benchHangTimeout bounds one run of a sub-benchmark, which takes about
// -benchtime (1s by default) plus the pool's setup.
const benchHangTimeout = time.Minute

// watchdog fails b if the run it guards lasts longer than d, instead of
// letting the whole run hang: it writes every goroutine's stack to stderr, then
// terminates the server's client connections, so that whatever waits on one
// of them returns. The returned stop must be called when the run ends.
func watchdog(b *testing.B, c *pgtest.Cluster, d time.Duration) (stop func()) {
	var mu sync.Mutex
	ended := false
	t := time.AfterFunc(d, func() {
		mu.Lock()
		defer mu.Unlock()
		if ended {
			return
		}
		b.Errorf("hung: no end after %v; goroutines on stderr; terminating the server's connections", d)
		fmt.Fprintf(os.Stderr, "%s hung after %v:\n", b.Name(), d)
		_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 2)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := c.TerminateBackends(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "terminate backends: %v\n", err)
		}
	})
	return func() {
		t.Stop()
		mu.Lock() // wait for a callback under way
		ended = true
		mu.Unlock()
	}
}

// openBenchDB opens d's pool, closed when the (sub-)benchmark run ends, with
// conns connections open, each of them already reused once, so that neither
// dialling nor the first-reuse ping of pgx falls in the timed loop.
func openBenchDB(b *testing.B, d benchDriver, dsn string, conns int) *sql.DB {
	b.Helper()
	db, err := d.open(dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeAndCheck(b, db) })
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns) // the default, 2, would close and redial
	ctx := context.Background()
	for range 2 {
		held := make([]*sql.Conn, 0, conns)
		for range conns {
			sc, err := db.Conn(ctx)
			if err != nil {
				b.Fatal(err)
			}
			held = append(held, sc)
			if err := sc.PingContext(ctx); err != nil {
				b.Fatal(err)
			}
		}
		for _, sc := range held {
			if err := sc.Close(); err != nil {
				b.Fatal(err)
			}
		}
	}
	if n := db.Stats().OpenConnections; n != conns {
		b.Fatalf("%d connections open after warming, want %d", n, conns)
	}
	return db
}

// waitNoBackends waits for the server to have no client connection left:
// a closed connection's backend takes a moment to exit.
func waitNoBackends(b *testing.B, c *pgtest.Cluster) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		n, err := c.ClientBackends(ctx)
		if err != nil {
			b.Errorf("count the server's client connections: %v", err)
			return
		}
		if n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			b.Errorf("%d client connections left on the server after the benchmark", n)
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// cpuStart returns the process's CPU time so far, for reportCPU.
func cpuStart() time.Duration {
	t, _ := benchcpu.Now()
	return t
}

// reportCPU reports the process's CPU time since start, per operation, as
// cpu-ns/op. Call it right after the timed loop, once b.N is final.
func reportCPU(b *testing.B, start time.Duration) {
	end, ok := benchcpu.Now()
	if !ok || b.N == 0 {
		return
	}
	b.ReportMetric(float64(end-start)/float64(b.N), "cpu-ns/op")
}

// benchWarmOps is how many times each benchmark runs its operation before
// timing it: pgx prepares and caches each statement on first use.
const benchWarmOps = 20

// measure runs op warm times, then times it in b.Loop, reporting allocations
// and client CPU per operation.
func measure(b *testing.B, warm int, op func()) {
	b.Helper()
	for range warm {
		op()
	}
	b.ReportAllocs()
	cpu := cpuStart()
	for b.Loop() {
		op()
	}
	reportCPU(b, cpu)
}

// BenchmarkQueryRow is one round trip, select 1, sequentially.
func BenchmarkQueryRow(b *testing.B) {
	forEachDriver(b, 1, func(b *testing.B, db *sql.DB) {
		ctx := context.Background()
		measure(b, benchWarmOps, func() {
			if err := selectone.Query(ctx, db); err != nil {
				b.Fatal(err)
			}
		})
	})
}

// BenchmarkQueryRowParallel is BenchmarkQueryRow from 8 goroutines over 8
// pooled connections.
func BenchmarkQueryRowParallel(b *testing.B) {
	forEachDriver(b, benchParallelConns, func(b *testing.B, db *sql.DB) {
		ctx := context.Background()
		warmParallel(b, func() error { return selectone.Query(ctx, db) })
		setParallelism(b, benchParallelConns)
		b.ReportAllocs()
		b.ResetTimer()
		cpu := cpuStart()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := selectone.Query(ctx, db); err != nil {
					b.Error(err) // not Fatal: this is not the benchmark's goroutine
					return
				}
			}
		})
		b.StopTimer()
		reportCPU(b, cpu)
	})
}

// setParallelism makes RunParallel start about n goroutines: it starts
// GOMAXPROCS times the parallelism.
func setParallelism(b *testing.B, n int) {
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism(max(1, (n+procs-1)/procs))
}

// warmParallel runs op benchWarmOps times on each of benchParallelConns
// goroutines at once, so that every pooled connection has run it.
func warmParallel(b *testing.B, op func() error) {
	b.Helper()
	errs := make(chan error, benchParallelConns)
	for range benchParallelConns {
		go func() {
			for range benchWarmOps {
				if err := op(); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range benchParallelConns {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkScan1000 reads a 1000-row result into Go ints: the per-row cost.
func BenchmarkScan1000(b *testing.B) {
	forEachDriver(b, 1, func(b *testing.B, db *sql.DB) {
		ctx := context.Background()
		measure(b, benchWarmOps, func() { scan1000(b, ctx, db) })
	})
}

func scan1000(b *testing.B, ctx context.Context, db *sql.DB) {
	rows, err := db.QueryContext(ctx, "select g from generate_series(1, 1000) g")
	if err != nil {
		b.Fatal(err)
	}
	sum, n := 0, 0
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			b.Fatal(err)
		}
		sum += v
		n++
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	if err := rows.Close(); err != nil {
		b.Fatal(err)
	}
	if n != 1000 || sum != 500500 {
		b.Fatalf("scanned %d rows summing to %d, want 1000 and 500500", n, sum)
	}
}

// benchTable creates an empty unlogged table (i bigint) for the running
// sub-benchmark, dropped when it ends.
func benchTable(b *testing.B, db *sql.DB) string {
	b.Helper()
	name := "bench_" + strings.NewReplacer("/", "_", "=", "_", "-", "_", "#", "_").Replace(strings.ToLower(b.Name()))
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, "drop table if exists "+name); err != nil {
		b.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "create unlogged table "+name+" (i bigint)"); err != nil {
		b.Fatal(err)
	}
	// Cleanups run last-in first-out: before the pool closes.
	b.Cleanup(func() {
		if _, err := db.ExecContext(context.Background(), "drop table "+name); err != nil {
			b.Errorf("drop %s: %v", name, err)
		}
	})
	return name
}

// BenchmarkPreparedInsert runs a statement prepared once, an insert into an
// unlogged table.
func BenchmarkPreparedInsert(b *testing.B) {
	forEachDriver(b, 1, func(b *testing.B, db *sql.DB) {
		ctx := context.Background()
		table := benchTable(b, db)
		stmt, err := db.PrepareContext(ctx, "insert into "+table+" (i) values ($1)")
		if err != nil {
			b.Fatal(err)
		}
		defer func() {
			if err := stmt.Close(); err != nil {
				b.Error(err)
			}
		}()
		i := 0
		insert := func() {
			i++
			if _, err := stmt.ExecContext(ctx, i); err != nil {
				b.Fatal(err)
			}
		}
		measure(b, benchWarmOps, insert)
	})
}

// BenchmarkTx runs a short transaction: BeginTx, an insert, a query, Commit.
func BenchmarkTx(b *testing.B) {
	forEachDriver(b, 1, func(b *testing.B, db *sql.DB) {
		ctx := context.Background()
		table := benchTable(b, db)
		insert := "insert into " + table + " (i) values ($1)"
		i := 0
		tx := func() {
			i++
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := tx.ExecContext(ctx, insert, i); err != nil {
				b.Fatal(err)
			}
			var n int
			if err := tx.QueryRowContext(ctx, "select 1").Scan(&n); err != nil {
				b.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				b.Fatal(err)
			}
		}
		measure(b, benchWarmOps, tx)
	})
}

// BenchmarkBreakerOpen is a statement rejected by an open breaker: with no
// pooled connection, database/sql asks the Connector for one, and the
// breaker refuses without dialling. The target is well under a microsecond,
// allocating nothing but the error. via=Connector calls Connect directly,
// without database/sql's share. It needs no server. Like BenchmarkPeek, it is
// named driver=pgresilient only to land in that column of benchstat's table.
func BenchmarkBreakerOpen(b *testing.B) {
	b.Run("driver=pgresilient", benchBreakerOpen)
}

func benchBreakerOpen(b *testing.B) {
	open := func(b *testing.B) (*Connector, *fakeDriver) {
		b.Helper()
		refused := dialRefused
		fd := &fakeDriver{connectErrs: []error{refused}}
		c, err := NewConnector("fake?breaker_failures=1&breaker_cooldown=1h&connect_retries=0", WithDriver(fd))
		if err != nil {
			b.Fatal(err)
		}
		// The server stays down for the prober too; Close stops it.
		c.breaker.probeFn = func(context.Context) error { return refused }
		b.Cleanup(func() { _ = c.Close() })
		if _, err := c.Connect(context.Background()); !errors.Is(err, syscall.ECONNREFUSED) {
			b.Fatalf("first connect: %v, want connection refused", err)
		}
		if s := c.Stats().Breaker; s != BreakerOpen {
			b.Fatalf("breaker %v after the failure, want open", s)
		}
		return c, fd
	}
	check := func(b *testing.B, fd *fakeDriver, connects int64) {
		b.Helper()
		if n := fd.connects.Load(); n != connects {
			b.Errorf("%d connection attempts reached the driver through the open breaker", n-connects)
		}
	}

	b.Run("via=sql.DB", func(b *testing.B) {
		c, fd := open(b)
		db := sql.OpenDB(c)
		defer db.Close()
		ctx := context.Background()
		if _, err := db.ExecContext(ctx, "insert"); !errors.Is(err, ErrCircuitOpen) {
			b.Fatalf("exec: %v, want ErrCircuitOpen", err)
		}
		connects := fd.connects.Load()
		measure(b, 0, func() {
			if _, err := db.ExecContext(ctx, "insert"); err == nil {
				b.Fatal("exec through an open breaker succeeded")
			}
		})
		check(b, fd, connects)
	})
	b.Run("via=Connector", func(b *testing.B) {
		c, fd := open(b)
		ctx := context.Background()
		connects := fd.connects.Load()
		measure(b, 0, func() {
			if _, err := c.Connect(ctx); err == nil {
				b.Fatal("connect through an open breaker succeeded")
			}
		})
		check(b, fd, connects)
	})
}

// BenchmarkBreakerClosed measures what the breaker costs every call while
// closed: the gate before it and the record after a success.
func BenchmarkBreakerClosed(b *testing.B) {
	b.Run("driver=pgresilient", func(b *testing.B) {
		br := newBreaker("", 5, time.Minute, slog.New(slog.DiscardHandler), nil)
		ctx := context.Background()
		measure(b, 0, func() {
			if err := br.before(); err != nil {
				b.Fatal(err)
			}
			br.done(ctx, nil)
		})
		if s := br.State(); s != BreakerClosed {
			b.Fatalf("breaker %v, want closed", s)
		}
	})
}

// BenchmarkPeek is the liveness check ResetSession makes on every reuse of a
// pooled connection: one non-blocking recv(MSG_PEEK) on an idle connection
// to the cluster.
func BenchmarkPeek(b *testing.B) {
	b.Run("driver=pgresilient", benchPeek)
}

func benchPeek(b *testing.B) {
	c := pgtest.Require(b, cluster)
	ctx := context.Background()
	pc, err := pgx.Connect(ctx, c.DSN())
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := pc.Close(ctx); err != nil {
			b.Error(err)
		}
	}()
	if err := pc.Ping(ctx); err != nil {
		b.Fatal(err)
	}
	p := newPeeker(pc.PgConn().Conn())
	if p == nil {
		b.Skip("no socket peek on this platform")
	}
	if s := p.state(); s != peekIdle {
		b.Fatalf("peek at an idle connection: %d, want idle", s)
	}
	measure(b, 0, func() {
		if p.state() != peekIdle {
			b.Fatal("the idle connection stopped looking idle")
		}
	})
}

// BenchmarkSyscallFloor is the cheapest system call, getpid: the part of
// BenchmarkPeek that any system call costs on this machine.
func BenchmarkSyscallFloor(b *testing.B) {
	b.Run("driver=pgresilient", func(b *testing.B) {
		measure(b, 0, func() { _ = syscall.Getpid() })
	})
}

// BenchmarkClock compares monoNow, the clock read once per checkout, with
// time.Now, which it replaced.
func BenchmarkClock(b *testing.B) {
	var sink int64
	b.Run("clock=monoNow", func(b *testing.B) {
		measure(b, 0, func() { sink += monoNow() })
	})
	b.Run("clock=time.Now", func(b *testing.B) {
		measure(b, 0, func() { sink += time.Now().UnixNano() })
	})
	_ = sink
}
