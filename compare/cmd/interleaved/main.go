// Command interleaved compares pgresilient with raw pgx and lib/pq closely
// enough to see a difference of a few percent on a noisy machine.
//
//	go run ./compare/cmd/interleaved            # the full run, a few minutes
//	go run ./compare/cmd/interleaved -quick     # a smoke test, seconds
//
// It starts its own throwaway PostgreSQL (pgtest, on 127.0.0.1) and runs the
// three drivers in one process, interleaved: for each workload and round,
// each driver runs the same fixed batch, in slices (100 operations by
// default): the drivers take turns slice by slice, in an order rotated every
// slice, so that a change in load within a round hits all three alike.
// Each slice measures wall time and the process's CPU time
// (getrusage(RUSAGE_SELF), user plus system: the client's, since the server
// runs in processes of its own). A change in the machine's load then hits
// the three drivers of one round alike, so the ratio of each driver to raw
// pgx in the same round is far steadier than either absolute number; the
// report gives, per workload, the median of those per-round ratios, a 95 %
// confidence interval of that median, their interquartile range and their
// extremes. Allocations per operation are counted in a separate pass, one
// goroutine at a time (runtime.MemStats.Mallocs).
//
// The bursty workloads let every pool idle past a second between bursts of
// one query on each of its 8 connections: bursty-8conn-idle with one
// untimed query just before each burst (a service's light steady traffic,
// which keeps one connection in use while the others idle), bursty-cold
// without it.
//
// Pinned to one CPU, client and server together (taskset -c 0 go run ...),
// the run-to-run noise is several times lower: every round trip then takes
// the same path through the scheduler, whichever driver makes it.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"regexp"
	"runtime"
	"runtime/debug"
	"sort"
	"sync"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "github.com/lib/pq"              // registers "postgres"

	"github.com/pgresilient/pgresilient"
	"github.com/pgresilient/pgresilient/internal/benchcpu"
	"github.com/pgresilient/pgresilient/internal/selectone"
	"github.com/pgresilient/pgresilient/pgtest"
)

func main() {
	// On ^C the running batch fails and the cluster is closed on the way out.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		stop()
		fmt.Fprintln(os.Stderr, "interleaved:", err)
		os.Exit(1)
	}
}

// config is what the flags set.
type config struct {
	rounds  int
	batch   int           // operations per batch of the short workloads
	bursts  int           // bursts per round of the bursty workload
	idle    time.Duration // the bursty workload's idle time between uses of a connection
	slice   int           // operations per slice: the drivers take turns slice by slice
	warm    int           // warm-up operations per goroutine before the rounds
	filter  *regexp.Regexp
	quick   bool
	verbose bool
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("interleaved", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.IntVar(&c.rounds, "rounds", 21, "rounds: each driver runs one batch of each workload per round")
	fs.IntVar(&c.batch, "batch", 2000, "operations per batch for select 1 and the prepared insert; the 1000-row scan runs batch/10, the transaction batch/4")
	fs.IntVar(&c.bursts, "bursts", 2, "bursts per round of the bursty workload (each: one query on each of the 8 connections)")
	fs.DurationVar(&c.idle, "idle", 1200*time.Millisecond, "bursty workload: how long each connection idles between uses")
	fs.IntVar(&c.slice, "slice", 100, "operations per turn of a driver within a batch (scaled like -batch; at least 8 per goroutine)")
	fs.IntVar(&c.warm, "warm", 20, "warm-up operations per goroutine before the rounds")
	pattern := fs.String("run", "", "run only the workloads whose name matches this regular expression")
	fs.BoolVar(&c.quick, "quick", false, "smoke test: 3 rounds of small batches (overrides -rounds, -batch, -bursts)")
	fs.BoolVar(&c.verbose, "v", false, "print every batch's numbers to stderr")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.quick {
		c.rounds, c.batch, c.bursts, c.warm, c.slice = 3, 64, 1, 4, 16
	}
	if c.rounds < 1 || c.batch < 1 || c.bursts < 1 || c.warm < 1 || c.slice < 1 {
		return c, errors.New("-rounds, -batch, -bursts, -slice and -warm must be at least 1")
	}
	var err error
	if c.filter, err = regexp.Compile(*pattern); err != nil {
		return c, fmt.Errorf("-run: %w", err)
	}
	return c, nil
}

// driverSpec is one compared driver; the first is the baseline.
type driverSpec struct {
	name string
	open func(dsn string) (*sql.DB, error)
}

var drivers = []driverSpec{
	{"pgx", func(dsn string) (*sql.DB, error) { return sql.Open("pgx", dsn) }},
	{"pgresilient", func(dsn string) (*sql.DB, error) { return sql.Open(pgresilient.DriverName, dsn) }},
	{"libpq", func(dsn string) (*sql.DB, error) { return sql.Open("postgres", dsn) }},
}

// workload is one measured operation, run by goroutines goroutines over a
// pool of conns connections, ops (batch scaled by scale) times per batch.
type workload struct {
	name       string
	unit       string // what one operation is
	conns      int
	goroutines int
	scale      int // ops per batch = max(1, batch/scale)
	bursty     bool
	// steady (bursty only): a query on one connection, untimed, just before
	// each burst: the service's light steady traffic, which keeps one
	// connection busy while the others idle between bursts.
	steady bool
	// prepare readies the driver's pool (a table, a statement) and returns
	// the operation, and what to undo afterwards.
	prepare func(ctx context.Context, db *sql.DB, tag string) (op func(context.Context) error, cleanup func() error, err error)
}

var workloads = []workload{
	{name: "select1-1conn", unit: "query", conns: 1, goroutines: 1, scale: 1, prepare: prepareSelect1},
	{name: "select1-8g-8conn", unit: "query", conns: 8, goroutines: 8, scale: 1, prepare: prepareSelect1},
	{name: "select1-32g-8conn", unit: "query", conns: 8, goroutines: 32, scale: 1, prepare: prepareSelect1},
	{name: "select1-64g-8conn", unit: "query", conns: 8, goroutines: 64, scale: 1, prepare: prepareSelect1},
	{name: "prepared-insert-8g", unit: "exec", conns: 8, goroutines: 8, scale: 1, prepare: prepareInsert},
	{name: "scan1000-1conn", unit: "query", conns: 1, goroutines: 1, scale: 10, prepare: prepareScan1000},
	{name: "tx3-1conn", unit: "tx", conns: 1, goroutines: 1, scale: 4, prepare: prepareTx},
	{name: "bursty-8conn-idle", unit: "query", conns: 8, goroutines: 8, scale: 1, bursty: true, steady: true, prepare: prepareSelect1},
	{name: "bursty-cold", unit: "query", conns: 8, goroutines: 8, scale: 1, bursty: true, prepare: prepareSelect1},
}

// beforeBurst runs the steady query of a bursty workload that has one.
func (w workload) beforeBurst(ctx context.Context, db *sql.DB) error {
	if !w.steady {
		return nil
	}
	return selectone.Query(ctx, db)
}

func prepareSelect1(_ context.Context, db *sql.DB, _ string) (func(context.Context) error, func() error, error) {
	return func(ctx context.Context) error { return selectone.Query(ctx, db) }, nil, nil
}

// makeTable creates an empty unlogged table (i bigint) for one driver.
func makeTable(ctx context.Context, db *sql.DB, name string) (func() error, error) {
	if _, err := db.ExecContext(ctx, "drop table if exists "+name+"; create unlogged table "+name+" (i bigint)"); err != nil {
		return nil, err
	}
	return func() error {
		_, err := db.ExecContext(context.Background(), "drop table "+name)
		return err
	}, nil
}

func prepareInsert(ctx context.Context, db *sql.DB, tag string) (func(context.Context) error, func() error, error) {
	drop, err := makeTable(ctx, db, "interleaved_ins_"+tag)
	if err != nil {
		return nil, nil, err
	}
	stmt, err := db.PrepareContext(ctx, "insert into interleaved_ins_"+tag+" (i) values ($1)")
	if err != nil {
		return nil, nil, errors.Join(err, drop())
	}
	var mu sync.Mutex
	i := 0
	op := func(ctx context.Context) error {
		mu.Lock()
		i++
		v := i
		mu.Unlock()
		_, err := stmt.ExecContext(ctx, v)
		return err
	}
	return op, func() error { return errors.Join(stmt.Close(), drop()) }, nil
}

func prepareScan1000(_ context.Context, db *sql.DB, _ string) (func(context.Context) error, func() error, error) {
	op := func(ctx context.Context) error {
		rows, err := db.QueryContext(ctx, "select g from generate_series(1, 1000) g")
		if err != nil {
			return err
		}
		sum, n := 0, 0
		for rows.Next() {
			var v int
			if err := rows.Scan(&v); err != nil {
				_ = rows.Close()
				return err
			}
			sum += v
			n++
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return err
		}
		if n != 1000 || sum != 500500 {
			return fmt.Errorf("scanned %d rows summing to %d, want 1000 and 500500", n, sum)
		}
		return nil
	}
	return op, nil, nil
}

// prepareTx: BEGIN, an insert, a select, another insert, COMMIT.
func prepareTx(ctx context.Context, db *sql.DB, tag string) (func(context.Context) error, func() error, error) {
	table := "interleaved_tx_" + tag
	drop, err := makeTable(ctx, db, table)
	if err != nil {
		return nil, nil, err
	}
	insert := "insert into " + table + " (i) values ($1)"
	i := 0
	op := func(ctx context.Context) error {
		i++
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		var n int
		if _, err = tx.ExecContext(ctx, insert, i); err == nil {
			if err = tx.QueryRowContext(ctx, "select 1").Scan(&n); err == nil {
				_, err = tx.ExecContext(ctx, insert, -i)
			}
		}
		if err != nil {
			return errors.Join(err, tx.Rollback())
		}
		return tx.Commit()
	}
	return op, drop, nil
}

// pool is one driver's pool for one workload.
type pool struct {
	d       driverSpec
	db      *sql.DB
	op      func(context.Context) error
	cleanup func() error
}

// sample is one batch's measurement.
type sample struct {
	wall, cpu time.Duration
	ops       int
}

func (s sample) wallPerOp() float64 { return float64(s.wall) / float64(s.ops) }
func (s sample) cpuPerOp() float64  { return float64(s.cpu) / float64(s.ops) }

// result is one workload's measurements, per driver.
type result struct {
	w       workload
	ops     int
	samples [][]sample // [driver][round]
	allocs  []float64  // [driver] allocations per operation
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if _, ok := benchcpu.Now(); !ok {
		return errors.New("no process CPU time on this platform")
	}
	started := time.Now()
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	cluster, err := pgtest.Start(sctx)
	cancel()
	if err != nil {
		return err
	}
	defer cluster.Close()
	dsn := cluster.DSN()

	server, err := pgtest.QueryValue[string](ctx, cluster, "show server_version")
	if err != nil {
		return err
	}

	var results []result
	for _, w := range workloads {
		if !cfg.filter.MatchString(w.name) {
			continue
		}
		r, err := runWorkload(ctx, cfg, w, dsn, stderr)
		if err != nil {
			return fmt.Errorf("%s: %w", w.name, err)
		}
		results = append(results, r)
	}
	report(stdout, cfg, results, server, time.Since(started))
	return nil
}

// runWorkload opens one pool per driver, warms them, runs the rounds and
// then the allocation pass, and closes the pools.
func runWorkload(stop context.Context, cfg config, w workload, dsn string, stderr io.Writer) (res result, err error) {
	// The operations run under a context that never ends, as an
	// application's context.Background() would: a cancellable one costs
	// pgx (its context watcher) and database/sql allocations and timers of
	// their own on every query. stop (^C) is checked between batches.
	ctx := context.WithoutCancel(stop)
	pools := make([]*pool, 0, len(drivers))
	defer func() {
		for _, p := range pools {
			if p.cleanup != nil {
				err = errors.Join(err, p.cleanup())
			}
			err = errors.Join(err, p.db.Close())
		}
	}()
	for _, d := range drivers {
		db, err := d.open(dsn)
		if err != nil {
			return res, err
		}
		p := &pool{d: d, db: db}
		pools = append(pools, p)
		if err := warmPool(ctx, db, w.conns); err != nil {
			return res, fmt.Errorf("%s: open %d connections: %w", d.name, w.conns, err)
		}
		if p.op, p.cleanup, err = w.prepare(ctx, db, d.name); err != nil {
			return res, fmt.Errorf("%s: %w", d.name, err)
		}
		if err := runBatch(ctx, p.op, w.goroutines, w.goroutines*cfg.warm); err != nil {
			return res, fmt.Errorf("%s: warm-up: %w", d.name, err)
		}
	}

	res = result{w: w, samples: make([][]sample, len(drivers)), allocs: make([]float64, len(drivers))}
	res.ops = max(1, cfg.batch/w.scale)
	if w.bursty {
		res.ops = cfg.bursts * w.goroutines
		// The warm-up just used every connection: let them idle first.
		time.Sleep(cfg.idle)
	}
	for round := range cfg.rounds {
		if err := stop.Err(); err != nil {
			return res, err
		}
		if w.bursty {
			for b := range cfg.bursts {
				for _, i := range order(round, len(pools)) {
					runtime.GC()
					if err := w.beforeBurst(ctx, pools[i].db); err != nil {
						return res, fmt.Errorf("%s: %w", pools[i].d.name, err)
					}
					s, err := measure(func() error { return selectone.Burst(ctx, pools[i].db, w.goroutines) }, w.goroutines)
					if err != nil {
						return res, fmt.Errorf("%s: %w", pools[i].d.name, err)
					}
					if b == 0 {
						res.samples[i] = append(res.samples[i], s)
					} else {
						last := &res.samples[i][len(res.samples[i])-1]
						last.wall += s.wall
						last.cpu += s.cpu
						last.ops += s.ops
					}
				}
				time.Sleep(cfg.idle)
			}
		} else {
			// The batch runs in slices, the drivers taking turns slice by
			// slice (the order rotated every slice), so that the three
			// batches of a round see the same load even when it changes
			// within the round. One collection before the round: each
			// driver pays for its own garbage, in proportion.
			runtime.GC()
			for i := range pools {
				res.samples[i] = append(res.samples[i], sample{})
			}
			per := max(1, max(cfg.slice/w.scale, 8*w.goroutines))
			for done, k := 0, 0; done < res.ops; k++ {
				if err := stop.Err(); err != nil {
					return res, err
				}
				n := min(per, res.ops-done)
				for _, i := range order(round+k, len(pools)) {
					s, err := measure(func() error { return runBatch(ctx, pools[i].op, w.goroutines, n) }, n)
					if err != nil {
						return res, fmt.Errorf("%s: %w", pools[i].d.name, err)
					}
					acc := &res.samples[i][round]
					acc.wall += s.wall
					acc.cpu += s.cpu
					acc.ops += s.ops
				}
				done += n
			}
		}
		if cfg.verbose {
			fmt.Fprintf(stderr, "%-20s round %2d:", w.name, round+1)
			for i, p := range pools {
				s := res.samples[i][round]
				fmt.Fprintf(stderr, "  %s %.1f/%.1f µs", p.d.name, s.wallPerOp()/1e3, s.cpuPerOp()/1e3)
			}
			fmt.Fprintln(stderr)
		}
	}
	for _, p := range pools {
		if n := p.db.Stats().OpenConnections; n != w.conns {
			return res, fmt.Errorf("%s: %d connections open after the rounds, want %d: the pool redialled", p.d.name, n, w.conns)
		}
	}

	// The allocation pass: one goroutine, nothing else running.
	if w.bursty {
		time.Sleep(cfg.idle) // every pool idles at once
		for i, p := range pools {
			if err := w.beforeBurst(ctx, p.db); err != nil {
				return res, fmt.Errorf("%s: %w", p.d.name, err)
			}
			n, err := countMallocs(func() error { return selectone.Burst(ctx, p.db, w.goroutines) })
			if err != nil {
				return res, fmt.Errorf("%s: %w", p.d.name, err)
			}
			res.allocs[i] = float64(n) / float64(w.goroutines)
		}
	} else {
		n := max(100, min(res.ops, 1000))
		for i, p := range pools {
			m, err := countMallocs(func() error { return runBatch(ctx, p.op, 1, n) })
			if err != nil {
				return res, fmt.Errorf("%s: %w", p.d.name, err)
			}
			res.allocs[i] = float64(m) / float64(n)
		}
	}
	return res, nil
}

// order is the drivers' order in round r: rotated by one every round, so
// that each driver runs first, second and third equally often.
func order(r, n int) []int {
	o := make([]int, n)
	for i := range o {
		o[i] = (r + i) % n
	}
	return o
}

// warmPool opens conns connections and uses each twice (pgx pings a
// connection on its first reuse), then returns them to the pool.
func warmPool(ctx context.Context, db *sql.DB, conns int) error {
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns) // the default, 2, would close and redial
	for range 2 {
		held := make([]*sql.Conn, 0, conns)
		for range conns {
			c, err := db.Conn(ctx)
			if err != nil {
				return err
			}
			held = append(held, c)
			if err := c.PingContext(ctx); err != nil {
				return err
			}
		}
		for _, c := range held {
			if err := c.Close(); err != nil {
				return err
			}
		}
	}
	if n := db.Stats().OpenConnections; n != conns {
		return fmt.Errorf("%d connections open, want %d", n, conns)
	}
	return nil
}

// measure runs batch once and returns its wall and CPU time.
func measure(batch func() error, ops int) (sample, error) {
	cpu0, _ := benchcpu.Now()
	t0 := time.Now()
	err := batch()
	wall := time.Since(t0)
	cpu1, _ := benchcpu.Now()
	return sample{wall: wall, cpu: cpu1 - cpu0, ops: ops}, err
}

// countMallocs returns the heap allocations fn made.
func countMallocs(fn func() error) (uint64, error) {
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	err := fn()
	runtime.ReadMemStats(&m1)
	return m1.Mallocs - m0.Mallocs, err
}

// runBatch runs op ops times in all, spread over goroutines goroutines that
// start together.
func runBatch(ctx context.Context, op func(context.Context) error, goroutines, ops int) error {
	if goroutines == 1 {
		for range ops {
			if err := op(ctx); err != nil {
				return err
			}
		}
		return nil
	}
	var wg sync.WaitGroup
	errs := make([]error, goroutines)
	start := make(chan struct{})
	for g := range goroutines {
		n := ops / goroutines
		if g < ops%goroutines {
			n++
		}
		wg.Go(func() {
			<-start
			for range n {
				if err := op(ctx); err != nil {
					errs[g] = err
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	return errors.Join(errs...)
}

// stats summarises per-round values.
type stats struct {
	median, lo, hi, q1, q3, min, max float64 // lo, hi: a 95 % confidence interval of the median
}

func summarize(v []float64) stats {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	lo, hi := medianCI(len(s))
	return stats{
		median: quantile(s, 0.5),
		lo:     s[lo], hi: s[hi],
		q1: quantile(s, 0.25), q3: quantile(s, 0.75),
		min: s[0], max: s[len(s)-1],
	}
}

// quantile of sorted s, interpolated linearly between order statistics.
func quantile(s []float64, q float64) float64 {
	pos := q * float64(len(s)-1)
	i := int(math.Floor(pos))
	if i >= len(s)-1 {
		return s[len(s)-1]
	}
	return s[i] + (pos-float64(i))*(s[i+1]-s[i])
}

// medianCI returns the indexes (0-based, in sorted order) of a
// distribution-free confidence interval of the median with coverage of at
// least 95 %: the order statistics k and n+1-k (1-based) for the largest k
// with P(Binomial(n, 1/2) < k) <= 2.5 %. Below 6 values there is none such:
// the extremes, with less coverage.
func medianCI(n int) (lo, hi int) {
	k := 0 // P(X < k+1) <= 0.025 holds for k+1
	cum := 0.0
	for j := 0; j < n; j++ {
		cum += binomHalf(n, j)
		if cum > 0.025 {
			break
		}
		k = j + 1
	}
	if k == 0 {
		return 0, n - 1
	}
	return k - 1, n - k
}

// binomHalf is P(X = j) for X ~ Binomial(n, 1/2).
func binomHalf(n, j int) float64 {
	lg := func(x int) float64 { v, _ := math.Lgamma(float64(x + 1)); return v }
	return math.Exp(lg(n) - lg(j) - lg(n-j) - float64(n)*math.Ln2)
}

func moduleVersion(path string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "?"
	}
	for _, m := range bi.Deps {
		if m.Path == path {
			if m.Replace != nil {
				return m.Version + "=>" + m.Replace.Path
			}
			return m.Version
		}
	}
	return "?"
}

// report writes the tables. Its layout is stable, to paste into docs.
func report(w io.Writer, cfg config, results []result, server string, took time.Duration) {
	fmt.Fprintf(w, "interleaved: %d rounds, batch %d in slices of %d, bursts %d, idle %v; %s %s/%s GOMAXPROCS=%d NumCPU=%d\n",
		cfg.rounds, cfg.batch, cfg.slice, cfg.bursts, cfg.idle, runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0), runtime.NumCPU())
	fmt.Fprintf(w, "PostgreSQL %s on 127.0.0.1; pgx %s, lib/pq %s; took %v\n",
		server, moduleVersion("github.com/jackc/pgx/v5"), moduleVersion("github.com/lib/pq"), took.Round(time.Second))
	fmt.Fprintln(w, "per op: median of the per-round values; x: the driver's time over pgx's in the same round,")
	fmt.Fprintln(w, "median over the rounds, [ci95] of that median, (q1-q3) and {min-max} of the per-round ratios")

	table := func(title string, perOp func(sample) float64) {
		fmt.Fprintf(w, "\n%s\n", title)
		fmt.Fprintf(w, "%-19s %-11s %5s %9s  %6s  %-13s  %-13s  %s\n",
			"workload", "driver", "ops", "µs/op", "x", "[ci95]", "(q1-q3)", "{min-max}")
		for _, r := range results {
			rounds := len(r.samples[0])
			for i, d := range drivers {
				abs := make([]float64, rounds)
				ratio := make([]float64, rounds)
				for k := range rounds {
					abs[k] = perOp(r.samples[i][k]) / 1e3
					ratio[k] = perOp(r.samples[i][k]) / perOp(r.samples[0][k])
				}
				name := r.w.name
				if i > 0 {
					name = ""
				}
				a := summarize(abs)
				if i == 0 {
					fmt.Fprintf(w, "%-19s %-11s %5d %9.2f\n", name, d.name, r.ops, a.median)
					continue
				}
				s := summarize(ratio)
				fmt.Fprintf(w, "%-19s %-11s %5d %9.2f  %6.3f  [%5.3f %5.3f]  (%5.3f-%5.3f)  {%5.3f-%5.3f}\n",
					name, d.name, r.ops, a.median, s.median, s.lo, s.hi, s.q1, s.q3, s.min, s.max)
			}
		}
	}
	table("wall time per op", sample.wallPerOp)
	table("client CPU per op (getrusage RUSAGE_SELF, user+sys)", sample.cpuPerOp)

	fmt.Fprintf(w, "\nallocations per op (runtime.MemStats.Mallocs, one goroutine; bursty: one burst of 8)\n")
	fmt.Fprintf(w, "%-19s %-6s", "workload", "unit")
	for _, d := range drivers {
		fmt.Fprintf(w, " %12s", d.name)
	}
	fmt.Fprintln(w)
	for _, r := range results {
		fmt.Fprintf(w, "%-19s %-6s", r.w.name, r.w.unit)
		for i := range drivers {
			fmt.Fprintf(w, " %12.1f", r.allocs[i])
		}
		fmt.Fprintln(w)
	}
}
