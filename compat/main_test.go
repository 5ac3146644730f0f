package compat

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx": raw pgx, side by side

	"github.com/pgresilient/pgresilient" // registers "pgresilient"
	"github.com/pgresilient/pgresilient/faultproxy"
	"github.com/pgresilient/pgresilient/pgtest"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m, &cluster)) }

// drivers are the two database/sql drivers every lost-connection test runs
// through the tool: raw pgx stdlib, then pgresilient.
var drivers = []string{"pgx", pgresilient.DriverName}

// cutQuery is the statement the lost-connection tests send through each
// tool. cutMark is what the fault proxy waits for in the client's bytes.
const (
	cutQuery = "select 1 from pg_sleep(0.05)"
	cutMark  = "pg_sleep"
)

// cutProxy returns a fault proxy in front of the cluster and a DSN through
// it. Call arm right before the statement: the first chunk the client sends
// that contains cutMark is forwarded to the server, then the connection is
// reset before any reply. The statement reached the server and the client
// cannot know its outcome, the case ErrConnLost exists for, without a timer:
// no sleep decides when the cut happens.
func cutProxy(t *testing.T, c *pgtest.Cluster) (dsn string, arm func()) {
	t.Helper()
	p, err := faultproxy.New(c.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return c.DSNAt(p.Addr()), func() { p.CutOn([]byte(cutMark), true) }
}

// refusingDSN returns a DSN through a fault proxy that refuses every
// connection, with a breaker that opens after one failed connection and
// stays open: the first statement fails to connect, the next ones get
// ErrCircuitOpen.
func refusingDSN(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	p, err := faultproxy.New(c.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if err := p.Refuse(true); err != nil {
		t.Fatal(err)
	}
	return c.DSNAt(p.Addr()) + "&breaker_failures=1&breaker_cooldown=1h&connect_retries=0"
}

// openDB opens name on dsn and closes it at the end of the test.
func openDB(t *testing.T, name, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(name, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// exec runs setup SQL on the cluster directly.
func exec(t *testing.T, c *pgtest.Cluster, sql string) {
	t.Helper()
	if err := c.Exec(context.Background(), sql); err != nil {
		t.Fatal(err)
	}
}

// checkLost logs what the tool returned for a lost connection through each
// driver and requires pgresilient's to match ErrConnLost.
func checkLost(t *testing.T, tool, driverName string, err error) {
	t.Helper()
	t.Logf("%s over %s, connection cut mid-statement: %T: %v", tool, driverName, err, err)
	if err == nil {
		t.Errorf("%s over %s: no error after the connection was cut", tool, driverName)
		return
	}
	if driverName == pgresilient.DriverName && !errors.Is(err, pgresilient.ErrConnLost) {
		t.Errorf("%s over pgresilient: errors.Is(err, ErrConnLost) is false for %v", tool, err)
	}
}

// checkCircuitOpen requires err, from a statement after the breaker opened,
// to match ErrCircuitOpen through the tool's wrapping.
func checkCircuitOpen(t *testing.T, tool string, err error) {
	t.Helper()
	t.Logf("%s over pgresilient, breaker open: %T: %v", tool, err, err)
	if !errors.Is(err, pgresilient.ErrCircuitOpen) {
		t.Errorf("%s: errors.Is(err, ErrCircuitOpen) is false for %v", tool, err)
	}
}

// requireCluster is pgtest.Require for the package's cluster.
func requireCluster(t *testing.T) *pgtest.Cluster {
	t.Helper()
	return pgtest.Require(t, cluster)
}
