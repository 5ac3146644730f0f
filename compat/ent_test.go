package compat

// ent is shown through its dialect/sql layer (entsql.OpenDB, the query
// builder, Driver.Tx), which every ent-generated client runs on: generating a
// client for even a one-field schema adds thousands of lines to commit.

import (
	"context"
	"errors"
	"testing"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	"entgo.io/ent/dialect/sql/sqlgraph"

	"github.com/pgresilient/pgresilient"
)

// openEnt is the recipe: an ent driver over a *sql.DB of the named driver.
// A generated client takes it as ent.NewClient(ent.Driver(drv)).
func openEnt(t *testing.T, driverName, dsn string) *entsql.Driver {
	t.Helper()
	return entsql.OpenDB(dialect.Postgres, openDB(t, driverName, dsn))
}

type entItem struct {
	ID   int    `sql:"id"`
	Name string `sql:"name"`
}

func entInsert(ctx context.Context, ex dialect.ExecQuerier, id int, name string) error {
	q, args := entsql.Dialect(dialect.Postgres).Insert("ent_items").Columns("id", "name").Values(id, name).Query()
	return ex.Exec(ctx, q, args, nil)
}

// TestEnt: insert and select with ent's builder, ent's own constraint check
// (sqlgraph.IsUniqueConstraintError, which generated clients use) on
// pgresilient's error, and an aborted transaction through Driver.Tx.
func TestEnt(t *testing.T) {
	c := requireCluster(t)
	ctx := context.Background()
	exec(t, c, "drop table if exists ent_items; create table ent_items (id bigint primary key, name text not null unique)")
	drv := openEnt(t, pgresilient.DriverName, c.DSN())
	if err := entInsert(ctx, drv, 1, "a"); err != nil {
		t.Fatal(err)
	}
	err := entInsert(ctx, drv, 2, "a")
	t.Logf("duplicate: %v", err)
	if !sqlgraph.IsUniqueConstraintError(err) {
		t.Errorf("sqlgraph.IsUniqueConstraintError is false for %v", err)
	}

	tx, err := drv.Tx(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := entInsert(ctx, tx, 2, "a")
	next := entInsert(ctx, tx, 3, "c")
	commit := tx.Commit()
	t.Logf("in Driver.Tx: first: %v; next: %v; commit: %v", first, next, commit)
	if !sqlgraph.IsUniqueConstraintError(first) || !errors.Is(next, pgresilient.ErrTxAborted) || !errors.Is(commit, pgresilient.ErrTxAborted) {
		t.Error("want a unique violation, then ErrTxAborted for the next statement and the commit")
	}

	q, args := entsql.Dialect(dialect.Postgres).Select("id", "name").From(entsql.Table("ent_items")).OrderBy("id").Query()
	var rows entsql.Rows
	if err := drv.Query(ctx, q, args, &rows); err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var items []entItem
	if err := entsql.ScanSlice(rows, &items); err != nil {
		t.Fatal(err)
	}
	if len(items) != 1 || items[0] != (entItem{1, "a"}) {
		t.Errorf("select: %+v, want [{1 a}]", items)
	}
}

// TestEntErrors: a lost connection and an open breaker through ent's driver,
// which returns database/sql's errors as they are.
func TestEntErrors(t *testing.T) {
	c := requireCluster(t)
	ctx := context.Background()
	for _, name := range drivers {
		dsn, arm := cutProxy(t, c)
		drv := openEnt(t, name, dsn)
		if err := drv.DB().Ping(); err != nil {
			t.Fatal(err)
		}
		arm()
		var rows entsql.Rows
		err := drv.Query(ctx, cutQuery, []any{}, &rows)
		if err == nil {
			for rows.Next() {
			}
			err = rows.Err()
			rows.Close()
		}
		checkLost(t, "ent Driver.Query", name, err)
	}

	drv := openEnt(t, pgresilient.DriverName, refusingDSN(t, c))
	var rows entsql.Rows
	t.Logf("ent over pgresilient, connection refused: %v", drv.Query(ctx, "select 1", []any{}, &rows))
	checkCircuitOpen(t, "ent Driver.Query", drv.Query(ctx, "select 1", []any{}, &rows))
}
