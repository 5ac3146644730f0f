// Package poolburst uses every connection of a pool at once, the way a burst
// of requests does: the reuse checks of a pooled connection (a peek, a ping)
// then run on each of them, which is what the idle-reuse tests and the
// interleaved benchmark's bursty workloads measure.
package poolburst

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
)

// Run runs select 1 on n pooled connections of db at once: each goroutine
// holds its result set until all have one, so that each holds a connection
// of its own.
func Run(ctx context.Context, db *sql.DB, n int) error {
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
