package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5/pgconn"
)

var (
	txSerializationFailure = &pgconn.PgError{Severity: "ERROR", Code: "40001", Message: "could not serialize access due to read/write dependencies among transactions"}
	txDeadlockDetected     = &pgconn.PgError{Severity: "ERROR", Code: "40P01", Message: "deadlock detected"}
	errTxBusiness          = errors.New("insufficient funds")
)

// txNoWait makes RunTx retry at once: the unit tests measure no time.
var txNoWait = TxBackoff(0, 0)

// TestRunTxRetryable is the classification table.
func TestRunTxRetryable(t *testing.T) {
	inTx := &DisconnectError{Op: OpExec, InTx: true, Err: io.EOF}
	tests := []struct {
		name   string
		stage  txStage
		err    error
		pinned bool
		want   bool
	}{
		{"40001 from a statement", txStageFn, txSerializationFailure, false, true},
		{"40001 wrapped by fn", txStageFn, fmt.Errorf("transfer: %w", txSerializationFailure), false, true},
		{"40001 inside TxAbortedError", txStageCommit, &TxAbortedError{Err: txSerializationFailure}, false, true},
		{"40P01 at commit", txStageCommit, txDeadlockDetected, false, true},
		{"40001 on a *sql.Conn", txStageFn, txSerializationFailure, true, true},
		{"unique violation", txStageFn, uniqueViolation, false, false},
		{"40003 completion unknown", txStageCommit, &pgconn.PgError{Code: "40003"}, false, false},
		{"bare 25006 read only", txStageFn, &pgconn.PgError{Code: "25006"}, false, false},
		{"server changed role", txStageFn, &RoleChangedError{Op: OpExec, InTx: true, Err: &pgconn.PgError{Code: "25006"}}, false, true},
		{"server changed role, in Commit's TxAbortedError", txStageCommit, &TxAbortedError{Err: &RoleChangedError{Op: OpExec, InTx: true, Err: &pgconn.PgError{Code: "25006"}}}, false, true},
		{"fn's own error", txStageFn, errTxBusiness, false, false},
		{"lost inside the transaction", txStageFn, inTx, false, true},
		{"lost inside the transaction, wrapped", txStageFn, fmt.Errorf("step 2: %w", inTx), false, true},
		{"lost inside the transaction, *sql.Conn", txStageFn, inTx, true, false},
		{"lost outside the transaction (fn used the pool)", txStageFn, &DisconnectError{Op: OpExec, Err: io.EOF}, false, false},
		{"safe, outside the transaction", txStageFn, &DisconnectError{Op: OpExec, safe: true, Err: io.EOF}, false, true},
		{"another transaction's commit lost", txStageFn, &DisconnectError{Op: "commit", InTx: true, Err: io.EOF}, false, false},
		{"another driver's EOF in fn", txStageFn, io.EOF, false, false},
		{"another driver's ErrBadConn in fn", txStageFn, driver.ErrBadConn, false, false},
		{"begin: safe disconnect", txStageBegin, &DisconnectError{Op: OpBegin, safe: true, Err: io.EOF}, false, true},
		{"begin: ErrBadConn", txStageBegin, driver.ErrBadConn, false, true},
		{"begin: another driver's EOF", txStageBegin, fmt.Errorf("begin: %w", io.ErrUnexpectedEOF), false, true},
		{"begin: on a *sql.Conn", txStageBegin, driver.ErrBadConn, true, false},
		{"begin: circuit open", txStageBegin, &CircuitOpenError{}, false, false},
		{"begin: connect failed", txStageBegin, &ConnectError{Attempts: 4, Err: io.EOF}, false, false},
		{"begin: pgx could not connect", txStageBegin, fmt.Errorf("x: %w", &pgconn.ConnectError{}), false, false},
		{"begin: the server shut down", txStageBegin, &pgconn.PgError{Severity: "FATAL", Code: "57P01"}, false, true},
		{"fn: circuit open", txStageFn, &CircuitOpenError{}, false, false},
		{"commit: lost", txStageCommit, &DisconnectError{Op: "commit", InTx: true, Err: io.EOF}, false, false},
		{"commit: not committed", txStageCommit, &DisconnectError{Op: "commit", InTx: true, notCommitted: true, Err: io.EOF}, false, true},
		{"commit: not committed, wrapped", txStageCommit, fmt.Errorf("x: %w", &DisconnectError{Op: "commit", InTx: true, notCommitted: true, Err: io.EOF}), false, true},
		{"commit: not committed, *sql.Conn", txStageCommit, &DisconnectError{Op: "commit", InTx: true, notCommitted: true, Err: io.EOF}, true, false},
		{"commit: another driver's ErrBadConn", txStageCommit, driver.ErrBadConn, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := txRetryable(tt.stage, tt.err, tt.pinned); got != tt.want {
				t.Errorf("txRetryable(%d, %v, pinned %v) = %v, want %v", tt.stage, tt.err, tt.pinned, got, tt.want)
			}
		})
	}
	for _, err := range []error{
		&DisconnectError{Op: "commit", InTx: true, Err: io.EOF},
		driver.ErrBadConn, io.ErrUnexpectedEOF, pgconn.ErrConnClosed,
	} {
		if !txCommitUnknown(err) {
			t.Errorf("txCommitUnknown(%v) = false", err)
		}
	}
	for _, err := range []error{txSerializationFailure, &TxAbortedError{Err: uniqueViolation}, errors.New("x"),
		&DisconnectError{Op: "commit", InTx: true, notCommitted: true, Err: io.EOF},
		&DisconnectError{Op: "commit", InTx: true, notCommitted: true, Err: driver.ErrBadConn}} {
		if txCommitUnknown(err) {
			t.Errorf("txCommitUnknown(%v) = true", err)
		}
	}
}

// txCountAttempts returns fn wrapped to count its calls in n.
func txCountAttempts(n *atomic.Int32, fn func(context.Context, *sql.Tx, int) error) func(context.Context, *sql.Tx) error {
	return func(ctx context.Context, tx *sql.Tx) error {
		return fn(ctx, tx, int(n.Add(1)))
	}
}

// TestRunTxMock scripts RunTx's round trips with go-sqlmock: every
// expectation listed is one RunTx must use, and no other.
func TestRunTxMock(t *testing.T) {
	ctx := context.Background()
	exec := func(ctx context.Context, tx *sql.Tx, _ int) error {
		_, err := tx.ExecContext(ctx, "update accounts set balance = balance - 1")
		return err
	}

	t.Run("40001 from a statement is retried", func(t *testing.T) {
		db, mock, _ := openMock(t, "breaker=off")
		mock.ExpectBegin()
		mock.ExpectExec("update").WillReturnError(txSerializationFailure)
		mock.ExpectRollback() // pgresilient's automatic rollback
		mock.ExpectBegin()
		mock.ExpectExec("update").WillReturnResult(sqlmock.NewResult(0, 1))
		mock.ExpectCommit()
		var n atomic.Int32
		var retries []string
		err := RunTx(ctx, db, nil, txCountAttempts(&n, exec), txNoWait, TxOnRetry(func(attempt int, err error, wait time.Duration) {
			retries = append(retries, fmt.Sprintf("%d: %v (wait %v)", attempt, err, wait))
		}))
		if err != nil {
			t.Fatal(err)
		}
		if n.Load() != 2 || len(retries) != 1 || !strings.HasPrefix(retries[0], "1: ") {
			t.Errorf("%d attempts, retries %q; want 2 attempts, one retry after attempt 1", n.Load(), retries)
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("40P01 at commit is retried", func(t *testing.T) {
		db, mock, _ := openMock(t, "breaker=off")
		mock.ExpectBegin()
		mock.ExpectExec("update").WillReturnResult(sqlmock.NewResult(0, 1))
		mock.ExpectCommit().WillReturnError(txDeadlockDetected)
		mock.ExpectBegin()
		mock.ExpectExec("update").WillReturnResult(sqlmock.NewResult(0, 1))
		mock.ExpectCommit()
		var n atomic.Int32
		if err := RunTx(ctx, db, nil, txCountAttempts(&n, exec), txNoWait); err != nil {
			t.Fatal(err)
		}
		if n.Load() != 2 {
			t.Errorf("%d attempts, want 2", n.Load())
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("40001 swallowed by fn is retried from COMMIT's ErrTxAborted", func(t *testing.T) {
		db, mock, _ := openMock(t, "breaker=off")
		mock.ExpectBegin()
		mock.ExpectExec("update").WillReturnError(txSerializationFailure)
		mock.ExpectRollback()
		mock.ExpectBegin()
		mock.ExpectExec("update").WillReturnResult(sqlmock.NewResult(0, 1))
		mock.ExpectCommit()
		var n atomic.Int32
		err := RunTx(ctx, db, nil, txCountAttempts(&n, func(ctx context.Context, tx *sql.Tx, a int) error {
			_ = exec(ctx, tx, a) // a careless fn
			return nil
		}), txNoWait)
		if err != nil || n.Load() != 2 {
			t.Fatalf("%v after %d attempts, want success after 2", err, n.Load())
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a lost COMMIT is not retried", func(t *testing.T) {
		db, mock, _ := openMock(t, "breaker=off")
		mock.ExpectBegin()
		mock.ExpectExec("update").WillReturnResult(sqlmock.NewResult(0, 1))
		mock.ExpectCommit().WillReturnError(io.ErrUnexpectedEOF)
		var n atomic.Int32
		err := RunTx(ctx, db, nil, txCountAttempts(&n, exec), txNoWait)
		wantConnLost(t, err)
		var re *RunTxError
		if !errors.As(err, &re) || !re.CommitUnknown || re.Attempts != 1 {
			t.Fatalf("want a *RunTxError with CommitUnknown after 1 attempt, got %#v", err)
		}
		var de *DisconnectError
		if !errors.As(err, &de) || de.Op != "commit" || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("the cause is not reachable: %v", err)
		}
		if !strings.Contains(err.Error(), "may have committed") || !strings.Contains(err.Error(), "not retried") {
			t.Errorf("message %q does not say it may have committed and was not retried", err)
		}
		if n.Load() != 1 {
			t.Errorf("%d attempts, want 1", n.Load())
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a connection lost inside the transaction is retried", func(t *testing.T) {
		db, mock, _ := openMock(t, "breaker=off")
		hold := holdConns(t, db, 1) // keeps the mock's DSN open while the broken conn closes
		defer releaseConns(hold)
		mock.ExpectBegin()
		mock.ExpectExec("update").WillReturnError(io.EOF)
		// no ROLLBACK: the connection is gone, the server rolls back
		mock.ExpectBegin()
		mock.ExpectExec("update").WillReturnResult(sqlmock.NewResult(0, 1))
		mock.ExpectCommit()
		var n atomic.Int32
		var first error
		err := RunTx(ctx, db, nil, txCountAttempts(&n, exec), txNoWait, TxOnRetry(func(_ int, err error, _ time.Duration) { first = err }))
		if err != nil || n.Load() != 2 {
			t.Fatalf("%v after %d attempts, want success after 2", err, n.Load())
		}
		var de *DisconnectError
		if !errors.As(first, &de) || !de.InTx || de.Op != "exec" || de.safe {
			t.Errorf("attempt 1 failed with %v, want an unsafe in-transaction DisconnectError", first)
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("on a *sql.Conn a lost connection is not retried", func(t *testing.T) {
		db, mock, _ := openMock(t, "breaker=off")
		sc, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		mock.ExpectBegin()
		mock.ExpectExec("update").WillReturnError(io.EOF)
		var n atomic.Int32
		err = RunTx(ctx, sc, nil, txCountAttempts(&n, exec), txNoWait)
		var de *DisconnectError
		if !errors.As(err, &de) || !de.InTx || n.Load() != 1 {
			t.Fatalf("%v after %d attempts, want the DisconnectError after 1", err, n.Load())
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("fn's error is returned unchanged, rolled back", func(t *testing.T) {
		db, mock, _ := openMock(t, "breaker=off")
		mock.ExpectBegin()
		mock.ExpectExec("update").WillReturnResult(sqlmock.NewResult(0, 1))
		mock.ExpectRollback()
		var n atomic.Int32
		err := RunTx(ctx, db, nil, txCountAttempts(&n, func(ctx context.Context, tx *sql.Tx, a int) error {
			if err := exec(ctx, tx, a); err != nil {
				return err
			}
			return errTxBusiness
		}), txNoWait)
		if err != errTxBusiness || n.Load() != 1 { //nolint:errorlint // unchanged means the same value
			t.Fatalf("%v after %d attempts, want errTxBusiness itself after 1", err, n.Load())
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a non-retryable error after a retry is returned unchanged", func(t *testing.T) {
		db, mock, _ := openMock(t, "breaker=off")
		mock.ExpectBegin()
		mock.ExpectExec("update").WillReturnError(txSerializationFailure)
		mock.ExpectRollback()
		mock.ExpectBegin()
		mock.ExpectExec("update").WillReturnError(uniqueViolation)
		mock.ExpectRollback()
		var n atomic.Int32
		err := RunTx(ctx, db, nil, txCountAttempts(&n, exec), txNoWait)
		if err != error(uniqueViolation) || n.Load() != 2 { //nolint:errorlint // unchanged means the same value
			t.Fatalf("%v after %d attempts, want the unique violation itself after 2", err, n.Load())
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("attempts exhausted", func(t *testing.T) {
		db, mock, _ := openMock(t, "breaker=off")
		for range 3 {
			mock.ExpectBegin()
			mock.ExpectExec("update").WillReturnError(txSerializationFailure)
			mock.ExpectRollback()
		}
		var n atomic.Int32
		err := RunTx(ctx, db, nil, txCountAttempts(&n, exec), txNoWait, TxMaxAttempts(3))
		var re *RunTxError
		if !errors.As(err, &re) || re.Attempts != 3 || re.CommitUnknown || n.Load() != 3 {
			t.Fatalf("%v after %d attempts, want a *RunTxError after 3", err, n.Load())
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "40001" || errors.Is(err, ErrConnLost) {
			t.Errorf("want the last 40001 reachable, and no ErrConnLost: %v", err)
		}
		if !strings.Contains(err.Error(), "after 3 attempts") {
			t.Errorf("message %q does not count the attempts", err)
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("fn panics: rolled back, the panic goes on", func(t *testing.T) {
		db, mock, _ := openMock(t, "breaker=off")
		mock.ExpectBegin()
		mock.ExpectRollback()
		boom := errors.New("boom")
		func() {
			defer func() {
				if p := recover(); p != boom { //nolint:errorlint // the panic value itself
					t.Errorf("recovered %v, want the panic value boom", p)
				}
			}()
			_ = RunTx(ctx, db, nil, func(context.Context, *sql.Tx) error { panic(boom) }, txNoWait)
			t.Error("RunTx returned: the panic was swallowed")
		}()
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
		if n := db.Stats().InUse; n != 0 {
			t.Errorf("%d connections in use after the panic", n)
		}
	})

	for _, end := range []string{"commits", "rolls back"} {
		t.Run("fn "+end+" the transaction itself", func(t *testing.T) {
			db, mock, _ := openMock(t, "breaker=off")
			mock.ExpectBegin()
			if end == "commits" {
				mock.ExpectCommit()
			} else {
				mock.ExpectRollback()
			}
			var n atomic.Int32
			err := RunTx(ctx, db, nil, txCountAttempts(&n, func(_ context.Context, tx *sql.Tx, _ int) error {
				if end == "commits" {
					return tx.Commit()
				}
				return tx.Rollback()
			}), txNoWait)
			if !errors.Is(err, sql.ErrTxDone) || !strings.Contains(err.Error(), "itself") || n.Load() != 1 {
				t.Fatalf("%v after %d attempts, want sql.ErrTxDone explained, after 1", err, n.Load())
			}
			if err := mock.ExpectationsWereMet(); err != nil {
				t.Fatal(err)
			}
		})
	}

	t.Run("a context already done runs nothing", func(t *testing.T) {
		db, mock, _ := openMock(t, "breaker=off")
		done, cancel := context.WithCancel(ctx)
		cancel()
		called := false
		err := RunTx(done, db, nil, func(context.Context, *sql.Tx) error { called = true; return nil })
		if err != context.Canceled || called { //nolint:errorlint // ctx.Err() itself
			t.Fatalf("err %v, fn called %v; want context.Canceled and no call", err, called)
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the context ends before COMMIT", func(t *testing.T) {
		db, mock, _ := openMock(t, "breaker=off")
		mock.ExpectBegin()
		mock.ExpectRollback()
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		err := RunTx(cctx, db, nil, func(context.Context, *sql.Tx) error { cancel(); return nil }, txNoWait)
		if err != context.Canceled { //nolint:errorlint // ctx.Err() itself
			t.Fatalf("want context.Canceled, got %v", err)
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the context ends during the wait", func(t *testing.T) {
		db, mock, _ := openMock(t, "breaker=off")
		mock.ExpectBegin()
		mock.ExpectExec("update").WillReturnError(txSerializationFailure)
		mock.ExpectRollback()
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var n atomic.Int32
		err := RunTx(cctx, db, nil, txCountAttempts(&n, exec), TxBackoff(time.Hour, time.Hour),
			TxOnRetry(func(int, error, time.Duration) { cancel() }))
		var re *RunTxError
		if !errors.As(err, &re) || re.Attempts != 1 || !errors.Is(err, context.Canceled) || !errors.Is(err, txSerializationFailure) {
			t.Fatalf("want a *RunTxError after 1 attempt matching context.Canceled and the 40001, got %v", err)
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("no wait past the deadline", func(t *testing.T) {
		db, mock, _ := openMock(t, "breaker=off")
		mock.ExpectBegin()
		mock.ExpectExec("update").WillReturnError(txSerializationFailure)
		mock.ExpectRollback()
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		began := time.Now()
		// A wait drawn from [0, 24h]: far past the deadline but for a
		// chance of 3.5e-4.
		err := RunTx(dctx, db, nil, txIgnoreAttempt(exec), TxBackoff(24*time.Hour, 24*time.Hour))
		var re *RunTxError
		if !errors.As(err, &re) || re.Attempts != 1 || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "deadline") {
			t.Fatalf("want a *RunTxError after 1 attempt matching DeadlineExceeded, got %v", err)
		}
		if took := time.Since(began); took > 10*time.Second {
			t.Errorf("RunTx waited %v", took)
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Fatal(err)
		}
	})
}

// txIgnoreAttempt drops the attempt number.
func txIgnoreAttempt(fn func(context.Context, *sql.Tx, int) error) func(context.Context, *sql.Tx) error {
	return func(ctx context.Context, tx *sql.Tx) error { return fn(ctx, tx, 0) }
}

// txFlakyBeginner fails its first BeginTx calls with errs, then begins on db.
type txFlakyBeginner struct {
	db    TxBeginner
	errs  []error
	calls int
}

func (f *txFlakyBeginner) BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error) {
	f.calls++
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		return nil, err
	}
	return f.db.BeginTx(ctx, opts)
}

// TestRunTxBegin: which failed BEGINs are retried.
func TestRunTxBegin(t *testing.T) {
	ctx := context.Background()
	circuitOpen := &CircuitOpenError{NextProbe: time.Now().Add(time.Second)}
	connectFailed := &ConnectError{Attempts: 4, Err: io.EOF}
	for _, tt := range []struct {
		name    string
		err     error
		retried bool
	}{
		{"safe disconnect", &DisconnectError{Op: OpBegin, safe: true, Err: io.EOF}, true},
		{"driver.ErrBadConn", driver.ErrBadConn, true},
		{"circuit open", circuitOpen, false},
		{"connect failed", connectFailed, false},
		{"an SQL error", &pgconn.PgError{Code: "25001"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			db, mock, _ := openMock(t, "breaker=off")
			if tt.retried {
				mock.ExpectBegin()
				mock.ExpectCommit()
			}
			fb := &txFlakyBeginner{db: db, errs: []error{tt.err}}
			err := RunTx(ctx, fb, nil, func(context.Context, *sql.Tx) error { return nil }, txNoWait)
			if tt.retried {
				if err != nil || fb.calls != 2 {
					t.Errorf("%v after %d BEGINs, want success after 2", err, fb.calls)
				}
			} else if err != tt.err || fb.calls != 1 { //nolint:errorlint // unchanged means the same value
				t.Errorf("%v after %d BEGINs, want %v unchanged after 1", err, fb.calls, tt.err)
			}
			if err := mock.ExpectationsWereMet(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRunTxOptions: the defaults, and what out-of-range values become.
func TestRunTxOptions(t *testing.T) {
	c := runTxConfig{maxAttempts: DefaultTxMaxAttempts, base: DefaultTxBackoff, max: DefaultTxBackoffMax}
	TxMaxAttempts(0)(&c)
	TxBackoff(-time.Second, -time.Second)(&c)
	if c.maxAttempts != 1 || c.base != 0 || c.max != 0 {
		t.Errorf("clamped config %+v", c)
	}
	TxBackoff(time.Second, time.Millisecond)(&c)
	if c.base != time.Second || c.max != time.Second {
		t.Errorf("max below base: %+v", c)
	}
}
