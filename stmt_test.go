package pgresilient

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// TestStmtNamedValues: pgx's own argument types pass CheckNamedValue
// untouched, and a prepared statement runs through pgresilient.
func TestStmtNamedValues(t *testing.T) {
	c := needCluster(t)
	db := openDB(t, DriverName, c.DSN())

	var got string
	if err := db.QueryRow("select @v::text", pgx.NamedArgs{"v": "named"}).Scan(&got); err != nil || got != "named" {
		t.Errorf("pgx.NamedArgs: %q, %v", got, err)
	}
	var arr []int64
	if err := db.QueryRow("select $1::int8[]", []int64{1, 2}).Scan(&arr); err != nil {
		// database/sql cannot scan into []int64; pgx's array support is
		// reached through Raw: it is enough that the argument was accepted.
		if !strings.Contains(err.Error(), "unsupported Scan") {
			t.Errorf("[]int64 argument: %v", err)
		}
	}
	// What docs/ecosystem.md tells lib/pq users before Go 1.27 (pq.Array).
	arr = nil
	if err := db.QueryRow("select $1::int8[]", []int64{1, 2}).Scan(pgtype.NewMap().SQLScanner(&arr)); err != nil || len(arr) != 2 || arr[1] != 2 {
		t.Errorf("[]int64 through pgtype's SQLScanner: %v, %v", arr, err)
	}

	st, err := db.Prepare("select $1::int + 1")
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := st.QueryRow(41).Scan(&n); err != nil || n != 42 {
		t.Errorf("prepared: %d, %v", n, err)
	}
	st.Close()
}
