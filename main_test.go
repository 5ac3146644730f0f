package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgresilient/pgresilient/faultproxy"
	"github.com/pgresilient/pgresilient/pgtest"
)

// cluster is the throwaway PostgreSQL of this package's integration tests,
// started by TestMain unless PGRESILIENT_SKIP_INTEGRATION=1.
var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	code := pgtest.RunMain(m, &cluster)
	printBouncerSummary()
	if leaks := leakedGoroutines(5 * time.Second); len(leaks) > 0 {
		fmt.Fprintln(os.Stderr, reportLeaks(leaks))
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// needCluster returns the cluster, running: a test that stopped it and failed
// before restarting it must not take the next tests down with it.
func needCluster(t *testing.T) *pgtest.Cluster {
	t.Helper()
	c := pgtest.Require(t, cluster)
	if !c.Running() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Resume(ctx); err != nil {
			t.Fatalf("restart the cluster a previous test left stopped: %v", err)
		}
	}
	return c
}

// newProxy puts a fault proxy in front of the cluster, closed at the end of
// the test, which fails if a CutOn trigger armed on it never fired.
func newProxy(t *testing.T, c *pgtest.Cluster) *faultproxy.Proxy {
	t.Helper()
	return faultproxy.NewT(t, c.Addr())
}

// openDB opens driverName ("pgx" or "pgresilient") on dsn, closes it at the
// end of the test, and then checks that no connection leaked: none in use at
// the end, none left on the server after Close.
func openDB(t *testing.T, driverName, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driverName, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeAndCheck(t, db) })
	return db
}

// openDBConnector is openDB for a Connector of pgresilient's.
func openDBConnector(t *testing.T, cn *Connector) *sql.DB {
	t.Helper()
	db := sql.OpenDB(cn)
	t.Cleanup(func() { closeAndCheck(t, db) })
	return db
}

// closeAndCheck closes db after checking nothing is left in use.
func closeAndCheck(t testing.TB, db *sql.DB) {
	t.Helper()
	if n := db.Stats().InUse; n != 0 {
		t.Errorf("%d connections still in use at the end of the test: a leak", n)
	}
	if err := db.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if n := db.Stats().OpenConnections; n != 0 {
		t.Errorf("%d connections open after Close", n)
	}
}

// freshTable (re)creates the table prefix_<driver> with the given columns
// and, if values is not empty, inserts them ("(1), (2)"); it returns the name.
func freshTable(t *testing.T, c *pgtest.Cluster, prefix, driverName, columns, values string) string {
	t.Helper()
	table := prefix + "_" + strings.ReplaceAll(driverName, "pgresilient", "pgr")
	sql := "drop table if exists " + table + "; create table " + table + " " + columns
	if values != "" {
		sql += "; insert into " + table + " values " + values
	}
	if err := c.Exec(context.Background(), sql); err != nil {
		t.Fatal(err)
	}
	return table
}

// holdConns takes n distinct connections out of db's pool at once, dialling
// them as needed; releaseConns returns them to it.
func holdConns(t *testing.T, db *sql.DB, n int) []*sql.Conn {
	t.Helper()
	held := make([]*sql.Conn, n)
	for i := range held {
		sc, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		held[i] = sc
	}
	return held
}

func releaseConns(held []*sql.Conn) {
	for _, sc := range held {
		_ = sc.Close()
	}
}

// sideBySide runs body once for each compared driver, raw pgx first, as a
// subtest named after it: every integration test states what pgresilient
// does better than raw pgx in the same run.
func sideBySide(t *testing.T, body func(t *testing.T, driverName string)) {
	t.Helper()
	for _, name := range drivers {
		t.Run(name, func(t *testing.T) { body(t, name) })
	}
}

// wantConnLost fails the test unless err says "outcome unknown": it matches
// ErrConnLost, and never driver.ErrBadConn (database/sql would retry it).
func wantConnLost(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrConnLost) || errors.Is(err, driver.ErrBadConn) {
		t.Errorf("want ErrConnLost and not ErrBadConn, got %v", err)
	}
}
