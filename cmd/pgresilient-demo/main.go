// Command pgresilient-demo starts a throwaway PostgreSQL cluster, puts a
// fault proxy in front of it, and runs the same faults against two pools, one
// over raw pgx stdlib and one over pgresilient, printing what the application
// saw in each case.
//
//	go run ./cmd/pgresilient-demo
//
// It needs the PostgreSQL server binaries (initdb, pg_ctl); it never touches
// another server.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/pgresilient/pgresilient"
	"github.com/pgresilient/pgresilient/internal/faultproxy"
	"github.com/pgresilient/pgresilient/internal/pgtest"
)

// result is what one pool saw in one phase.
type result struct {
	ok, failed int
	rows       int // rows the phase's write left in its table, where it counts
	note       string
}

type phase struct {
	name, what string
	run        func(ctx context.Context, env *env, driverName string) (result, error)
}

type env struct {
	cluster *pgtest.Cluster
	proxy   *faultproxy.Proxy
}

func (e *env) dsn() string { return e.cluster.DSNFor(e.proxy.Host(), e.proxy.Port()) }

var drivers = []string{"pgx", pgresilient.DriverName}

func main() {
	timeout := flag.Duration("timeout", 2*time.Minute, "give up after this long")
	flag.Parse()
	if err := run(*timeout); err != nil {
		fmt.Fprintln(os.Stderr, "pgresilient-demo:", err)
		os.Exit(1)
	}
}

func run(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()

	fmt.Println("starting a throwaway PostgreSQL cluster ...")
	cluster, err := pgtest.Start(ctx)
	if err != nil {
		return err
	}
	defer cluster.Close()
	proxy, err := faultproxy.New(cluster.Addr())
	if err != nil {
		return err
	}
	defer proxy.Close()
	e := &env{cluster: cluster, proxy: proxy}
	fmt.Printf("cluster on %s, fault proxy on %s\n\n", cluster.Addr(), proxy.Addr())

	phases := []phase{
		{"terminate", "pg_terminate_backend on every backend of a warm pool of 8, then 200 queries", phaseTerminate},
		{"restart", "pg_ctl restart -m fast under a warm pool of 8, then 200 queries", phaseRestart},
		{"cut-mid-statement", "network reset during `begin; insert; commit; select pg_sleep(0.5)`", phaseCut},
		{"lib/pq#939", "`begin; insert; commit; select pg_terminate_backend(pg_backend_pid())`", phase939},
		{"aborted-tx", "a unique violation inside a transaction, then one more statement", phaseAbortedTx},
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PHASE\tPOOL\tOK\tERRORS\tROWS\tWHAT THE APP SAW")
	for _, ph := range phases {
		fmt.Fprintf(os.Stderr, "phase %s: %s\n", ph.name, ph.what)
		for _, d := range drivers {
			r, err := ph.run(ctx, e, d)
			if err != nil {
				return fmt.Errorf("phase %s (%s): %w", ph.name, d, err)
			}
			rows := "-"
			if r.rows >= 0 {
				rows = fmt.Sprint(r.rows)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", ph.name, d, r.ok, r.failed, rows, r.note)
		}
	}
	fmt.Println()
	return tw.Flush()
}

func open(e *env, driverName string) (*sql.DB, error) {
	db, err := sql.Open(driverName, e.dsn())
	if err != nil {
		return nil, err
	}
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// warm gives db n connections, each used twice and just now.
func warm(db *sql.DB, n int) error {
	db.SetMaxOpenConns(n)
	db.SetMaxIdleConns(n)
	for range 2 {
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() { _, errs[i] = db.Exec("select pg_sleep(0.05)") })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	return nil
}

func queries(db *sql.DB, n int) (r result) {
	r.rows = -1
	for range n {
		var one int
		if err := db.QueryRow("select 1").Scan(&one); err != nil {
			if r.failed == 0 {
				r.note = short(err)
			}
			r.failed++
		} else {
			r.ok++
		}
	}
	if r.failed == 0 {
		r.note = "nothing"
	}
	return r
}

// warmFault warms a pool of 8, applies fault, then runs 200 queries.
func warmFault(e *env, d string, fault func() error) (result, error) {
	db, err := open(e, d)
	if err != nil {
		return result{}, err
	}
	defer db.Close()
	if err := warm(db, 8); err != nil {
		return result{}, err
	}
	if err := fault(); err != nil {
		return result{}, err
	}
	return queries(db, 200), nil
}

func phaseTerminate(ctx context.Context, e *env, d string) (result, error) {
	return warmFault(e, d, func() error {
		_, err := e.cluster.TerminateBackends(ctx)
		return err
	})
}

func phaseRestart(_ context.Context, e *env, d string) (result, error) {
	return warmFault(e, d, func() error { return e.cluster.Restart(pgtest.ModeFast) })
}

// openWithTable creates an empty table prefix_<driver> and opens a pool.
func openWithTable(ctx context.Context, e *env, prefix, d string) (*sql.DB, string, error) {
	name := prefix + "_" + strings.ReplaceAll(d, "pgresilient", "pgr")
	if err := e.cluster.Exec(ctx, "drop table if exists "+name+"; create table "+name+" (id int)"); err != nil {
		return nil, "", err
	}
	db, err := open(e, d)
	return db, name, err
}

func count(ctx context.Context, e *env, name string) (int, error) {
	return pgtest.QueryValue[int](ctx, e.cluster, "select count(*)::int from "+name)
}

func phaseCut(ctx context.Context, e *env, d string) (result, error) {
	db, name, err := openWithTable(ctx, e, "demo_cut", d)
	if err != nil {
		return result{}, err
	}
	defer db.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(150 * time.Millisecond)
		e.proxy.Cut()
	}()
	_, err = db.Exec("begin; insert into " + name + " values (1); commit; select pg_sleep(0.5)")
	<-done
	time.Sleep(600 * time.Millisecond) // the server finishes on its side
	return writeResult(ctx, e, name, err)
}

func phase939(ctx context.Context, e *env, d string) (result, error) {
	db, name, err := openWithTable(ctx, e, "demo_939", d)
	if err != nil {
		return result{}, err
	}
	defer db.Close()
	_, err = db.Exec("begin; insert into " + name + " values (1); commit; select pg_terminate_backend(pg_backend_pid())")
	return writeResult(ctx, e, name, err)
}

func writeResult(ctx context.Context, e *env, name string, err error) (result, error) {
	n, cerr := count(ctx, e, name)
	if cerr != nil {
		return result{}, cerr
	}
	r := result{rows: n, note: "nil error"}
	if err != nil {
		r.failed = 1
		r.note = short(err)
	} else {
		r.ok = 1
	}
	if n > 1 {
		r.note += fmt.Sprintf(" -- the insert ran %d times", n)
	}
	return r, nil
}

func phaseAbortedTx(ctx context.Context, e *env, d string) (result, error) {
	name := "demo_tx_" + strings.ReplaceAll(d, "pgresilient", "pgr")
	if err := e.cluster.Exec(ctx, "drop table if exists "+name+"; create table "+name+" (id int primary key); insert into "+name+" values (1)"); err != nil {
		return result{}, err
	}
	db, err := open(e, d)
	if err != nil {
		return result{}, err
	}
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		return result{}, err
	}
	defer tx.Rollback()
	var pid int
	if err := tx.QueryRow("select pg_backend_pid()").Scan(&pid); err != nil {
		return result{}, err
	}
	_, _ = tx.Exec("insert into " + name + " values (1)")
	var state string
	err = e.cluster.WithConn(ctx, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, "select coalesce(state, '') from pg_stat_activity where pid = $1", pid).Scan(&state)
	})
	if err != nil {
		return result{}, err
	}
	_, err = tx.Exec("insert into " + name + " values (2)")
	r := result{rows: -1, failed: 2, note: fmt.Sprintf("server: %q; next: %s", state, short(err))}
	return r, nil
}

// short returns an error's message cut to fit a table.
func short(err error) string {
	if err == nil {
		return "nil error"
	}
	s := err.Error()
	if len(s) > 110 {
		s = s[:107] + "..."
	}
	return s
}
