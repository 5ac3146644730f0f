package compat

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"

	"github.com/XSAM/otelsql"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/pgresilient/pgresilient"
)

// openOtel is the recipe: otelsql.Open over the named driver. The span
// recorder stands in for an exporter.
func openOtel(t *testing.T, driverName, dsn string) (*sql.DB, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	db, err := otelsql.Open(driverName, dsn, otelsql.WithTracerProvider(tp))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, rec
}

// spanNames lists the names of the ended spans, and says whether one of
// them has an error status.
func spanNames(rec *tracetest.SpanRecorder) (names []string, anyError bool) {
	for _, s := range rec.Ended() {
		names = append(names, s.Name())
		anyError = anyError || s.Status().Code == codes.Error
	}
	return names, anyError
}

// TestOtelsqlSpans: statements through otelsql over pgresilient are traced.
func TestOtelsqlSpans(t *testing.T) {
	c := requireCluster(t)
	db, rec := openOtel(t, pgresilient.DriverName, c.DSN())
	var n int
	if err := db.QueryRow("select $1::int + 1", 41).Scan(&n); err != nil || n != 42 {
		t.Fatalf("query: %d, %v", n, err)
	}
	names, _ := spanNames(rec)
	t.Logf("spans: %v", names)
	if len(names) == 0 {
		t.Error("no span recorded")
	}
}

// TestOtelsqlPgxConn: (*sql.Conn).Raw hands its callback otelsql's
// connection, which exposes the driver's beneath with Raw() driver.Conn, not
// Unwrap. pgresilient.PgxConn sees through both, over raw pgx and over
// pgresilient, so COPY works under otelsql.
func TestOtelsqlPgxConn(t *testing.T) {
	c := requireCluster(t)
	ctx := context.Background()
	exec(t, c, "drop table if exists otel_copy; create table otel_copy (id int)")
	for i, name := range drivers {
		db, _ := openOtel(t, name, c.DSN())
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		err = conn.Raw(func(dc any) error {
			t.Logf("over %s, Raw's callback gets a %T", name, dc)
			pc, err := pgresilient.PgxConn(dc)
			if err != nil {
				return err
			}
			n, err := pc.CopyFrom(ctx, pgx.Identifier{"otel_copy"}, []string{"id"}, pgx.CopyFromRows([][]any{{i*10 + 1}, {i*10 + 2}}))
			if err == nil && n != 2 {
				err = fmt.Errorf("copied %d rows, want 2", n)
			}
			return err
		})
		conn.Close()
		if err != nil {
			t.Errorf("PgxConn through otelsql over %s: %v", name, err)
		}
	}
}

// TestOtelsqlErrors: a lost connection and an open breaker through otelsql,
// which returns the driver's errors as they are and marks the span as an
// error.
func TestOtelsqlErrors(t *testing.T) {
	c := requireCluster(t)
	for _, name := range drivers {
		dsn, arm := cutProxy(t, c)
		db, rec := openOtel(t, name, dsn)
		if err := db.Ping(); err != nil {
			t.Fatal(err)
		}
		arm()
		var one int
		checkLost(t, "otelsql QueryRow", name, db.QueryRow(cutQuery).Scan(&one))
		if names, anyError := spanNames(rec); !anyError {
			t.Errorf("over %s: no span with an error status among %v", name, names)
		}
	}

	db, _ := openOtel(t, pgresilient.DriverName, refusingDSN(t, c))
	var one int
	t.Logf("otelsql over pgresilient, connection refused: %v", db.QueryRow("select 1").Scan(&one))
	checkCircuitOpen(t, "otelsql QueryRow", db.QueryRow("select 1").Scan(&one))
}

// TestOtelsqlTxAborted: after a failed statement in a transaction under
// otelsql, the next statement and the commit match ErrTxAborted.
func TestOtelsqlTxAborted(t *testing.T) {
	c := requireCluster(t)
	exec(t, c, "drop table if exists otel_tx; create table otel_tx (id int primary key); insert into otel_tx values (1)")
	db, _ := openOtel(t, pgresilient.DriverName, c.DSN())
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	_, first := tx.Exec("insert into otel_tx values ($1)", 1)
	_, next := tx.Exec("insert into otel_tx values ($1)", 2)
	commit := tx.Commit()
	t.Logf("otelsql Tx: first: %v; next: %v; commit: %v", first, next, commit)
	if first == nil || !errors.Is(next, pgresilient.ErrTxAborted) || !errors.Is(commit, pgresilient.ErrTxAborted) {
		t.Error("want a 23505, then ErrTxAborted for the next statement and the commit")
	}
}
