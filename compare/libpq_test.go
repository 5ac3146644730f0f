package compare

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "github.com/lib/pq"              // registers "postgres"

	"github.com/pgresilient/pgresilient"
	"github.com/pgresilient/pgresilient/pgtest"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m, &cluster)) }

// TestLibPQ939 runs the statement of lib/pq issue 939 through lib/pq, raw
// pgx and pgresilient: a transaction that commits an insert, then the backend
// kills itself. lib/pq answers with driver.ErrBadConn, so database/sql runs
// the whole string again, up to three times; pgresilient inserts once and
// says the outcome is unknown.
func TestLibPQ939(t *testing.T) {
	c := pgtest.Require(t, cluster)
	ctx := context.Background()
	rows := map[string]int{}
	for _, name := range []string{"postgres", "pgx", pgresilient.DriverName} {
		t.Run(name, func(t *testing.T) {
			table := "t939_" + map[string]string{"postgres": "libpq", "pgx": "pgx", pgresilient.DriverName: "pgr"}[name]
			if err := c.Exec(ctx, "drop table if exists "+table+"; create table "+table+" (id int)"); err != nil {
				t.Fatal(err)
			}
			db, err := sql.Open(name, c.DSN())
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			_, err = db.Exec("begin; insert into " + table + " values (1); commit; select pg_terminate_backend(pg_backend_pid())")
			var n int
			if qerr := c.WithConn(ctx, func(conn *pgx.Conn) error {
				return conn.QueryRow(ctx, "select count(*) from "+table).Scan(&n)
			}); qerr != nil {
				t.Fatal(qerr)
			}
			rows[name] = n
			t.Logf("%s: %d row(s) inserted; error: %v", name, n, err)
			if name == pgresilient.DriverName {
				if n != 1 {
					t.Errorf("pgresilient inserted %d rows, want exactly 1", n)
				}
				if !errors.Is(err, pgresilient.ErrConnLost) {
					t.Errorf("pgresilient: want ErrConnLost, got %v", err)
				}
			}
		})
	}
	t.Logf("rows inserted by one statement: lib/pq %d, pgx %d, pgresilient %d", rows["postgres"], rows["pgx"], rows[pgresilient.DriverName])
	if rows["postgres"] < 2 {
		t.Logf("lib/pq no longer repeats the statement: update docs/design.md")
	}
}
