package compat

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"github.com/pgresilient/pgresilient"
)

type bunItem struct {
	bun.BaseModel `bun:"table:bun_items"`
	ID            int    `bun:"id,pk"`
	Name          string `bun:"name,notnull,unique"`
}

// openBun is the recipe: bun with its PostgreSQL dialect over a *sql.DB of
// the named driver.
func openBun(t *testing.T, driverName, dsn string) *bun.DB {
	t.Helper()
	sqldb, err := sql.Open(driverName, dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := bun.NewDB(sqldb, pgdialect.New())
	t.Cleanup(func() { db.Close() })
	return db
}

// TestBun: create a table, insert, select, and an aborted transaction in
// RunInTx, which needs no setup beyond the recipe.
func TestBun(t *testing.T) {
	c := requireCluster(t)
	ctx := context.Background()
	exec(t, c, "drop table if exists bun_items")
	db := openBun(t, pgresilient.DriverName, c.DSN())
	if _, err := db.NewCreateTable().Model((*bunItem)(nil)).Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := db.NewInsert().Model(&bunItem{ID: 1, Name: "a"}).Exec(ctx); err != nil {
		t.Fatal(err)
	}
	var got []bunItem
	if err := db.NewSelect().Model(&got).Where("id = ?", 1).Scan(ctx); err != nil || len(got) != 1 || got[0].Name != "a" {
		t.Fatalf("select: %+v, %v", got, err)
	}

	var first error
	err := db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		_, first = tx.NewInsert().Model(&bunItem{ID: 2, Name: "a"}).Exec(ctx)
		_, err := tx.NewInsert().Model(&bunItem{ID: 3, Name: "c"}).Exec(ctx)
		return err
	})
	t.Logf("RunInTx: first statement: %v; next statement: %v", first, err)
	if !errors.Is(err, pgresilient.ErrTxAborted) {
		t.Errorf("RunInTx: want ErrTxAborted, got %v", err)
	}
	n, err := db.NewSelect().Model((*bunItem)(nil)).Count(ctx)
	if err != nil || n != 1 {
		t.Errorf("after the transaction: %d rows, %v; want 1", n, err)
	}
}

// TestBunErrors: a lost connection and an open breaker through bun.
func TestBunErrors(t *testing.T) {
	c := requireCluster(t)
	ctx := context.Background()
	for _, name := range drivers {
		dsn, arm := cutProxy(t, c)
		db := openBun(t, name, dsn)
		if err := db.PingContext(ctx); err != nil {
			t.Fatal(err)
		}
		arm()
		var one int
		checkLost(t, "bun NewRaw.Scan", name, db.NewRaw(cutQuery).Scan(ctx, &one))
	}

	db := openBun(t, pgresilient.DriverName, refusingDSN(t, c))
	var one int
	t.Logf("bun over pgresilient, connection refused: %v", db.NewRaw("select 1").Scan(ctx, &one))
	checkCircuitOpen(t, "bun NewRaw.Scan", db.NewRaw("select 1").Scan(ctx, &one))
}
