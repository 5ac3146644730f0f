package pgresilient

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
)

// Cancel before close. When the context of a statement ends (query_timeout,
// or the caller's deadline or cancellation), pgx's default closes the
// connection at once: the statement may have run, or may still be running,
// and the caller can only be told "outcome unknown". pgresilient asks the
// server first: a CancelRequest, on a new connection carrying the backend's
// key, and cancelWait for the server to end the statement. The server
// answers the statement with 57014 (query_canceled): it did not complete,
// so in autocommit nothing of it committed, and in a transaction the
// transaction is aborted; the connection stays usable. Only when the
// cancel is not answered within cancelWait (the server or the network is
// gone) does the socket's deadline end the connection, and the outcome is
// unknown, as before. Through PgBouncer the cancel goes to PgBouncer, which
// forwards it to the server running the statement.
//
// A cancel can arrive after the statement it was meant for ended by itself
// (its result and the deadline crossing): it would then cancel whatever runs
// next on that backend. pgx sleeps 100 ms after every cancel to make that
// unlikely; pgresilient instead never uses the connection again unless the
// statement was answered with 57014, the proof that the cancel landed on it.

// cancelWait is how long a statement whose context ended is given to end
// with the server's 57014 after the cancel request is sent. A cancel costs a
// TCP connection and one message, and the server answers the statement at
// its next check for interrupts, a few milliseconds on a LAN (2 ms here on
// loopback, TestCancelQueryTimeout); what it adds past the caller's deadline
// when the server does not answer is this much at most.
const cancelWait = 50 * time.Millisecond

// ErrCanceled is matched by the error of a statement whose context ended
// (query_timeout, or the caller's deadline or cancellation) and that the
// server then canceled, saying so (SQLSTATE 57014): it did not complete.
// Outside a transaction nothing of it committed; inside one, the transaction
// is aborted. The connection is kept. The error also matches the context's
// own error (context.DeadlineExceeded, context.Canceled) when the caller's
// context ended, and wraps the server's *pgconn.PgError.
var ErrCanceled = errors.New("pgresilient: statement canceled")

// CanceledError is the error ErrCanceled describes.
type CanceledError struct {
	Op  Op     // the operation canceled
	By  string // "query_timeout 1s", or "the caller's context (context deadline exceeded)"
	Err error  // the server's 57014
	ctx error  // the caller's context's error, if it ended
}

// Error says what was canceled, why, and that it did not complete.
func (e *CanceledError) Error() string {
	return "pgresilient: " + string(e.Op) + " canceled on the server, ended by " + e.By +
		": it did not complete: " + errString(e.Err)
}

// Unwrap returns ErrCanceled, the caller's context's error if it ended, the
// server's error and, for a deadline (the caller's or query_timeout), pgx's
// own timeout error, so that pgconn.Timeout answers as over raw pgx.
func (e *CanceledError) Unwrap() []error {
	errs := []error{ErrCanceled}
	if e.ctx != nil {
		errs = append(errs, e.ctx)
	}
	if e.ctx == nil || e.ctx == context.DeadlineExceeded { //nolint:errorlint // a context's own error value
		if t := pgxTimeout(); t != nil {
			errs = append(errs, t)
		}
	}
	return append(errs, e.Err)
}

// pgxTimeout is pgconn's own "timeout: context deadline exceeded", the error
// its default context watcher leaves when a deadline ends an operation.
// pgconn.Timeout matches only its unexported type, and code written for pgx
// asks that question (pgx's own stdlib tests do): a CanceledError ended by a
// deadline wraps it. pgconn makes no such value on request; it is taken once
// from a connection attempt whose dial waits out an expired context, which
// touches no network. Nil if a pgx release stops making it that way (the
// conformance run would say so).
var pgxTimeout = sync.OnceValue(func() error {
	cfg, err := pgconn.ParseConfig("host=127.0.0.1 port=1 user=timeout sslmode=disable")
	if err != nil {
		return nil
	}
	cfg.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: ctx.Err()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	_, err = pgconn.ConnectConfig(ctx, cfg)
	return findTimeout(err)
})

// findTimeout returns the innermost error of err's tree that pgconn.Timeout
// matches: pgconn's timeout error itself.
func findTimeout(err error) error {
	if err == nil || !pgconn.Timeout(err) {
		return nil
	}
	var kids []error
	switch u := err.(type) { //nolint:errorlint // walking the tree by hand
	case interface{ Unwrap() error }:
		kids = []error{u.Unwrap()}
	case interface{ Unwrap() []error }:
		kids = u.Unwrap()
	}
	for _, k := range kids {
		if t := findTimeout(k); t != nil {
			return t
		}
	}
	return err
}

// cancelState is what a connection's context watcher tells baseConn: a
// cancel request went out for the operation under way.
type cancelState struct {
	sent atomic.Bool
}

// cancelWatcher is pgconn's context watcher for a connection of ours: on a
// context's end it sends the cancel request and sets the socket's deadline
// cancelWait ahead; it never waits for the request itself (bounded by the same
// deadline, it ends on its own).
type cancelWatcher struct {
	pc    *pgconn.PgConn
	state *cancelState // the connection's, in its countingConn
}

var _ ctxwatch.Handler = (*cancelWatcher)(nil)

// watchWithCancel is the ConnConfig's BuildContextWatcherHandler. A
// connection not dialled through countWrites keeps pgx's default.
func watchWithCancel(pc *pgconn.PgConn) ctxwatch.Handler {
	wire := findCounting(pc.Conn())
	if wire == nil {
		return &pgconn.DeadlineContextWatcherHandler{Conn: pc.Conn()}
	}
	return &cancelWatcher{pc: pc, state: &wire.cancel}
}

func (w *cancelWatcher) HandleCancel(context.Context) {
	deadline := time.Now().Add(cancelWait)
	_ = w.pc.Conn().SetDeadline(deadline)
	w.state.sent.Store(true)
	go func() {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		_ = w.pc.CancelRequest(ctx)
	}()
}

func (w *cancelWatcher) HandleUnwatchAfterCancel() {
	_ = w.pc.Conn().SetDeadline(time.Time{})
}

// canceledByServer turns err into a *CanceledError when the operation's
// context ended, a cancel went out, and the server answered it with 57014 on
// a connection still open. It reports false otherwise: err is handled as
// before.
func (c *baseConn) canceledByServer(ctx, stmtCtx context.Context, op Op, err error) (*CanceledError, bool) {
	if c.wire == nil || !c.wire.cancel.sent.Load() || c.innerClosed() {
		return nil, false
	}
	if _, st, ok := serverState(err); !ok || !st.canceled {
		return nil, false
	}
	c.wire.cancel.sent.Store(false) // it landed: nothing of it is still on its way
	e := &CanceledError{Op: op, Err: err, ctx: ctx.Err()}
	if ctx.Err() != nil {
		e.By = "the caller's context (" + ctx.Err().Error() + ")"
	} else {
		e.By = "query_timeout " + c.owner.cfg.QueryTimeout.String()
	}
	return e, true
}

// cancelPending reports whether a cancel request went out that no 57014
// answered: it may still land on the backend's next statement.
func (c *baseConn) cancelPending() bool {
	return c.wire != nil && c.wire.cancel.sent.Load()
}

// errCancelRaced is the cause of an operation that completed although its
// context had ended and a cancel request was on its way.
var errCancelRaced = errors.New("the deadline passed and the server was asked to cancel, but it completed the operation: " +
	"if it committed, a synchronous standby may not have confirmed it (a cancel ends that wait, and the server then commits locally)")

// raceAfterCancel returns nil, or, when a cancel request went out for the
// operation that just succeeded, an error saying its outcome is unknown: the
// success may be PostgreSQL's answer to the cancel itself. A COMMIT (or an
// autocommit write) waiting for a synchronous standby, canceled, commits on
// the primary alone, with a WARNING and a success; reported as a success,
// it would be an acknowledged write that a failover to that standby loses
// (TestRunTxSoak found 8 a run). The connection is not used again: the cancel
// may still land on it.
func (c *baseConn) raceAfterCancel(ctx context.Context, op Op) error {
	if !c.cancelPending() {
		return nil
	}
	c.markBroken(discardLost)
	c.owner.stats.connLost.Add(1)
	cause := errCancelRaced
	if ctx.Err() != nil {
		cause = errors.Join(ctx.Err(), errCancelRaced)
	}
	return &DisconnectError{Op: op, InTx: c.inTx.Load() || op == OpCommit, Err: cause}
}
