package pgresilient

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgresilient/pgresilient/pgtest"
)

// RunTx against the real throwaway server: conflicting SERIALIZABLE
// transactions, deadlocks, connections cut at BEGIN, inside the
// transaction and during COMMIT, side by side with raw pgx.

// txBarrier is a meeting point for n goroutines, each calling arrive once.
type txBarrier struct {
	wg  sync.WaitGroup
	all chan struct{}
}

func newTxBarrier(n int) *txBarrier {
	b := &txBarrier{all: make(chan struct{})}
	b.wg.Add(n)
	go func() { b.wg.Wait(); close(b.all) }()
	return b
}

// arrive waits for the others, for 10 s at most.
func (b *txBarrier) arrive() error {
	b.wg.Done()
	return txWaitFor(b.all)
}

func txWaitFor(ch <-chan struct{}) error {
	select {
	case <-ch:
		return nil
	case <-time.After(10 * time.Second):
		return errors.New("test barrier: the other transaction never came")
	}
}

var txSerializable = &sql.TxOptions{Isolation: sql.LevelSerializable}

// TestRunTxWriteSkew is the classic write skew under SERIALIZABLE: two
// doctors on call, each transaction reads how many are on call and, if two,
// takes its doctor off call. Both read, both write, then the first commits
// while the second is still open: SSI fails one of them with 40001, RunTx
// runs it again, and the retry sees one doctor left and declines. Over both
// drivers: retrying a serialization failure needs nothing of pgresilient.
func TestRunTxWriteSkew(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	for _, name := range drivers {
		t.Run(name, func(t *testing.T) {
			table := freshTable(t, c, "trskew", name, "(doctor text primary key, on_call bool not null)", "('alice', true), ('bob', true)")
			db := openDB(t, name, c.DSN())
			read, wrote := newTxBarrier(2), newTxBarrier(2)
			firstDone := make(chan struct{})
			doctors := []string{"alice", "bob"}
			var attempts [2]atomic.Int32
			var declined [2]atomic.Bool
			var retryErrs [2][]string
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for i := range 2 {
				wg.Go(func() {
					fn := func(ctx context.Context, tx *sql.Tx) error {
						a := attempts[i].Add(1)
						var n int
						if err := tx.QueryRowContext(ctx, "select count(*) from "+table+" where on_call").Scan(&n); err != nil {
							return err
						}
						if a == 1 {
							if err := read.arrive(); err != nil {
								return err
							}
						}
						if n < 2 {
							declined[i].Store(true)
							return nil // someone must stay on call
						}
						_, err := tx.ExecContext(ctx, "update "+table+" set on_call = false where doctor = $1", doctors[i])
						if a == 1 {
							if berr := wrote.arrive(); berr != nil {
								return berr
							}
							if err == nil && i == 1 {
								// Commit after the first, while this
								// transaction was open all along.
								if berr := txWaitFor(firstDone); berr != nil {
									return berr
								}
							}
						}
						return err
					}
					errs[i] = RunTx(ctx, db, txSerializable, fn, TxOnRetry(func(attempt int, err error, wait time.Duration) {
						retryErrs[i] = append(retryErrs[i], fmt.Sprintf("attempt %d: %v (waited %v)", attempt, err, wait.Round(time.Microsecond)))
					}))
					if i == 0 {
						close(firstDone)
					}
				})
			}
			wg.Wait()
			onCall, err := pgtest.QueryValue[int](ctx, c, "select count(*) from "+table+" where on_call")
			if err != nil {
				t.Fatal(err)
			}
			total := attempts[0].Load() + attempts[1].Load()
			t.Logf("MEASURE write skew %s: attempts alice %d, bob %d; declined alice %v, bob %v; on call after: %d; errors %v, %v",
				name, attempts[0].Load(), attempts[1].Load(), declined[0].Load(), declined[1].Load(), onCall, errs[0], errs[1])
			for i := range 2 {
				for _, r := range retryErrs[i] {
					t.Logf("  %s retried after %s", doctors[i], r)
				}
				if errs[i] != nil {
					t.Errorf("%s: %v", doctors[i], errs[i])
				}
			}
			if onCall != 1 {
				t.Errorf("%d doctors on call, want 1: the invariant broke or nobody went off call", onCall)
			}
			if total < 3 {
				t.Errorf("%d attempts in all, want at least 3: no serialization failure, the transactions did not overlap", total)
			}
			for i := range 2 {
				for _, r := range retryErrs[i] {
					if !strings.Contains(r, "40001") {
						t.Errorf("%s retried on something else than 40001: %s", doctors[i], r)
					}
				}
			}
		})
	}
}

// TestRunTxDeadlock: two runners lock two rows in opposite orders; the
// server breaks the deadlock by failing one with 40P01; RunTx runs it again
// and both finish, each having added 1 to both rows exactly once.
func TestRunTxDeadlock(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	for _, name := range drivers {
		t.Run(name, func(t *testing.T) {
			table := freshTable(t, c, "trdead", name, "(id int primary key, v int not null)", "(1, 0), (2, 0)")
			db := openDB(t, name, c.DSN())
			locked := newTxBarrier(2)
			var attempts [2]atomic.Int32
			var retried [2]string
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for i := range 2 {
				wg.Go(func() {
					first, second := 1+i, 2-i
					fn := func(ctx context.Context, tx *sql.Tx) error {
						a := attempts[i].Add(1)
						// superuser: the test server is ours
						if _, err := tx.ExecContext(ctx, "set local deadlock_timeout = '100ms'"); err != nil {
							return err
						}
						if _, err := tx.ExecContext(ctx, "update "+table+" set v = v + 1 where id = $1", first); err != nil {
							return err
						}
						if a == 1 {
							if err := locked.arrive(); err != nil {
								return err
							}
						}
						_, err := tx.ExecContext(ctx, "update "+table+" set v = v + 1 where id = $1", second)
						return err
					}
					errs[i] = RunTx(ctx, db, nil, fn, TxOnRetry(func(_ int, err error, _ time.Duration) { retried[i] = err.Error() }))
				})
			}
			wg.Wait()
			sum, err := pgtest.QueryValue[int](ctx, c, "select sum(v) from "+table+" where v = 2")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("MEASURE deadlock %s: attempts %d and %d; errors %v, %v; retried on %q %q; rows at 2: sum %d",
				name, attempts[0].Load(), attempts[1].Load(), errs[0], errs[1], retried[0], retried[1], sum)
			for i := range 2 {
				if errs[i] != nil {
					t.Errorf("runner %d: %v", i, errs[i])
				}
				if retried[i] != "" && !strings.Contains(retried[i], "40P01") {
					t.Errorf("runner %d retried on %s, want 40P01", i, retried[i])
				}
			}
			if total := attempts[0].Load() + attempts[1].Load(); total != 3 {
				t.Errorf("%d attempts in all, want 3: one deadlock, one retry", total)
			}
			if sum != 4 {
				t.Errorf("rows do not both hold 2 (sum of those at 2: %d): an update was lost or doubled", sum)
			}
		})
	}
}

// TestRunTxCutDuringCommit resets the connection during COMMIT of the first
// attempt, in both ways: after COMMIT reached the server (it commits), and
// before (the proxy drops it: it does not; the client wrote it all the same,
// so the byte count cannot tell). RunTx reads the transaction id before
// COMMIT and asks the server afterwards: committed, it returns success
// without running fn again; not committed, it runs it again. Exactly one row
// either way, over either driver. With TxResolveCommit(false) it says the
// outcome is unknown and does not retry. A hand-written loop over raw pgx
// that retries on any error inserts the row twice.
func TestRunTxCutDuringCommit(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	insertOnce := func(p interface{ CutOn([]byte, bool) }, forward bool, table string, attempts *atomic.Int32) func(context.Context, *sql.Tx) error {
		return func(ctx context.Context, tx *sql.Tx) error {
			a := attempts.Add(1)
			if _, err := tx.ExecContext(ctx, "insert into "+table+" values (1)"); err != nil {
				return err
			}
			if a == 1 {
				p.CutOn([]byte("commit"), forward)
			}
			return nil
		}
	}
	for _, resolve := range []bool{true, false} {
		for _, forward := range []bool{true, false} {
			reached := map[bool]string{true: "reached the server", false: "dropped before the server"}[forward]
			for _, name := range drivers {
				t.Run(fmt.Sprintf("RunTx/resolve=%v/COMMIT %s/%s", resolve, reached, name), func(t *testing.T) {
					table := freshTable(t, c, "trcut", name, "(id int)", "")
					p := newProxy(t, c)
					db := openDB(t, name, c.DSNAt(p.Addr()))
					var attempts atomic.Int32
					start := time.Now()
					rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					defer cancel()
					err := RunTx(rctx, db, nil, insertOnce(p, forward, table, &attempts), TxBackoff(0, 0), TxResolveCommit(resolve))
					took := time.Since(start)
					if p.Armed() {
						t.Fatal("the cut did not happen: COMMIT was not seen")
					}
					want := 0
					if forward || resolve {
						want = 1
					}
					n, cerr := pollRows(ctx, c, table, want)
					if cerr != nil {
						t.Fatal(cerr)
					}
					time.Sleep(100 * time.Millisecond) // a retry, if any, would have committed by now
					if n2, _ := countRows(ctx, c, table); n2 != n {
						n = n2
					}
					t.Logf("MEASURE cut during COMMIT (%s), RunTx resolve=%v over %s: %d attempt(s), %d row(s), %v; error: %v",
						reached, resolve, name, attempts.Load(), n, took.Round(time.Millisecond), err)
					if n > 1 {
						t.Errorf("%d rows: the transaction ran twice", n)
					}
					if !resolve {
						wantConnLost(t, err)
						var re *RunTxError
						if !errors.As(err, &re) || !re.CommitUnknown || re.Attempts != 1 {
							t.Errorf("want a *RunTxError with CommitUnknown after 1 attempt, got %v", err)
						}
						if attempts.Load() != 1 {
							t.Errorf("%d attempts, want 1: a lost COMMIT was retried", attempts.Load())
						}
						return
					}
					wantAttempts := map[bool]int32{true: 1, false: 2}[forward]
					if err != nil || n != 1 || attempts.Load() != wantAttempts {
						t.Errorf("%v after %d attempts, %d rows; want success after %d, exactly 1 row", err, attempts.Load(), n, wantAttempts)
					}
					if cn, ok := ConnectorOf(db); ok {
						st := cn.Stats()
						want := [3]int64{0, 1, 0} // committed, aborted, unresolved
						if forward {
							want = [3]int64{1, 0, 0}
						}
						if got := [3]int64{st.ResolvedCommitted, st.ResolvedAborted, st.Unresolved}; got != want {
							t.Errorf("Stats resolved committed, aborted, unresolved = %v, want %v", got, want)
						}
					}
				})
			}
		}
	}
	t.Run("naive loop over pgx", func(t *testing.T) {
		table := freshTable(t, c, "trcut", "naive", "(id int)", "")
		p := newProxy(t, c)
		db := openDB(t, "pgx", c.DSNAt(p.Addr()))
		var attempts atomic.Int32
		fn := insertOnce(p, true, table, &attempts)
		var errs []string
		for range 3 { // retry on any error: what RunTx must not do
			tx, err := db.BeginTx(ctx, nil)
			if err == nil {
				if err = fn(ctx, tx); err == nil {
					err = tx.Commit()
				} else {
					_ = tx.Rollback()
				}
			}
			if err == nil {
				break
			}
			errs = append(errs, err.Error())
		}
		n, err := pollRows(ctx, c, table, 2)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("MEASURE cut during COMMIT, naive retry loop over pgx: %d attempt(s), %d row(s); errors: %q", attempts.Load(), n, errs)
		if n != 2 {
			t.Errorf("%d rows, want 2: the naive retry should have duplicated the committed transaction", n)
		}
	})
}

// TestRunTxCutInsideTx resets the connection right after the transaction's
// first statement, an insert, reached the server. The server rolls the
// transaction back with the session, so nothing committed: pgresilient says
// the loss happened inside the transaction (InTx, Op "exec") and RunTx runs
// it again; the row exists once. Raw pgx's error does not say where the
// connection was lost, so RunTx returns it, and the row does not exist.
func TestRunTxCutInsideTx(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	for _, name := range drivers {
		t.Run(name, func(t *testing.T) {
			table := freshTable(t, c, "trin", name, "(id int)", "")
			p := newProxy(t, c)
			db := openDB(t, name, c.DSNAt(p.Addr()))
			insert := "insert into " + table + " values (1)"
			var attempts atomic.Int32
			var first error
			err := RunTx(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
				if attempts.Add(1) == 1 {
					p.CutOn([]byte(insert), true) // the insert runs on the server; its reply is lost
				}
				_, err := tx.ExecContext(ctx, insert)
				return err
			}, TxBackoff(0, 0), TxOnRetry(func(_ int, err error, _ time.Duration) { first = err }))
			if p.Armed() {
				t.Fatal("the cut did not happen")
			}
			time.Sleep(200 * time.Millisecond) // the first backend, had it committed anything, would have by now
			n, cerr := countRows(ctx, c, table)
			if cerr != nil {
				t.Fatal(cerr)
			}
			t.Logf("MEASURE cut after the first statement, RunTx over %s: %d attempt(s), %d row(s); first attempt: %v; result: %v",
				name, attempts.Load(), n, first, err)
			switch name {
			case DriverName:
				if err != nil || attempts.Load() != 2 || n != 1 {
					t.Errorf("%v after %d attempts, %d rows; want success after 2 and exactly 1 row", err, attempts.Load(), n)
				}
				var de *DisconnectError
				if !errors.As(first, &de) || !de.InTx || de.Op != "exec" {
					t.Errorf("attempt 1: %v, want an in-transaction DisconnectError", first)
				}
			case "pgx":
				if err == nil || attempts.Load() != 1 || n != 0 {
					t.Errorf("%v after %d attempts, %d rows; want the error after 1 attempt, 0 rows", err, attempts.Load(), n)
				}
			}
		})
	}
}

// TestRunTxCutAtBegin resets the connection right after BEGIN reached the
// server. pgresilient reports it as safe and database/sql retries the BEGIN
// itself: RunTx sees one attempt. Raw pgx returns the error; RunTx retries
// it (a BEGIN commits nothing): two attempts.
func TestRunTxCutAtBegin(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	for _, name := range drivers {
		t.Run(name, func(t *testing.T) {
			table := freshTable(t, c, "trbegin", name, "(id int)", "")
			p := newProxy(t, c)
			db := openDB(t, name, c.DSNAt(p.Addr()))
			if err := db.Ping(); err != nil {
				t.Fatal(err)
			}
			fb := &txFlakyBeginner{db: db}
			p.CutOn([]byte("begin"), true)
			var first error
			err := RunTx(ctx, fb, nil, func(ctx context.Context, tx *sql.Tx) error {
				_, err := tx.ExecContext(ctx, "insert into "+table+" values (1)")
				return err
			}, TxBackoff(0, 0), TxOnRetry(func(_ int, err error, _ time.Duration) { first = err }))
			if p.Armed() {
				t.Fatal("the cut did not happen: BEGIN was not seen")
			}
			n, cerr := countRows(ctx, c, table)
			if cerr != nil {
				t.Fatal(cerr)
			}
			t.Logf("MEASURE cut after BEGIN, RunTx over %s: %d BEGIN call(s) by RunTx, %d row(s); retried after: %v; error: %v", name, fb.calls, n, first, err)
			if err != nil || n != 1 {
				t.Errorf("%v, %d rows; want success and 1 row", err, n)
			}
			want := map[string]int{DriverName: 1, "pgx": 2}[name]
			if fb.calls != want {
				t.Errorf("RunTx called BeginTx %d times, want %d", fb.calls, want)
			}
		})
	}
}

// TestRunTxConn: RunTx on a *sql.Conn retries a serialization failure on
// that same connection.
func TestRunTxConn(t *testing.T) {
	c := needCluster(t)
	ctx := context.Background()
	table := freshTable(t, c, "trconn", DriverName, "(id int)", "")
	db := openDB(t, DriverName, c.DSN())
	sc, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	var pids []int
	err = RunTx(ctx, sc, txSerializable, func(ctx context.Context, tx *sql.Tx) error {
		var pid int
		if err := tx.QueryRowContext(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
			return err
		}
		pids = append(pids, pid)
		if len(pids) == 1 {
			// A real 40001 from the server.
			_, err := tx.ExecContext(ctx, "do $$ begin raise exception 'conflict' using errcode = 'serialization_failure'; end $$")
			return err
		}
		_, err := tx.ExecContext(ctx, "insert into "+table+" values (1)")
		return err
	})
	n, cerr := countRows(ctx, c, table)
	if cerr != nil {
		t.Fatal(cerr)
	}
	t.Logf("MEASURE *sql.Conn: backends %v, %d row(s), error %v", pids, n, err)
	if err != nil || len(pids) != 2 || pids[0] != pids[1] || n != 1 {
		t.Errorf("%v, backends %v, %d rows; want success after 2 attempts on one connection, 1 row", err, pids, n)
	}
}

// TestRunTxDeadlineInsideTx: the caller's deadline fires during a statement
// inside the transaction. The server cancels the statement (ErrCanceled,
// matching the caller's DeadlineExceeded): RunTx stops after that attempt,
// says nothing of an unknown COMMIT, and the insert before it is not
// committed.
func TestRunTxDeadlineInsideTx(t *testing.T) {
	c := needCluster(t)
	table := freshTable(t, c, "trdl", DriverName, "(id int)", "")
	db := openDB(t, DriverName, c.DSN())
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var attempts atomic.Int32
	err := RunTx(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
		attempts.Add(1)
		if _, err := tx.ExecContext(ctx, "insert into "+table+" values (1)"); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "select pg_sleep(5)")
		return err
	})
	time.Sleep(200 * time.Millisecond) // the backend, cancelled or not, is gone or rolled back by now
	n, cerr := countRows(context.Background(), c, table)
	if cerr != nil {
		t.Fatal(cerr)
	}
	t.Logf("MEASURE deadline inside the transaction: %d attempt(s), %d row(s); error: %v", attempts.Load(), n, err)
	var re *RunTxError
	if errors.As(err, &re) && re.CommitUnknown || attempts.Load() != 1 ||
		!errors.Is(err, ErrCanceled) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrConnLost) {
		t.Errorf("%d attempt(s): want 1, stopped with ErrCanceled and DeadlineExceeded, no unknown COMMIT; got %v", attempts.Load(), err)
	}
	if n != 0 {
		t.Errorf("%d rows committed", n)
	}
}
