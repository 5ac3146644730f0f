// Package selectone runs the statement the benchmarks and the reuse tests
// time, select 1, checked: once, or on every connection of a pool at once,
// the way a burst of requests does, so that the reuse checks of a pooled
// connection (a peek, a ping) run on each of them.
package selectone

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
)

// Query runs select 1 on db and checks the answer.
func Query(ctx context.Context, db *sql.DB) error {
	var n int
	if err := db.QueryRowContext(ctx, "select 1").Scan(&n); err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("select 1 returned %d", n)
	}
	return nil
}

// Burst runs select 1 on n pooled connections of db at once: each goroutine
// holds its result set until all have one, so that each holds a connection
// of its own.
func Burst(ctx context.Context, db *sql.DB, n int) error {
	var got, wg sync.WaitGroup
	got.Add(n)
	errs := make([]error, n)
	for g := range n {
		wg.Go(func() {
			rows, err := db.QueryContext(ctx, "select 1")
			got.Done()
			if err != nil {
				errs[g] = err
				return
			}
			got.Wait()
			v := 0
			for rows.Next() {
				err = rows.Scan(&v)
			}
			errs[g] = errors.Join(err, rows.Err(), rows.Close())
			if errs[g] == nil && v != 1 {
				errs[g] = fmt.Errorf("select 1 returned %d", v)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
