package compat

import (
	"embed"
	"testing"

	"github.com/pressly/goose/v3"

	"github.com/pgresilient/pgresilient"
)

//go:embed testdata/migrations/*.sql testdata/migrations_cut/*.sql
var migrations embed.FS

// gooseUp is the recipe: goose's package-level API with embedded SQL
// migrations, over a *sql.DB of the pgresilient driver, versions kept in
// table.
func gooseUp(t *testing.T, driverName, dsn, table, dir string) error {
	t.Helper()
	goose.SetBaseFS(migrations)
	goose.SetLogger(goose.NopLogger())
	goose.SetTableName(table)
	t.Cleanup(func() {
		goose.SetBaseFS(nil)
		goose.SetTableName("goose_db_version")
	})
	if err := goose.SetDialect("postgres"); err != nil {
		t.Fatal(err)
	}
	return goose.Up(openDB(t, driverName, dsn), dir)
}

// TestGoose: two migrations, each run in a transaction, through pgresilient;
// a second Up does nothing.
func TestGoose(t *testing.T) {
	c := requireCluster(t)
	exec(t, c, "drop table if exists goose_items, goose_compat_version")
	for range 2 {
		if err := gooseUp(t, pgresilient.DriverName, c.DSN(), "goose_compat_version", "testdata/migrations"); err != nil {
			t.Fatal(err)
		}
	}
	db := openDB(t, pgresilient.DriverName, c.DSN())
	var version, rows int
	if err := db.QueryRow("select max(version_id) from goose_compat_version").Scan(&version); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow("select count(*) from goose_items").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if version != 2 || rows != 2 {
		t.Errorf("after goose.Up: version %d, %d rows; want 2 and 2", version, rows)
	}
}

// TestGooseErrors: a migration whose connection is cut mid-statement, and an
// open breaker, through goose, which wraps the driver's error with %w.
func TestGooseErrors(t *testing.T) {
	c := requireCluster(t)
	for _, name := range drivers {
		exec(t, c, "drop table if exists goose_cut_version")
		dsn, arm := cutProxy(t, c)
		arm() // goose's own statements before the migration do not contain the mark
		checkLost(t, "goose.Up", name, gooseUp(t, name, dsn, "goose_cut_version", "testdata/migrations_cut"))
	}

	dsn := refusingDSN(t, c)
	t.Logf("goose over pgresilient, connection refused: %v", gooseUp(t, pgresilient.DriverName, dsn, "goose_cut_version", "testdata/migrations_cut"))
	checkCircuitOpen(t, "goose.Up", gooseUp(t, pgresilient.DriverName, dsn, "goose_cut_version", "testdata/migrations_cut"))
}
