package main

import (
	"context"
	"database/sql"
	"errors"
	"log"
	"os"

	"github.com/pgresilient/pgresilient" // registers the "pgresilient" driver
)

func main() {
	db, err := sql.Open("pgresilient", os.Getenv("DATABASE_URL")) // the DSN you have: the defaults are the recommended configuration
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	_, err = db.ExecContext(context.Background(), "insert into orders (id) values ($1)", 42)
	switch {
	case errors.Is(err, pgresilient.ErrConnLost): // broke after sending: outcome unknown, check before retrying
	case errors.Is(err, pgresilient.ErrCanceled): // cut short by a deadline and canceled by the server: it did not complete
	case errors.Is(err, pgresilient.ErrCircuitOpen): // database down: failed fast, nothing sent
	case errors.Is(err, pgresilient.ErrConnectFailed): // could not connect: nothing sent
	case errors.Is(err, pgresilient.ErrRoleChanged): // the server became a standby: refused before running; safe to run again
	case errors.Is(err, pgresilient.ErrNotCommitted): // Commit lost its connection, but certainly did not commit: safe to run again
	case errors.Is(err, pgresilient.ErrTxAborted): // an earlier statement of this transaction failed
	case err != nil:
		log.Print(err)
	}
}
