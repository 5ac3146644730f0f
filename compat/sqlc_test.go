package compat

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"testing"

	"github.com/pgresilient/pgresilient"
	"github.com/pgresilient/pgresilient/compat/sqlcdb"
)

// TestSqlc: sqlc's generated code takes any DBTX, so a *sql.DB of the
// pgresilient driver, or a *sql.Tx of it through WithTx, needs no setup. A
// failed statement inside the transaction makes the next one return
// ErrTxAborted.
func TestSqlc(t *testing.T) {
	c := requireCluster(t)
	ctx := context.Background()
	schema, err := os.ReadFile("sqlcdb/schema.sql")
	if err != nil {
		t.Fatal(err)
	}
	exec(t, c, "drop table if exists authors; "+string(schema))
	db := openDB(t, pgresilient.DriverName, c.DSN())
	q := sqlcdb.New(db)

	a, err := q.CreateAuthor(ctx, sqlcdb.CreateAuthorParams{ID: 1, Name: "a", Bio: sql.NullString{String: "bio", Valid: true}})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := q.GetAuthor(ctx, 1); err != nil || got != a {
		t.Fatalf("GetAuthor: %+v, %v; want %+v", got, err, a)
	}

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	qtx := q.WithTx(tx)
	_, first := qtx.CreateAuthor(ctx, sqlcdb.CreateAuthorParams{ID: 2, Name: "a"})
	_, next := qtx.CreateAuthor(ctx, sqlcdb.CreateAuthorParams{ID: 3, Name: "c"})
	commit := tx.Commit()
	t.Logf("in WithTx: first statement: %v; next: %v; commit: %v", first, next, commit)
	if first == nil || !errors.Is(next, pgresilient.ErrTxAborted) || !errors.Is(commit, pgresilient.ErrTxAborted) {
		t.Errorf("want a 23505, then ErrTxAborted for the next statement and the commit")
	}
	if all, err := q.ListAuthors(ctx); err != nil || len(all) != 1 {
		t.Errorf("ListAuthors after the transaction: %+v, %v; want 1 row", all, err)
	}
}

// TestSqlcErrors: a lost connection and an open breaker through
// sqlc-generated code, which returns database/sql's errors as they are.
func TestSqlcErrors(t *testing.T) {
	c := requireCluster(t)
	ctx := context.Background()
	for _, name := range drivers {
		dsn, arm := cutProxy(t, c)
		db := openDB(t, name, dsn)
		if err := db.Ping(); err != nil {
			t.Fatal(err)
		}
		arm()
		checkLost(t, "sqlc Sleep", name, sqlcdb.New(db).Sleep(ctx, 0.05))
	}

	q := sqlcdb.New(openDB(t, pgresilient.DriverName, refusingDSN(t, c)))
	_, err := q.GetAuthor(ctx, 1)
	t.Logf("sqlc over pgresilient, connection refused: %v", err)
	_, err = q.GetAuthor(ctx, 1)
	checkCircuitOpen(t, "sqlc GetAuthor", err)
}
