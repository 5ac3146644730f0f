package compat

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jmoiron/sqlx"

	"github.com/pgresilient/pgresilient"
)

type sqlxItem struct {
	ID   int    `db:"id"`
	Name string `db:"name"`
}

// TestSqlxGetSelect: Get and Select with PostgreSQL's own $n placeholders need
// no setup.
func TestSqlxGetSelect(t *testing.T) {
	c := requireCluster(t)
	exec(t, c, "drop table if exists sqlx_items; create table sqlx_items (id int primary key, name text not null); insert into sqlx_items values (1, 'a'), (2, 'b')")
	db := sqlx.NewDb(openDB(t, pgresilient.DriverName, c.DSN()), pgresilient.DriverName)

	var one sqlxItem
	if err := db.Get(&one, "select id, name from sqlx_items where id = $1", 2); err != nil {
		t.Fatal(err)
	}
	if one != (sqlxItem{2, "b"}) {
		t.Errorf("Get: %+v", one)
	}
	var all []sqlxItem
	if err := db.Select(&all, "select id, name from sqlx_items order by id"); err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0] != (sqlxItem{1, "a"}) {
		t.Errorf("Select: %+v", all)
	}
}

// TestSqlxBindDriver: sqlx picks the placeholder style of NamedExec, In and
// Rebind from the driver's name, and knows "pgx" but not "pgresilient". Without
// the recipe's one line it writes '?' placeholders, which PostgreSQL rejects
// with 42601 (syntax error); with sqlx.BindDriver("pgresilient", sqlx.DOLLAR)
// they work as they do over raw pgx.
func TestSqlxBindDriver(t *testing.T) {
	c := requireCluster(t)
	exec(t, c, "drop table if exists sqlx_named; create table sqlx_named (id int primary key, name text not null)")
	sqlx.BindDriver(pgresilient.DriverName, sqlx.UNKNOWN) // as before any BindDriver call (-count=N)
	t.Cleanup(func() { sqlx.BindDriver(pgresilient.DriverName, sqlx.DOLLAR) })

	run := func(db *sqlx.DB, id int) []error {
		_, errNamed := db.NamedExec("insert into sqlx_named (id, name) values (:id, :name)", sqlxItem{id, "n"})
		q, args, err := sqlx.In("select id, name from sqlx_named where id in (?)", []int{id, id + 1000})
		if err != nil {
			t.Fatal(err)
		}
		var got []sqlxItem
		errIn := db.Select(&got, db.Rebind(q), args...)
		if errIn == nil && len(got) != 1 {
			t.Errorf("In+Rebind over %s found %d rows, want 1", db.DriverName(), len(got))
		}
		return []error{errNamed, errIn}
	}
	wantOK := func(what string, errs []error) {
		t.Helper()
		for i, err := range errs {
			if err != nil {
				t.Errorf("%s: %s: %v", what, []string{"NamedExec", "In+Rebind"}[i], err)
			}
		}
	}

	raw := sqlx.NewDb(openDB(t, "pgx", c.DSN()), "pgx")
	wantOK("raw pgx", run(raw, 1))

	pgr := sqlx.NewDb(openDB(t, pgresilient.DriverName, c.DSN()), pgresilient.DriverName)
	for i, err := range run(pgr, 2) {
		var pgErr *pgconn.PgError
		t.Logf("pgresilient without BindDriver: %s: %v", []string{"NamedExec", "In+Rebind"}[i], err)
		if !errors.As(err, &pgErr) || pgErr.Code != "42601" {
			t.Errorf("without BindDriver: want a 42601 syntax error, got %v", err)
		}
		// The error says what to do; raw pgx's bare 42601 does not.
		var ph *pgresilient.PlaceholderError
		if !errors.As(err, &ph) || !strings.Contains(err.Error(), `sqlx.BindDriver("pgresilient", sqlx.DOLLAR)`) {
			t.Errorf("without BindDriver: the error does not say to call sqlx.BindDriver: %v", err)
		}
	}

	sqlx.BindDriver(pgresilient.DriverName, sqlx.DOLLAR) // the recipe
	wantOK("pgresilient with BindDriver", run(pgr, 3))
}

// TestSqlxErrors: pgresilient's errors reach the caller through sqlx
// unwrapped: sqlx returns database/sql's errors as they are.
func TestSqlxErrors(t *testing.T) {
	c := requireCluster(t)
	for _, name := range drivers {
		dsn, arm := cutProxy(t, c)
		db := sqlx.NewDb(openDB(t, name, dsn), name)
		if err := db.Ping(); err != nil {
			t.Fatal(err)
		}
		arm()
		var one int
		checkLost(t, "sqlx Get", name, db.Get(&one, cutQuery))
	}

	db := sqlx.NewDb(openDB(t, pgresilient.DriverName, refusingDSN(t, c)), pgresilient.DriverName)
	var one int
	t.Logf("sqlx over pgresilient, connection refused: %v", db.Get(&one, "select 1"))
	checkCircuitOpen(t, "sqlx Get", db.Get(&one, "select 1"))
}

// TestSqlxTxAborted: after a failed statement in a sqlx transaction, the
// next statement and the commit match ErrTxAborted.
func TestSqlxTxAborted(t *testing.T) {
	c := requireCluster(t)
	exec(t, c, "drop table if exists sqlx_tx; create table sqlx_tx (id int primary key); insert into sqlx_tx values (1)")
	db := sqlx.NewDb(openDB(t, pgresilient.DriverName, c.DSN()), pgresilient.DriverName)
	tx, err := db.Beginx()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	_, first := tx.Exec("insert into sqlx_tx values ($1)", 1)
	_, next := tx.Exec("insert into sqlx_tx values ($1)", 2)
	commit := tx.Commit()
	t.Logf("sqlx Tx: first: %v; next: %v; commit: %v", first, next, commit)
	if first == nil || !errors.Is(next, pgresilient.ErrTxAborted) || !errors.Is(commit, pgresilient.ErrTxAborted) {
		t.Error("want a 23505, then ErrTxAborted for the next statement and the commit")
	}
}
