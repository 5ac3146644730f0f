package pgresilient

import (
	"strings"
	"testing"
)

// TestRowsColumnTypes: pgx's column-type interfaces reach database/sql
// through pgresilient's result sets (docs/design.md, "Through every layer").
func TestRowsColumnTypes(t *testing.T) {
	c := needCluster(t)
	db := openDB(t, DriverName, c.DSN())

	rows, err := db.Query("select 1::int4 as a, 'x'::text as b, 1.5::numeric(4,2) as c")
	if err != nil {
		t.Fatal(err)
	}
	cols, err := rows.ColumnTypes()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, col := range cols {
		names = append(names, col.Name()+":"+col.DatabaseTypeName())
	}
	if got, want := strings.Join(names, " "), "a:INT4 b:TEXT c:NUMERIC"; got != want {
		t.Errorf("column types %q, want %q", got, want)
	}
	if p, s, ok := cols[2].DecimalSize(); !ok || p != 4 || s != 2 {
		t.Errorf("DecimalSize = %d, %d, %v; want 4, 2, true", p, s, ok)
	}
	if st := cols[0].ScanType(); st == nil || st.Kind().String() != "int32" {
		t.Errorf("ScanType = %v, want int32", st)
	}
	rows.Close()
}
