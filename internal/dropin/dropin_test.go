package dropin

import (
	"context"
	"database/sql"
	"os"
	"sync"
	"testing"

	_ "github.com/pgresilient/pgresilient" // the drop-in: registers "pgresilient"

	"github.com/pgresilient/pgresilient/pgtest"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m, &cluster)) }

// TestBlankImport: sql.Open with a blank import; a warm pool of 8, each
// connection used within the last second; the server restarts, then every
// backend is terminated; 200 sequential queries after each see no error.
func TestBlankImport(t *testing.T) {
	c := pgtest.Require(t, cluster)
	db, err := sql.Open("pgresilient", c.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(8)
	db.SetMaxIdleConns(8)

	warm := func() {
		t.Helper()
		for range 2 { // dialled, then reused: like a pool that has been running
			var wg sync.WaitGroup
			errs := make([]error, 8)
			for i := range 8 {
				wg.Go(func() { _, errs[i] = db.Exec("select pg_sleep(0.05)") })
			}
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
		}
		if n := db.Stats().OpenConnections; n != 8 {
			t.Fatalf("%d connections open, want 8", n)
		}
	}
	run := func(what string) {
		t.Helper()
		failed := 0
		var first error
		for range 200 {
			var one int
			if err := db.QueryRow("select 1").Scan(&one); err != nil {
				failed++
				if first == nil {
					first = err
				}
			}
		}
		t.Logf("after %s: %d of 200 queries failed", what, failed)
		if failed != 0 {
			t.Errorf("after %s: %d of 200 queries failed (first: %v)", what, failed, first)
		}
	}

	warm()
	if err := c.Restart(context.Background(), pgtest.ModeFast); err != nil {
		t.Fatal(err)
	}
	run("pg_ctl restart -m fast")

	warm()
	n, err := c.TerminateBackends(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n != 8 {
		t.Fatalf("terminated %d backends, want 8", n)
	}
	run("terminating every backend")
	if n := db.Stats().InUse; n != 0 {
		t.Errorf("%d connections in use at the end", n)
	}
}
