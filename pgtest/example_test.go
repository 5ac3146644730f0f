package pgtest_test

import (
	"context"
	"database/sql"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/pgresilient/pgresilient/pgtest"
)

// A cluster for one test, closed when it ends; the test restarts it.
func ExampleNewT() {
	var t *testing.T // the test's
	cluster := pgtest.NewT(t)
	db, err := sql.Open("pgx", cluster.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := cluster.Restart(context.Background(), pgtest.ModeFast); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.TerminateBackends(context.Background()); err != nil {
		t.Fatal(err)
	}
}
