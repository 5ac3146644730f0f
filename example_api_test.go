package pgresilient_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ngrok/sqlmw"

	"github.com/pgresilient/pgresilient"
)

// A pool opened with sql.Open keeps its Connector: ConnectorOf finds it,
// for Stats or a Prometheus collector. Opening connects nothing yet.
func ExampleConnectorOf() {
	db, err := sql.Open("pgresilient", "postgres://app@db.internal/orders?query_timeout=5s")
	if err != nil {
		panic(err)
	}
	defer db.Close()
	c, ok := pgresilient.ConnectorOf(db)
	fmt.Println(ok, c.Stats().Opened, c.Stats().Breaker)
	// Output: true 0 closed
}

// Stats counts what happened since the Connector was created; the
// difference of two snapshots counts what happened in between.
func ExampleConnector_Stats() {
	c, err := pgresilient.NewConnector("postgres://app@db.internal/orders")
	if err != nil {
		panic(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	before := c.Stats()
	// ... serve traffic ...
	after := c.Stats()
	fmt.Println("connections lost with the outcome unknown:", after.ConnLost-before.ConnLost)
	fmt.Println("breaker:", after.Breaker)
	// Output:
	// connections lost with the outcome unknown: 0
	// breaker: closed
}

// Config returns the settings in effect, defaults filled in.
func ExampleConnector_Config() {
	c, err := pgresilient.NewConnector("host=db breaker_failures=3")
	if err != nil {
		panic(err)
	}
	cfg := c.Config()
	fmt.Println(cfg.BreakerFailures, cfg.BreakerCooldown, cfg.ConnectRetries)
	// Output: 3 1s 3
}

// A Config adjusted in Go, for settings computed at run time.
func ExampleNewConnectorConfig() {
	cfg := pgresilient.DefaultConfig()
	cc, err := pgx.ParseConfig("postgres://app@db.internal/orders")
	if err != nil {
		panic(err)
	}
	cfg.ConnConfig = cc
	cfg.QueryTimeout = 3 * time.Second
	c, err := pgresilient.NewConnectorConfig(cfg)
	if err != nil {
		panic(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	fmt.Println(c.Config().QueryTimeout)
	// Output: 3s
}

func ExampleDefaultConfig() {
	cfg := pgresilient.DefaultConfig()
	fmt.Println(cfg.BreakerFailures, cfg.BreakerCooldown, cfg.ConnectRetries, cfg.ConnectBackoff, cfg.ConnectBackoffMax, cfg.QueryTimeout)
	// Output: 5 1s 3 100ms 5s 0s
}

// A ConfigError names the parameter and its value, never the DSN.
func ExampleConfigError() {
	_, err := pgresilient.ParseConfig("postgres://app:s3cret@db/orders?breaker_cooldown=5x")
	var ce *pgresilient.ConfigError
	if errors.As(err, &ce) {
		fmt.Println(ce.Param, ce.Value)
	}
	fmt.Println(err)
	// Output:
	// breaker_cooldown 5x
	// pgresilient: invalid breaker_cooldown "5x": time: unknown unit "x" in duration "5x" (want a duration greater than 0, such as 5s)
}

// The three questions to ask of an error.
func Example_errors() {
	check := func(err error) {
		switch {
		case errors.Is(err, pgresilient.ErrConnLost):
			fmt.Println("outcome unknown: check before retrying")
		case errors.Is(err, pgresilient.ErrCircuitOpen):
			fmt.Println("database down: failed fast, nothing sent")
		case errors.Is(err, pgresilient.ErrTxAborted):
			fmt.Println("an earlier statement of this transaction failed")
		default:
			fmt.Println("other:", err)
		}
	}
	check(&pgresilient.DisconnectError{Op: pgresilient.OpCommit, Err: io.ErrUnexpectedEOF})
	check(&pgresilient.CircuitOpenError{})
	check(&pgresilient.TxAbortedError{Err: errors.New("duplicate key")})
	// Output:
	// outcome unknown: check before retrying
	// database down: failed fast, nothing sent
	// an earlier statement of this transaction failed
}

// A DisconnectError says which operation broke; its message says whether
// the outcome is known.
func ExampleDisconnectError() {
	err := error(&pgresilient.DisconnectError{Op: pgresilient.OpCommit, InTx: true, Err: io.ErrUnexpectedEOF})
	var de *pgresilient.DisconnectError
	if errors.As(err, &de) {
		fmt.Println(de.Op, de.InTx)
	}
	fmt.Println(err)
	// Output:
	// commit true
	// pgresilient: commit: connection lost during commit, outcome unknown (the transaction may or may not have committed): unexpected EOF
}

// Op values name the operation in a DisconnectError and in log events.
func ExampleOp() {
	fmt.Println(pgresilient.OpExec, pgresilient.OpRows)
	// Output: exec rows
}

// TxAbortedError keeps the statement error that aborted the transaction.
func ExampleTxAbortedError() {
	first := errors.New("23505: duplicate key value violates unique constraint")
	err := error(&pgresilient.TxAbortedError{Err: first})
	fmt.Println(errors.Is(err, pgresilient.ErrTxAborted), errors.Is(err, first))
	// Output: true true
}

// CircuitOpenError says which server failed, why, and when the breaker lets
// the next probe through.
func ExampleCircuitOpenError() {
	err := error(&pgresilient.CircuitOpenError{
		Addr: "127.0.0.1:5432",
		Last: errors.New("dial tcp 127.0.0.1:5432: connect: connection refused"),
	})
	var coe *pgresilient.CircuitOpenError
	fmt.Println(errors.As(err, &coe), errors.Is(err, pgresilient.ErrCircuitOpen), coe.Addr)
	fmt.Println(err)
	// Output:
	// true true 127.0.0.1:5432
	// pgresilient: circuit open for 127.0.0.1:5432 (last failure: dial tcp 127.0.0.1:5432: connect: connection refused); a probe is under way
}

// A ConnectError says how many attempts failed and whether retrying can help.
func ExampleConnectError() {
	err := error(&pgresilient.ConnectError{Attempts: 4, Err: errors.New("dial tcp 127.0.0.1:5432: connect: connection refused")})
	var ce *pgresilient.ConnectError
	if errors.As(err, &ce) {
		fmt.Println(ce.Attempts, ce.Permanent)
	}
	fmt.Println(err)
	// Output:
	// 4 false
	// pgresilient: connect failed after 4 attempt(s): dial tcp 127.0.0.1:5432: connect: connection refused
}

// IsDisconnect answers for raw pgx and network errors too.
func ExampleIsDisconnect() {
	fmt.Println(pgresilient.IsDisconnect(io.ErrUnexpectedEOF))
	fmt.Println(pgresilient.IsDisconnect(errors.New("syntax error")))
	// Output:
	// true
	// false
}

func ExampleBreakerState() {
	for _, s := range []pgresilient.BreakerState{pgresilient.BreakerClosed, pgresilient.BreakerHalfOpen, pgresilient.BreakerOpen, pgresilient.BreakerDisabled} {
		fmt.Println(s)
	}
	// Output:
	// closed
	// half-open
	// open
	// disabled
}

// The Driver is what sql.Open("pgresilient", dsn) uses; DriverName is its name.
func ExampleDriver() {
	fmt.Println(pgresilient.DriverName)
	c, err := (&pgresilient.Driver{}).OpenConnector("host=db")
	if err != nil {
		panic(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	// Output: pgresilient
}

// The rare events go to a logger of yours; without one nothing is logged.
func ExampleWithLogger() {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("db_name", "orders")
	c, err := pgresilient.NewConnector("postgres://app@db.internal/orders", pgresilient.WithLogger(logger))
	if err != nil {
		panic(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
}

// An interceptor of yours sees the errors pgresilient returns.
func ExampleWithInterceptor() {
	c, err := pgresilient.NewConnector("postgres://app@db.internal/orders",
		pgresilient.WithInterceptor(sqlmw.NullInterceptor{}))
	if err != nil {
		panic(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
}

// A short-lived password (a cloud IAM token) fetched for every new connection.
func ExampleWithBeforeConnect() {
	token := func(context.Context) (string, error) { return "token", nil } // your token source
	c, err := pgresilient.NewConnector("postgres://app@db.internal/orders",
		pgresilient.WithBeforeConnect(func(ctx context.Context, cc *pgx.ConnConfig) error {
			var err error
			cc.Password, err = token(ctx)
			return err
		}))
	if err != nil {
		panic(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
}

// Session settings for every new connection.
func ExampleWithAfterConnect() {
	c, err := pgresilient.NewConnector("postgres://app@db.internal/orders",
		pgresilient.WithAfterConnect(func(ctx context.Context, conn *pgx.Conn) error {
			_, err := conn.Exec(ctx, "set application_name = 'orders'")
			return err
		}))
	if err != nil {
		panic(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
}

// Breaker transitions delivered to a channel, without blocking.
func ExampleWithStateChange() {
	changes := make(chan pgresilient.BreakerState, 16)
	c, err := pgresilient.NewConnector("postgres://app@db.internal/orders",
		pgresilient.WithStateChange(func(from, to pgresilient.BreakerState) {
			select {
			case changes <- to:
			default: // never block: this runs under the breaker's lock
			}
		}))
	if err != nil {
		panic(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
}

// A write refused by a demoted primary: outside a transaction database/sql
// runs it again elsewhere; inside one, the caller runs the transaction again.
func ExampleRoleChangedError() {
	refused := &pgconn.PgError{Code: "25006", Message: "cannot execute INSERT in a read-only transaction"}
	err := error(&pgresilient.RoleChangedError{Op: pgresilient.OpExec, InTx: true, Err: refused})
	fmt.Println(errors.Is(err, pgresilient.ErrRoleChanged), errors.Is(err, pgresilient.ErrConnLost))
	// Output: true false
}

// RunTxError says how many attempts were made and whether the last COMMIT's
// outcome is unknown.
func ExampleRunTxError() {
	err := error(&pgresilient.RunTxError{Attempts: 3, Err: errors.New("40001")})
	var re *pgresilient.RunTxError
	fmt.Println(errors.As(err, &re), re.Attempts, re.CommitUnknown)
	// Output: true 3 false
}

// The runner's backoff between attempts: full jitter, from base doubling to max.
func ExampleTxBackoff() {
	var db *sql.DB // the pool
	_ = pgresilient.RunTx(context.Background(), db, nil,
		func(ctx context.Context, tx *sql.Tx) error { return nil },
		pgresilient.TxMaxAttempts(10), pgresilient.TxBackoff(5*time.Millisecond, time.Second))
}

// TxBeginner is what RunTx runs on: a *sql.DB, or a *sql.Conn pinned to one
// connection.
func ExampleTxBeginner() {
	var _ pgresilient.TxBeginner = (*sql.DB)(nil)
	var _ pgresilient.TxBeginner = (*sql.Conn)(nil)
}
