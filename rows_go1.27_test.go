//go:build go1.27

package pgresilient

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/ngrok/sqlmw"
)

// goScanDBs opens raw pgx and pgresilient, plain and with an interceptor
// (whose result sets are sqlmw's), keyed by name.
func goScanDBs(t *testing.T) map[string]*sql.DB {
	t.Helper()
	c := needCluster(t)
	cn, err := NewConnector(c.DSN(), WithInterceptor(sqlmw.NullInterceptor{}))
	if err != nil {
		t.Fatal(err)
	}
	return map[string]*sql.DB{
		"pgx":                       openDB(t, "pgx", c.DSN()),
		DriverName:                  openDB(t, DriverName, c.DSN()),
		DriverName + "+interceptor": openDBConnector(t, cn),
	}
}

// TestRowsColumnScanner: on Go 1.27, pgx scans arrays and ranges into Go
// values itself (driver.RowsColumnScanner); through pgresilient, plain or
// with interceptors, Scan gives what it gives through raw pgx. Before the
// wrapper forwarded the interface, every case here failed with "unsupported
// Scan, storing driver.Value type string into type *[]string".
func TestRowsColumnScanner(t *testing.T) {
	dbs := goScanDBs(t)
	for name, db := range dbs {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			var (
				strs []string
				ints []int64
				rng  pgtype.Range[pgtype.Int4]
				arr  pgtype.FlatArray[int32]
			)
			err := db.QueryRowContext(ctx,
				"select array['a','b']::text[], array[1,2,3]::int8[], int4range(1, 5), array[7,8]::int4[]").
				Scan(&strs, &ints, &rng, &arr)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(strs, []string{"a", "b"}) || !reflect.DeepEqual(ints, []int64{1, 2, 3}) ||
				!reflect.DeepEqual([]int32(arr), []int32{7, 8}) {
				t.Errorf("arrays %q %v %v", strs, ints, arr)
			}
			if !rng.Valid || rng.Lower.Int32 != 1 || rng.Upper.Int32 != 5 {
				t.Errorf("range %+v", rng)
			}

			// A prepared statement's result set too.
			st, err := db.PrepareContext(ctx, "select $1::text[]")
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := st.QueryRowContext(ctx, []string{"x", "y"}).Scan(&strs); err != nil || len(strs) != 2 || strs[1] != "y" {
				t.Errorf("prepared: %q, %v", strs, err)
			}
		})
	}
}

// TestScanNilDestination: a nil destination, untyped or a typed nil pointer,
// is an error, never a hang. Without the forwarded interface, database/sql's
// own conversion panicked on a typed nil pointer while it held the Rows' lock,
// and QueryRow's deferred Close waited forever.
func TestScanNilDestination(t *testing.T) {
	dests := []any{nil, (*int64)(nil), (*string)(nil), (*[]int32)(nil), (*sql.NullString)(nil)}
	for name, db := range goScanDBs(t) {
		t.Run(name, func(t *testing.T) {
			for _, dest := range dests {
				for _, query := range []string{"select 7::int4", "select null::int4"} {
					done := make(chan error, 1)
					go func() {
						defer func() {
							if p := recover(); p != nil {
								done <- fmt.Errorf("panic: %v", p)
							}
						}()
						err := db.QueryRow(query).Scan(dest)
						if err == nil {
							err = errors.New("no error")
						} else {
							err = nil
						}
						done <- err
					}()
					select {
					case err := <-done:
						if err != nil {
							t.Errorf("%s: Scan(%T): %v, want an error", query, dest, err)
						}
					case <-time.After(10 * time.Second):
						t.Fatalf("%s: Scan(%T) hangs", query, dest)
					}
				}
			}
		})
	}
}

// TestNextRowError: an error met while moving to the next row (NextRow, on
// Go 1.27) is handled as Next's: the transaction is rolled back at once and
// later statements say ErrTxAborted; raw pgx leaves it aborted on the server
// (25P02).
func TestNextRowError(t *testing.T) {
	for name, db := range goScanDBs(t) {
		t.Run(name, func(t *testing.T) {
			tx, err := db.Begin()
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			rows, err := tx.Query("select 1 / (n - 3) from generate_series(1, 5) n")
			if err != nil {
				t.Fatal(err)
			}
			var v int
			for rows.Next() {
				if err := rows.Scan(&v); err != nil {
					t.Fatal(err)
				}
			}
			var pgErr *pgconn.PgError
			if err := rows.Err(); !errors.As(err, &pgErr) || pgErr.Code != "22012" {
				t.Fatalf("rows.Err() = %v, want 22012", err)
			}
			rows.Close()
			_, err = tx.Exec("select 1")
			if name == "pgx" {
				if !errors.As(err, &pgErr) || pgErr.Code != "25P02" {
					t.Errorf("raw pgx: next statement %v, want 25P02", err)
				}
				return
			}
			if !errors.Is(err, ErrTxAborted) {
				t.Errorf("next statement %v, want ErrTxAborted", err)
			}
		})
	}
}
