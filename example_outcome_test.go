package pgresilient_test

import (
	"context"
	"database/sql"
	"errors"
	"log"
	"time"

	"github.com/pgresilient/pgresilient"
)

// A transaction of your own, outside RunTx: read its id before COMMIT, and
// when COMMIT's outcome is lost, ask the database what became of it.
func ExampleResolveCommit() {
	db, err := sql.Open("pgresilient", "postgres://app@db1,db2/app?target_session_attrs=read-write")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit, sql.ErrTxDone
	if _, err := tx.ExecContext(ctx, "insert into orders (id) values ($1)", 42); err != nil {
		log.Fatal(err)
	}
	id, err := pgresilient.ReadTxID(ctx, tx) // after the last write, right before COMMIT
	if err != nil {
		log.Fatal(err)
	}
	err = tx.Commit()
	switch {
	case err == nil:
		// committed
	case errors.Is(err, pgresilient.ErrNotCommitted):
		// the wire knows: it did not commit; running it again is safe
	case errors.Is(err, pgresilient.ErrConnLost):
		committed, rerr := pgresilient.ResolveCommit(ctx, db, id) // reconnects; never asks a standby
		switch {
		case rerr != nil:
			log.Printf("order 42: outcome still unknown: %v", rerr) // check before doing it again
		case committed:
			// committed after all: do not run it again
		default:
			// did not commit: running it again is safe
		}
	default:
		log.Print(err)
	}
}
