package pgresilient_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgresilient/pgresilient"
)

// RunTx runs a transfer under SERIALIZABLE and runs it again when the server
// reports a serialization failure. go-sqlmock plays the server here: the
// first attempt's update fails with SQLSTATE 40001.
func ExampleRunTx() {
	db0, mock, err := sqlmock.NewWithDSN("example_runtx")
	if err != nil {
		panic(err)
	}
	defer db0.Close()
	c, err := pgresilient.NewConnector("example_runtx?breaker=off", pgresilient.WithDriver(db0.Driver()))
	if err != nil {
		panic(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()

	mock.ExpectBegin()
	mock.ExpectExec("update accounts").WillReturnError(&pgconn.PgError{Severity: "ERROR", Code: "40001",
		Message: "could not serialize access due to concurrent update"})
	mock.ExpectRollback() // pgresilient rolls the failed transaction back at once
	mock.ExpectBegin()
	mock.ExpectExec("update accounts").WillReturnResult(sqlmock.NewResult(0, 1))
	mock.ExpectExec("update accounts").WillReturnResult(sqlmock.NewResult(0, 1))
	mock.ExpectCommit()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = pgresilient.RunTx(ctx, db, &sql.TxOptions{Isolation: sql.LevelSerializable},
		func(ctx context.Context, tx *sql.Tx) error {
			// Everything through tx, nothing that must not happen twice.
			if _, err := tx.ExecContext(ctx, "update accounts set balance = balance - $1 where id = $2", 10, 1); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, "update accounts set balance = balance + $1 where id = $2", 10, 2)
			return err
		},
		pgresilient.TxMaxAttempts(3),
		pgresilient.TxOnRetry(func(attempt int, err error, _ time.Duration) {
			fmt.Printf("attempt %d failed, retrying: %v\n", attempt, err)
		}))

	var re *pgresilient.RunTxError
	switch {
	case errors.As(err, &re) && re.CommitUnknown:
		// COMMIT was sent and the connection broke: the transfer may have
		// happened. Not retried: check before doing it again.
	case err != nil:
		// Not committed: fn's own error, an SQL error, or the last of
		// TxMaxAttempts serialization failures (a *pgresilient.RunTxError).
	}
	fmt.Println("transfer:", err, mock.ExpectationsWereMet())
	// Output:
	// attempt 1 failed, retrying: ERROR: could not serialize access due to concurrent update (SQLSTATE 40001)
	// transfer: <nil> <nil>
}
