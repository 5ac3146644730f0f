package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// The wrapper conventions PgxConn must see through, one type each. Their
// methods other than the unwrapping one are never called.

// unwrapConn is the Unwrap() driver.Conn convention: pgresilient's own conn
// and ngrok/sqlmw's.
type unwrapConn struct {
	driver.Conn
	inner driver.Conn
}

func (c unwrapConn) Unwrap() driver.Conn { return c.inner }

// rawConn is the Raw() driver.Conn convention of XSAM/otelsql's otConn.
type rawConn struct {
	driver.Conn
	inner driver.Conn
}

func (c rawConn) Raw() driver.Conn { return c.inner }

// leafConn is another driver's connection: nothing to unwrap, no pgx.
type leafConn struct{ driver.Conn }

func TestPgxConnWrapperConventions(t *testing.T) {
	pgxLeaf := &stdlib.Conn{} // what pgx stdlib's driver returns; its *pgx.Conn is not needed here
	cycle := &unwrapConn{}
	cycle.inner = rawConn{inner: cycle}
	cases := []struct {
		name string
		conn any
		ok   bool
	}{
		{"stdlib.Conn", pgxLeaf, true},
		{"Unwrap", unwrapConn{inner: pgxLeaf}, true},
		{"Raw (otelsql)", rawConn{inner: pgxLeaf}, true},
		{"Raw over Unwrap (otelsql over pgresilient)", rawConn{inner: unwrapConn{inner: pgxLeaf}}, true},
		{"Unwrap over Raw", unwrapConn{inner: rawConn{inner: pgxLeaf}}, true},
		{"Unwrap to another driver", unwrapConn{inner: leafConn{}}, false},
		{"Raw to another driver", rawConn{inner: leafConn{}}, false},
		{"Raw to nil", rawConn{}, false},
		{"a cycle of wrappers", cycle, false},
		{"nil", nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := PgxConn(tc.conn)
			switch {
			case tc.ok && err != nil:
				t.Errorf("PgxConn: %v, want the *pgx.Conn", err)
			case !tc.ok && !errors.Is(err, errNotPgx):
				t.Errorf("PgxConn: %v, want errNotPgx", err)
			}
		})
	}
}

// TestRawCopy: Raw reaches the pgx connection beneath pgresilient, for what
// database/sql cannot do: COPY.
func TestRawCopy(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	db := openDB(t, DriverName, c.DSN())

	if err := c.Exec(ctx, "drop table if exists tcopy; create table tcopy (id int)"); err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = conn.Raw(func(dc any) error {
		pc, err := PgxConn(dc)
		if err != nil {
			return err
		}
		_, err = pc.CopyFrom(ctx, pgx.Identifier{"tcopy"}, []string{"id"}, pgx.CopyFromRows([][]any{{1}, {2}, {3}}))
		return err
	})
	conn.Close()
	if err != nil {
		t.Fatalf("COPY through Raw: %v", err)
	}
	if n, err := countRows(ctx, c, "tcopy"); err != nil || n != 3 {
		t.Errorf("COPY wrote %d rows (%v), want 3", n, err)
	}
}
