package pgresilient_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5"

	"github.com/pgresilient/pgresilient"
)

func ExampleParseConfig() {
	cfg, err := pgresilient.ParseConfig("postgres://app@db.internal:5432/app?sslmode=disable&breaker_failures=3&query_timeout=2s")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(cfg.ConnConfig.Host, cfg.ConnConfig.Database)
	fmt.Println(cfg.BreakerFailures, cfg.QueryTimeout, cfg.ConnectRetries)
	_, inServerParams := cfg.ConnConfig.RuntimeParams["breaker_failures"]
	fmt.Println("sent to the server:", inServerParams)

	_, err = pgresilient.ParseConfig("postgres://app@db/app?breaker_cooldown=5x")
	fmt.Println(err)
	// Output:
	// db.internal app
	// 3 2s 3
	// sent to the server: false
	// pgresilient: invalid breaker_cooldown "5x": time: unknown unit "x" in duration "5x" (want a duration greater than 0, such as 5s)
}

// The usual drop-in: a blank import and sql.Open.
func Example() {
	db, err := sql.Open("pgresilient", "postgres://app@localhost/app?query_timeout=5s")
	if err != nil {
		panic(err)
	}
	defer db.Close()

	_, err = db.ExecContext(context.Background(), "insert into orders (id) values ($1)", 42)
	switch {
	case errors.Is(err, pgresilient.ErrConnLost):
		// The connection broke after the insert was sent: it may or may
		// not have happened. Check, or retry only an idempotent write.
	case errors.Is(err, pgresilient.ErrCircuitOpen):
		// The database is down: fail fast, nothing was sent.
	case err != nil:
		// An SQL error: errors.As(err, &pgErr) finds the *pgconn.PgError.
	}
}

// Go-only settings go through NewConnector and sql.OpenDB.
func ExampleNewConnector() {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	c, err := pgresilient.NewConnector("postgres://app@localhost/app?breaker_failures=5",
		pgresilient.WithLogger(logger),
		pgresilient.WithStateChange(func(from, to pgresilient.BreakerState) {
			// Runs under the breaker's lock: record, don't block.
		}),
		pgresilient.WithBeforeConnect(func(ctx context.Context, cfg *pgx.ConnConfig) error {
			cfg.Password = "a fresh short-lived token" // e.g. a cloud IAM token
			return nil
		}),
	)
	if err != nil {
		panic(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
}

// Unit tests of application code wrap go-sqlmock's driver.
func ExampleWithDriver() {
	db0, mock, err := sqlmock.NewWithDSN("orders_test")
	if err != nil {
		panic(err)
	}
	defer db0.Close()
	c, err := pgresilient.NewConnector("orders_test?breaker=off", pgresilient.WithDriver(db0.Driver()))
	if err != nil {
		panic(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()

	mock.ExpectExec("insert into orders").WillReturnResult(sqlmock.NewResult(0, 1))
	_, err = db.Exec("insert into orders (id) values (1)")
	fmt.Println(err, mock.ExpectationsWereMet())
	// Output: <nil> <nil>
}

// PgxConn reaches pgx beneath database/sql, for COPY and LISTEN/NOTIFY.
func ExamplePgxConn() {
	db, _ := sql.Open("pgresilient", "postgres://app@localhost/app")
	defer db.Close()
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		return
	}
	defer conn.Close()
	_ = conn.Raw(func(dc any) error {
		pc, err := pgresilient.PgxConn(dc)
		if err != nil {
			return err
		}
		_, err = pc.CopyFrom(ctx, pgx.Identifier{"orders"}, []string{"id"}, pgx.CopyFromRows([][]any{{1}, {2}}))
		return err
	})
}
