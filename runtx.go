package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// TxBeginner is what RunTx begins its transactions on. *sql.DB and *sql.Conn
// satisfy it.
type TxBeginner interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// The defaults of RunTx's options.
const (
	DefaultTxMaxAttempts = 5                      // TxMaxAttempts: the first attempt and up to 4 retries
	DefaultTxBackoff     = 10 * time.Millisecond  // TxBackoff's base: the ceiling of the first wait
	DefaultTxBackoffMax  = 500 * time.Millisecond // TxBackoff's max: the ceiling of every wait
)

// RunTxOption configures one call of RunTx.
type RunTxOption func(*runTxConfig)

type runTxConfig struct {
	maxAttempts int
	base, max   time.Duration
	onRetry     func(attempt int, err error, wait time.Duration)
	noResolve   bool
}

// TxResolveCommit sets whether RunTx, running on a *sql.DB, reads each
// attempt's transaction id before COMMIT (ReadTxID: one round trip) and, when
// COMMIT's outcome is lost, asks the server what became of it
// (ResolveCommit) instead of returning CommitUnknown at once. On by default;
// it never applies on a *sql.Conn (its connection is gone with the COMMIT)
// nor to a read-only transaction (TxOptions.ReadOnly: nothing to commit).
func TxResolveCommit(on bool) RunTxOption {
	return func(c *runTxConfig) { c.noResolve = !on }
}

// TxMaxAttempts sets how many times RunTx runs the transaction at most, the
// first attempt included (default DefaultTxMaxAttempts). n < 1 counts as 1:
// no retry.
func TxMaxAttempts(n int) RunTxOption {
	return func(c *runTxConfig) { c.maxAttempts = max(n, 1) }
}

// TxBackoff sets the wait before each retry: full jitter, a uniform random
// duration in [0, min(max, base·2ⁿ)] before retry n+1 (defaults
// DefaultTxBackoff and DefaultTxBackoffMax). A base of 0 retries at once; a
// max below base is raised to base.
func TxBackoff(base, max time.Duration) RunTxOption {
	return func(c *runTxConfig) {
		c.base = base
		if c.base < 0 {
			c.base = 0
		}
		c.max = max
		if c.max < c.base {
			c.max = c.base
		}
	}
}

// TxOnRetry sets a function RunTx calls before each retry, with the attempt
// that failed (1 for the first), its error and the wait before the next one:
// for logging or a metric. It runs on RunTx's goroutine.
func TxOnRetry(fn func(attempt int, err error, wait time.Duration)) RunTxOption {
	return func(c *runTxConfig) { c.onRetry = fn }
}

// RunTxError is returned by RunTx when it stopped on an error it would
// otherwise retry, or when COMMIT's outcome is unknown. Err is the last
// attempt's error; errors.Is and errors.As see through to it.
//
// Without CommitUnknown, no attempt committed, even when the error also
// matches ErrConnLost: the last attempt then lost its connection inside the
// transaction (its context ended during a statement, say), which the server
// rolled back.
type RunTxError struct {
	// Attempts is how many times the transaction was tried (a failed BEGIN
	// counts), the last one included.
	Attempts int
	// CommitUnknown: the connection was lost after COMMIT was sent, so the
	// last attempt may have committed, and asking the server did not tell
	// (the error then also matches *UnresolvedError, which says why) or was
	// not possible. RunTx does not retry it. The error then matches
	// ErrConnLost (and never driver.ErrBadConn).
	CommitUnknown bool
	// Err is the last attempt's error.
	Err error

	// stop is why RunTx stopped before its maximum of attempts: the
	// context's error, or context.DeadlineExceeded when the deadline would
	// pass before the next attempt was due. nil otherwise.
	stop error
	// early: the deadline had not passed yet, but would have during the
	// wait.
	early bool
	// unresolved: with CommitUnknown, why asking the server did not tell
	// (an *UnresolvedError); nil if it was not asked.
	unresolved error
}

func (e *RunTxError) Error() string {
	n := strconv.Itoa(e.Attempts) + " attempts"
	if e.Attempts == 1 {
		n = "1 attempt"
	}
	switch {
	case e.CommitUnknown && e.unresolved != nil:
		return "pgresilient: RunTx: connection lost during COMMIT of attempt " + strconv.Itoa(e.Attempts) +
			": the transaction may have committed, and was not retried: " + errString(e.Err) + "; " + e.unresolved.Error()
	case e.CommitUnknown:
		return "pgresilient: RunTx: connection lost during COMMIT of attempt " + strconv.Itoa(e.Attempts) +
			": the transaction may have committed, and was not retried: " + errString(e.Err)
	case e.early:
		return "pgresilient: RunTx: gave up after " + n +
			": the context's deadline comes before the next attempt is due: " + errString(e.Err)
	case e.stop != nil:
		return "pgresilient: RunTx: gave up after " + n + ": " + e.stop.Error() + ": " + errString(e.Err)
	}
	return "pgresilient: RunTx: gave up after " + n + " (the maximum): " + errString(e.Err)
}

// Unwrap returns the last attempt's error, ErrConnLost when COMMIT's outcome
// is unknown, and the context's error when the context ended (or its deadline
// left no time) before the next attempt. Like DisconnectError, an unknown
// COMMIT never matches driver.ErrBadConn, even when another driver's error
// says so: the cause is then kept as text only.
func (e *RunTxError) Unwrap() []error {
	if e.CommitUnknown {
		errs := []error{ErrConnLost}
		if !errors.Is(e.Err, driver.ErrBadConn) {
			errs = append(errs, e.Err)
		}
		if e.unresolved != nil {
			errs = append(errs, e.unresolved)
		}
		return errs
	}
	if e.stop != nil {
		return []error{e.Err, e.stop}
	}
	return []error{e.Err}
}

// fnEndedTxMsg begins the error, wrapping sql.ErrTxDone, that RunTx returns
// when fn committed or rolled back the transaction itself.
const fnEndedTxMsg = "pgresilient: RunTx: fn committed or rolled back the transaction itself " +
	"(its work is committed or not, depending on which); RunTx commits, or rolls back when fn returns an error"

// RunTx runs fn in a transaction begun on db with opts and commits it; when
// the attempt failed in a way that certainly did not commit and may succeed
// if run again, it runs the whole transaction again (BEGIN, fn, COMMIT), after
// a backoff with full jitter, up to TxMaxAttempts times, never starting a
// wait that would end past ctx's deadline. fn must do its work through tx and
// be safe to run more than once: only its work in the database is rolled
// back between attempts.
//
// It retries:
//
//   - a serialization failure (SQLSTATE 40001) or a deadlock (40P01) from any
//     statement or from COMMIT, found with errors.As (also inside a
//     TxAbortedError, when fn went on after the failure);
//   - a connection lost inside the transaction before COMMIT (a
//     *DisconnectError with InTx and Op other than "commit"): the server
//     rolls back an open transaction when its session ends, so nothing of the
//     attempt committed. On a *sql.Conn this is not retried: its connection
//     is gone;
//   - a *DisconnectError that says nothing was done (it matches
//     driver.ErrBadConn);
//   - ErrRoleChanged: a server that changed role refused a statement of the
//     transaction; nothing of it committed, and the next attempt's
//     connection goes where target_session_attrs says;
//   - a BEGIN that failed with a lost connection or driver.ErrBadConn, from
//     any driver: a transaction cannot commit without COMMIT;
//   - a COMMIT that lost its connection but certainly did not commit
//     (ErrNotCommitted: no byte of it was written, the server refused it
//     with a FATAL such as 57P01 before running it, or the connection was
//     broken before it). Not on a *sql.Conn.
//
// When the connection was lost after COMMIT was sent, and db is a *sql.DB
// (TxResolveCommit, on by default), it asks the database what became of the
// attempt: it read the transaction's id before COMMIT (ReadTxID, one round
// trip) and looks it up (ResolveCommit) within ctx, on the primary the pool
// reaches. Committed: RunTx returns nil, and fn is not run again. Not
// committed: it runs the transaction again, as for any failure above.
// Otherwise (no answer before ctx ends, only a standby answers, still in
// progress, or the answer could be about another transaction after a crash
// or a failover) and on a *sql.Conn, it never retries: it returns a
// *RunTxError with CommitUnknown, matching ErrConnLost, saying the
// transaction may have committed, and why asking did not tell. It does not retry ErrCircuitOpen or a
// connection that could not be opened (*ConnectError): the breaker and the
// connector already decide how hard to knock on a database that is down.
//
// Errors:
//
//   - ctx already done: nothing is run, ctx.Err() is returned; ctx ended
//     once fn returned, before COMMIT was sent: rolled back, ctx.Err();
//   - an error that is not retried (fn's own, an SQL error, ErrCircuitOpen):
//     the transaction is rolled back and the error returned unchanged;
//   - the last attempt failed, or the context ended or its deadline left no
//     time for another: a *RunTxError with Attempts, wrapping the last error
//     (and the context's);
//   - fn committed or rolled back tx itself: an error matching sql.ErrTxDone
//     that says so;
//   - fn panics: the transaction is rolled back and the panic goes on.
//
// Why a connection lost inside the transaction is safe to retry: only a
// COMMIT the client sends ends a transaction block with a commit; when the
// session ends first (a reset, a terminated backend, a query_timeout that
// closed the connection), the server aborts the open transaction, whatever
// its statements did. A statement that reached the server and ran is rolled
// back with the rest. That holds for the transaction only: fn must not send
// COMMIT (or END) as SQL, alone or inside a multi-statement string, and its
// work outside the transaction (through the pool instead of tx, dblink,
// anything outside the database) is not rolled back. And the old session may
// outlive the loss for a while: a backend that has not noticed it yet keeps
// its locks, so the retry may wait on them (a reset is seen at once; a silent
// network only after TCP keepalives or the server's timeouts).
//
// Over a driver other than pgresilient (raw pgx stdlib, say), RunTx retries
// serialization failures, deadlocks and failed BEGINs only: no other
// driver's errors say whether the connection was lost inside a transaction,
// and a lost COMMIT is still never retried.
func RunTx(ctx context.Context, db TxBeginner, opts *sql.TxOptions, fn func(ctx context.Context, tx *sql.Tx) error, ropts ...RunTxOption) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cfg := runTxConfig{maxAttempts: DefaultTxMaxAttempts, base: DefaultTxBackoff, max: DefaultTxBackoffMax}
	for _, o := range ropts {
		o(&cfg)
	}
	_, pinned := db.(*sql.Conn)
	pool, _ := db.(*sql.DB)
	if cfg.noResolve || opts != nil && opts.ReadOnly {
		pool = nil
	}
	for attempt := 1; ; attempt++ {
		stage, id, err := runTxOnce(ctx, db, opts, fn, pool != nil)
		if err == nil {
			return nil
		}
		resolved := false // asked the server: the attempt did not commit
		if stage == txStageCommit && id != nil && txCommitUnknown(err) {
			committed, rerr := ResolveCommit(ctx, pool, *id)
			switch {
			case rerr != nil:
				return &RunTxError{Attempts: attempt, CommitUnknown: true, Err: err, unresolved: rerr}
			case committed:
				return nil
			}
			err = &resolvedNotCommitted{xid: id.xid, cause: err}
			resolved = true
		}
		if stage == txStageCommit && !resolved {
			switch {
			case errors.Is(err, sql.ErrTxDone):
				if cerr := ctx.Err(); cerr != nil {
					// database/sql rolled the transaction back when the
					// context ended, before COMMIT was sent.
					return cerr
				}
				return fmt.Errorf("%s: %w", fnEndedTxMsg, err)
			case err == context.Canceled || err == context.DeadlineExceeded: //nolint:errorlint // database/sql's own bare refusal to send COMMIT
				return err
			case txCommitUnknown(err):
				return &RunTxError{Attempts: attempt, CommitUnknown: true, Err: err}
			}
		}
		if !resolved && !txRetryable(stage, err, pinned) {
			return err
		}
		if attempt >= cfg.maxAttempts {
			return &RunTxError{Attempts: attempt, Err: err}
		}
		if cerr := ctx.Err(); cerr != nil {
			return &RunTxError{Attempts: attempt, Err: err, stop: cerr}
		}
		wait := backoff(attempt-1, cfg.base, cfg.max)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= wait {
			return &RunTxError{Attempts: attempt, Err: err, stop: context.DeadlineExceeded, early: true}
		}
		if cfg.onRetry != nil {
			cfg.onRetry(attempt, err, wait)
		}
		if cerr := txSleep(ctx, wait); cerr != nil {
			return &RunTxError{Attempts: attempt, Err: err, stop: cerr}
		}
	}
}

// txStage is how far an attempt got.
type txStage uint8

const (
	txStageBegin  txStage = iota // BEGIN failed
	txStageFn                    // fn failed, or the context ended before COMMIT
	txStageCommit                // COMMIT failed
)

// runTxOnce is one attempt: BEGIN, fn, COMMIT; with readID, the
// transaction id is read (ReadTxID) between fn and COMMIT.
func runTxOnce(ctx context.Context, db TxBeginner, opts *sql.TxOptions, fn func(context.Context, *sql.Tx) error, readID bool) (txStage, *TxID, error) {
	tx, err := db.BeginTx(ctx, opts)
	if err != nil {
		return txStageBegin, nil, err
	}
	returned := false
	defer func() {
		if !returned {
			// fn panicked (or called runtime.Goexit): roll back, and the
			// panic goes on with its own stack.
			_ = tx.Rollback()
		}
	}()
	err = fn(ctx, tx)
	returned = true
	if err != nil {
		_ = tx.Rollback() // sql.ErrTxDone if fn ended tx itself: fn's error says more
		return txStageFn, nil, err
	}
	if err := ctx.Err(); err != nil {
		_ = tx.Rollback()
		return txStageFn, nil, err
	}
	if !readID {
		return txStageCommit, nil, tx.Commit()
	}
	id, err := ReadTxID(ctx, tx)
	if err != nil {
		if IsDisconnect(err) || ctx.Err() != nil {
			// Lost inside the transaction, before COMMIT: as for fn's
			// statements.
			_ = tx.Rollback()
			return txStageFn, nil, err
		}
		// Another error (fn ended the transaction, an aborted
		// transaction): Commit says what it means, as without the read,
		// and a lost COMMIT stays unknown.
		return txStageCommit, nil, tx.Commit()
	}
	return txStageCommit, &id, tx.Commit()
}

// txRetryable decides whether an attempt that failed with err at stage can be
// run again: nothing of it committed, and another attempt may succeed.
// pinned: db is a *sql.Conn, whose connection cannot be replaced.
func txRetryable(stage txStage, err error, pinned bool) bool {
	if txRetryableServerError(err) {
		return true
	}
	var de *DisconnectError
	isDisconnect := errors.As(err, &de)
	switch stage {
	case txStageBegin:
		// No transaction began, so none can have committed, whatever the
		// driver says was sent. Not retried: an open breaker, a failed
		// connect (pgresilient's connector retried it already, with its own
		// backoff; raw pgx's may be a refused password), and anything on a
		// *sql.Conn.
		var ce *ConnectError
		var pce *pgconn.ConnectError
		if pinned || errors.Is(err, ErrCircuitOpen) || errors.As(err, &ce) || errors.As(err, &pce) {
			return false
		}
		return isDisconnect || errors.Is(err, driver.ErrBadConn) || IsDisconnect(err)
	case txStageFn:
		if !isDisconnect || pinned {
			// Another driver's disconnect does not say whether it happened
			// inside the transaction: fn may have used the pool, outside
			// it, where a statement commits by itself.
			return false
		}
		// Safe: nothing was done. InTx before COMMIT: the server rolls the
		// transaction back with the session. A statement that was not in a
		// transaction (fn used the pool) may have committed by itself, and
		// a COMMIT (fn's own, of another transaction) may have committed.
		return de.safe || de.InTx && de.Op != OpCommit
	}
	// Commit: the server's answer, above, or pgresilient's word that the
	// COMMIT never ran (ErrNotCommitted: never written, refused by the
	// server before it ran, the connection broken before it): the server
	// rolled the transaction back with the session. Not on a *sql.Conn,
	// whose connection is gone. A lost COMMIT was handled by the caller.
	return !pinned && errors.Is(err, ErrNotCommitted)
}

// txRetryableServerError reports whether err is the server saying that the
// transaction was rolled back and may succeed if run again.
//
// A bare 25006 (read_only_sql_transaction) is not retryable: a read-only
// transaction that writes fails every time. ErrRoleChanged is: pgresilient
// returns it only once it learned that the server's role changed, and the
// connection is discarded, so the next attempt reaches the new primary.
// A transaction aborted by a stale cached statement is too (stale.go).
func txRetryableServerError(err error) bool {
	if errors.Is(err, ErrRoleChanged) || isStaleAbort(err) {
		return true
	}
	_, st, ok := serverState(err)
	return ok && st.retryTx
}

// txCommitUnknown reports whether a COMMIT that failed with err may have
// committed: the connection was lost, by pgresilient's word or another
// driver's (a reset, EOF, a deadline during I/O, driver.ErrBadConn, which
// pgx stdlib returns for some resets after the send).
func txCommitUnknown(err error) bool {
	if errors.Is(err, ErrNotCommitted) {
		return false // pgresilient knows: the COMMIT never ran
	}
	return errors.Is(err, ErrConnLost) || errors.Is(err, driver.ErrBadConn) || IsDisconnect(err)
}

// txSleep waits d, or until ctx ends: it then returns ctx.Err().
func txSleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
