// Command pgresilient-demo runs the same concurrent workload, transfers
// between the accounts of a small ledger, through two pools side by side, one
// over raw pgx stdlib and one over pgresilient, while a script of real faults
// hits a real PostgreSQL: terminated backends, a restart, a network cut and a
// blackhole, a stopped server, an aborted transaction, a database that starts
// after the application. It then checks each ledger (money conserved, every
// acknowledged transfer present exactly once) and prints, per phase and pool,
// what the application saw.
//
//	go run ./cmd/pgresilient-demo                      # a throwaway cluster, every fault
//	go run ./cmd/pgresilient-demo -report report.html  # also a self-contained HTML report with charts
//	go run ./cmd/pgresilient-demo -dsn postgres://app@localhost/app  # an existing server: only the faults it allows
//
// With no -dsn it needs the PostgreSQL server binaries (initdb, pg_ctl); it
// never touches another server. docs/demo.md explains every column.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/pgresilient/pgresilient"
)

// config is the demo's settings: flags, and the pace of the workload.
type config struct {
	dsn    string // an existing server; "" starts a throwaway cluster
	report string // HTML report path; "" for none

	baseline time.Duration // length of the baseline phase
	outage   time.Duration // how long the lasting faults last (blackhole, stopped server, ...)
	observe  time.Duration // how long each phase watches the recovery after its fault

	workers      int           // per pool
	accounts     int           // per ledger
	interval     time.Duration // between the starts of two transfers of one worker
	opTimeout    time.Duration // context deadline of every transfer, in both pools: the request deadline
	queryTimeout time.Duration // pgresilient's query_timeout, below opTimeout

	breakerFailures int // pgresilient's breaker_failures

	progress io.Writer // live progress line; nil for none
}

func defaultConfig() config {
	return config{
		baseline:  3 * time.Second,
		outage:    3 * time.Second,
		observe:   4 * time.Second,
		workers:   8,
		accounts:  100,
		interval:  20 * time.Millisecond,
		opTimeout: 2 * time.Second,
	}
}

// pgresilientParams are the pgresilient DSN parameters of the demo's pool:
// none by default, the DSN users already have; -breaker-failures and
// -query-timeout add theirs, to compare a tuned pool.
func pgresilientParams(cfg *config) []string {
	var p []string
	if cfg.breakerFailures > 0 {
		p = append(p, "breaker_failures", strconv.Itoa(cfg.breakerFailures))
	}
	if cfg.queryTimeout > 0 {
		p = append(p, "query_timeout", cfg.queryTimeout.String())
	}
	return p
}

func main() {
	cfg := defaultConfig()
	flag.StringVar(&cfg.dsn, "dsn", "", "run against this existing server (a pgx DSN) instead of a throwaway cluster;\nonly the faults that need no control of the server run")
	flag.StringVar(&cfg.report, "report", "", "also write a self-contained HTML `file` with a timeline chart per pool")
	flag.DurationVar(&cfg.outage, "outage", cfg.outage, "how long the blackhole, the stopped server and the late start last")
	flag.DurationVar(&cfg.observe, "observe", cfg.observe, "how long each phase watches the recovery after its fault")
	flag.IntVar(&cfg.workers, "workers", cfg.workers, "concurrent workers (and connections) per pool")
	flag.IntVar(&cfg.breakerFailures, "breaker-failures", cfg.breakerFailures, "pgresilient's breaker_failures (0: not set, the default)")
	flag.DurationVar(&cfg.opTimeout, "op-timeout", cfg.opTimeout, "context deadline of each transfer, in both pools")
	flag.DurationVar(&cfg.queryTimeout, "query-timeout", cfg.queryTimeout, "pgresilient's query_timeout (0: not set, the default: off)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: pgresilient-demo [flags]\n\n"+
			"Runs the same ledger workload through raw pgx stdlib and through pgresilient\n"+
			"while faults hit PostgreSQL, then prints what each pool saw. See docs/demo.md.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := cfg.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "pgresilient-demo:", err)
		os.Exit(2)
	}
	if isTerminal(os.Stdout) {
		cfg.progress = os.Stdout
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	began := time.Now()
	_, err := run(ctx, &cfg, os.Stdout)
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "\npgresilient-demo: interrupted; cleaned up")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "pgresilient-demo:", err)
		os.Exit(1)
	}
	fmt.Printf("\ndone in %v\n", time.Since(began).Round(100*time.Millisecond))
}

// isTerminal reports whether f is a character device, such as a terminal.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (c *config) validate() error {
	switch {
	case c.workers < 1 || c.workers > 100:
		return errors.New("-workers: want 1 to 100")
	case c.outage <= 0 || c.observe <= 0 || c.baseline <= 0:
		return errors.New("-outage and -observe must be positive")
	case c.opTimeout < 10*time.Millisecond:
		return errors.New("-op-timeout: want at least 10ms")
	case c.queryTimeout < 0:
		return errors.New("-query-timeout: want 0 or more")
	case c.breakerFailures < 0:
		return errors.New("-breaker-failures: want 0 (not set) or more")
	case c.accounts < 2:
		return errors.New("need at least 2 accounts")
	}
	return nil
}

// demo is one run.
type demo struct {
	cfg    *config
	env    *env
	wl     *workload
	runs   []*phaseRun
	prefix string // table name prefix, unique per run
}

// run runs the demo and prints its tables to out. It returns the results, or
// why the demo could not run. Whatever happens, the cluster it started is
// stopped and removed, and the tables it created are dropped.
func run(ctx context.Context, cfg *config, out io.Writer) (res *results, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	d := &demo{cfg: cfg, prefix: fmt.Sprintf("demo_%x", time.Now().UnixNano()&0xffffff)}
	if cfg.dsn == "" {
		fmt.Fprintln(out, "starting a throwaway PostgreSQL cluster and a streaming standby...")
		d.env, err = startCluster(ctx)
	} else {
		d.env, err = useServer(ctx, cfg.dsn)
	}
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := d.env.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()

	d.wl = &workload{cfg: cfg, obs: d.env.obs}
	for _, name := range []string{"pgx", pgresilient.DriverName} {
		d.wl.pools = append(d.wl.pools, &pool{name: name, led: newLedger(d.prefix, name, cfg.accounts)})
	}
	if cfg.dsn != "" {
		defer d.dropLedgers()
	}
	for _, p := range d.wl.pools {
		if err := p.led.create(ctx, d.env.obs); err != nil {
			return nil, fmt.Errorf("creating the ledger: %w", err)
		}
	}
	d.printIntro(out)

	if err := d.openPools(); err != nil {
		return nil, err
	}
	d.wl.start(ctx)
	stopProgress := d.startProgress()
	err = d.runPhases(ctx)
	d.wl.halt()
	stopProgress()
	if cerr := d.closePools(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	total := d.wl.since()

	// A statement whose client was cut off may still be running on the
	// server: let it finish before reading the ledgers.
	if err := d.env.obs.waitBackendsGone(ctx, 10*time.Second); err != nil {
		return nil, err
	}
	res, err = d.results(ctx, total)
	if err != nil {
		return nil, err
	}
	printResults(out, d, res)
	if cfg.report != "" {
		if err := writeReport(cfg.report, d, res); err != nil {
			return nil, fmt.Errorf("writing the report: %w", err)
		}
		fmt.Fprintf(out, "\nreport written to %s\n", cfg.report)
	}
	return res, nil
}

// printIntro says where the demo runs, with what, and what it will do.
func (d *demo) printIntro(w io.Writer) {
	cfg := d.cfg
	if d.env.cluster != nil {
		fmt.Fprintf(w, "cluster on %s, fault proxy on %s\n", d.env.cluster.Addr(), d.env.proxy.Addr())
		fmt.Fprintf(w, "streaming standby on %s (asynchronous until phase failover)\n", d.env.standby.Addr())
	} else {
		if d.env.proxy != nil {
			fmt.Fprintf(w, "existing server (-dsn), fault proxy on %s in front of it\n", d.env.proxy.Addr())
		} else {
			fmt.Fprintf(w, "existing server (-dsn), no fault proxy: %s\n", d.env.noProxy)
		}
		fmt.Fprintf(w, "tables %s_* (dropped at the end)\n", d.prefix)
	}
	fmt.Fprintf(w, "workload: %d workers per pool, each starting a transfer every %v\n", cfg.workers, cfg.interval)
	fmt.Fprintf(w, "  between %d accounts; even workers use a sql.Tx, odd ones a single\n", cfg.accounts)
	fmt.Fprintf(w, "  autocommit statement; every transfer has a %v context deadline\n", cfg.opTimeout)
	fmt.Fprintf(w, "pools: SetMaxOpenConns(%d), SetMaxIdleConns(%d)\n", cfg.workers, cfg.workers)
	fmt.Fprintf(w, "  pgx          raw pgx v5 stdlib (driver \"pgx\")\n")
	params := paramString(pgresilientParams(cfg))
	if params == "" {
		params = "the same DSN, no pgresilient parameter: its defaults"
	}
	fmt.Fprintf(w, "  pgresilient  %s\n", wrap(params, 63, "               "))
	fmt.Fprintln(w, "phases:")
	for i, def := range phaseDefs {
		if why := skipReason(def, d.env); why != "" {
			fmt.Fprintf(w, "  %d %-10s %s\n", i+1, def.name, wrap("skipped: "+why, 63, "               "))
			continue
		}
		fmt.Fprintf(w, "  %d %-10s %s\n", i+1, def.name, wrap(def.title, 63, "               "))
	}
	fmt.Fprintln(w)
}

// paramString formats key, value pairs as "key=value key=value".
func paramString(params []string) string {
	var b strings.Builder
	for i := 0; i+1 < len(params); i += 2 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(params[i] + "=" + params[i+1])
	}
	return b.String()
}

// wrap breaks s into lines of at most width bytes, indenting the later ones.
func wrap(s string, width int, indent string) string {
	var b strings.Builder
	n := 0
	for i, word := range strings.Fields(s) {
		if i > 0 {
			if n+1+len(word) > width {
				b.WriteString("\n" + indent)
				n = 0
			} else {
				b.WriteByte(' ')
				n++
			}
		}
		b.WriteString(word)
		n += len(word)
	}
	return b.String()
}

// openPools opens a new *sql.DB for each pool; the workers use it from their
// next transfer. sql.Open connects to nothing yet.
func (d *demo) openPools() error {
	for _, p := range d.wl.pools {
		app := []string{"application_name", appNamePrefix + p.name}
		var db *sql.DB
		if p.name == "pgx" {
			dsn, err := withParams(d.env.base, "", 0, app)
			if err != nil {
				return err
			}
			db, err = sql.Open("pgx", dsn)
			if err != nil {
				return err
			}
		} else {
			dsn, err := withParams(d.env.base, "", 0, append(app, pgresilientParams(d.cfg)...))
			if err != nil {
				return err
			}
			cn, err := pgresilient.NewConnector(dsn)
			if err != nil {
				return err
			}
			p.mu.Lock()
			p.conns = append(p.conns, cn)
			p.mu.Unlock()
			db = sql.OpenDB(cn)
		}
		db.SetMaxOpenConns(d.cfg.workers)
		db.SetMaxIdleConns(d.cfg.workers)
		p.db.Store(db)
	}
	return nil
}

// closePools closes both pools' current *sql.DB.
func (d *demo) closePools() error {
	var errs []error
	for _, p := range d.wl.pools {
		if db := p.db.Swap(nil); db != nil {
			errs = append(errs, db.Close())
		}
	}
	return errors.Join(errs...)
}

// runPhases runs the fault script.
func (d *demo) runPhases(ctx context.Context) error {
	for i, def := range phaseDefs {
		r := &phaseRun{def: def, idx: i, skipped: skipReason(def, d.env)}
		d.runs = append(d.runs, r)
		if !r.ran() {
			continue
		}
		r.start = d.wl.since()
		r.faultStart = r.start
		d.wl.markPhase(i)
		d.wl.phase.Store(uint32(i))
		if err := def.run(ctx, d, r); err != nil {
			return fmt.Errorf("phase %s: %w", def.name, err)
		}
		r.end = d.wl.since()
	}
	return nil
}

// dropLedgers drops the tables the run created on a server given with -dsn.
func (d *demo) dropLedgers() {
	ctx, cancel := context.WithTimeout(context.Background(), observerTimeout)
	defer cancel()
	for _, p := range d.wl.pools {
		if err := d.env.obs.exec(ctx, p.led.dropSQL()); err != nil {
			fmt.Fprintf(os.Stderr, "pgresilient-demo: dropping %s: %v\n", p.led.accounts, err)
		}
	}
}
