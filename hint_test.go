package pgresilient

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestPlaceholderHint: a syntax error of a statement written with '?'
// placeholders says how to write PostgreSQL's, through Exec, Query and
// Prepare, and still wraps the server's 42601; raw pgx returns the bare
// syntax error. A statement with $1, or another error, is left alone.
func TestPlaceholderHint(t *testing.T) {
	c := needCluster(t)
	const q = "select id from (values (1)) v(id) where id = ?"
	sideBySide(t, func(t *testing.T, driverName string) {
		db := openDB(t, driverName, c.DSN())
		_, errExec := db.Exec(q, 1)
		_, errQuery := db.Query(q, 1)
		_, errPrepare := db.Prepare(q)
		for i, err := range []error{errExec, errQuery, errPrepare} {
			op := []string{"exec", "query", "prepare"}[i]
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != codeSyntaxError {
				t.Fatalf("%s: %v, want the server's 42601", op, err)
			}
			var ph *PlaceholderError
			hinted := errors.As(err, &ph) && strings.Contains(err.Error(), "PostgreSQL's placeholders are $1")
			if hinted != (driverName == DriverName) {
				t.Errorf("%s: hinted %v: %v", op, hinted, err)
			}
		}
	})
	t.Run("left alone", func(t *testing.T) {
		db := openDB(t, DriverName, c.DSN())
		for _, q := range []string{
			"select $1::int where ?",             // a $1: the author knows
			"selec 1",                            // no '?'
			`select '{"a":1}'::jsonb ? 'a' from`, // '?' the jsonb operator, but the error is elsewhere: hinted
		} {
			_, err := db.Exec(q)
			var ph *PlaceholderError
			want := strings.HasSuffix(q, "from")
			if errors.As(err, &ph) != want {
				t.Errorf("%q: hinted %v, want %v: %v", q, !want, want, err)
			}
		}
	})
}
