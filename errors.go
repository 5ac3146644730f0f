package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrConnLost is matched (errors.Is) by every error returned after the
// connection broke while a statement or a COMMIT may have reached the server:
// the outcome is unknown. The connection is discarded, never used again.
// ErrConnLost never matches driver.ErrBadConn, so database/sql does not retry
// the statement: check whether it took effect, or make it idempotent.
var ErrConnLost = errors.New("pgresilient: connection lost, outcome unknown")

// ErrCircuitOpen is matched by errors returned while the circuit breaker is
// open: the call failed at once, without dialling or sending anything. It
// never matches driver.ErrBadConn: a retry would hit the same breaker.
var ErrCircuitOpen = errors.New("pgresilient: circuit open")

// ErrTxAborted is matched by every statement and the Commit of a transaction
// after one of its statements failed and pgresilient rolled it back on the
// server. The error also wraps that first failure.
var ErrTxAborted = errors.New("pgresilient: transaction aborted")

// DisconnectError reports a connection that broke during an operation.
//
// When Safe is true nothing was done on the server (nothing reached it, or
// only a BEGIN or a PREPARE outside a transaction): the error also matches
// driver.ErrBadConn, so database/sql retries the operation on another
// connection. When Safe is false the operation may have run: the error matches
// ErrConnLost and never driver.ErrBadConn. In both cases it wraps the cause,
// so errors.As still finds a *pgconn.PgError, and errors.Is a context error.
type DisconnectError struct {
	Op   string // "exec", "query", "prepare", "begin", "commit", "rollback", "rows", "ping"
	Safe bool   // nothing was done on the server: retrying is safe
	InTx bool   // the connection was inside a transaction
	Err  error  // the cause, from the wrapped driver

	// known: the pool had already learned that the server went away when
	// this connection failed (a restart ends every connection at once), or
	// the connection was broken before. The breaker counts one event once.
	known bool
}

func (e *DisconnectError) Error() string {
	var what string
	switch {
	case e.Safe:
		what = ": connection lost, nothing done on the server (safe to retry): "
	case e.Op == "commit":
		what = ": connection lost during commit, outcome unknown (the transaction may or may not have committed): "
	case e.InTx:
		what = ": connection lost inside a transaction, outcome unknown (the transaction is gone; its work was not committed): "
	default:
		what = ": connection lost, outcome unknown (the statement may have run): "
	}
	cause := errString(e.Err)
	if !e.Safe && errors.Is(e.Err, driver.ErrBadConn) {
		cause = "the connection closed after the statement was sent (the wrapped driver said " + cause + ")"
	}
	return "pgresilient: " + e.Op + what + cause
}

// Unwrap returns the cause and, for a safe error, driver.ErrBadConn; for an
// unsafe one, ErrConnLost. An unsafe error never matches driver.ErrBadConn,
// even when its cause does (pgx stdlib reports some losses after a send as a
// bare driver.ErrBadConn): the cause is then kept as text only.
func (e *DisconnectError) Unwrap() []error {
	if e.Safe {
		return []error{e.Err, driver.ErrBadConn}
	}
	if errors.Is(e.Err, driver.ErrBadConn) {
		return []error{ErrConnLost}
	}
	return []error{e.Err, ErrConnLost}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// logCause is err as a log attribute's text. A statement's error from the
// server is reduced to its SQLSTATE: its message can quote the
// statement's arguments (22P02: invalid input syntax for type integer:
// "..."), which must not reach a log. Errors that end the session (FATAL,
// PANIC, shutdowns, the network's) are logged whole: they say why a
// connection went away and quote no argument.
func logCause(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && !serverGone(pgErr) {
		return "SQLSTATE " + pgErr.Code
	}
	return errString(err)
}

// TxAbortedError is returned by the statements and the Commit of a
// transaction that pgresilient rolled back on the server after one of its
// statements failed (tx_autorollback=on). It matches ErrTxAborted and wraps
// that first failure: errors.As still finds its *pgconn.PgError.
type TxAbortedError struct {
	Err error // the statement error that aborted the transaction
}

func (e *TxAbortedError) Error() string {
	return "pgresilient: transaction aborted by an earlier error and rolled back: " + errString(e.Err)
}

// Unwrap returns ErrTxAborted and the first failure.
func (e *TxAbortedError) Unwrap() []error { return []error{ErrTxAborted, e.Err} }

// IsDisconnect reports whether err says that the connection to the server
// broke or could not be used, whatever the outcome: errors returned by
// pgresilient, and raw errors from pgx or the network alike.
//
// A connection that could not be opened counts only for a connectivity
// failure: a refused password or a missing database is the server answering,
// not a disconnect.
func IsDisconnect(err error) bool {
	var de *DisconnectError
	if errors.As(err, &de) {
		return true
	}
	var ce *ConnectError
	if errors.As(err, &ce) {
		return !ce.Permanent
	}
	return classify(context.Background(), err) == classGone
}

// errClass is what the classifier decides about an error.
type errClass uint8

const (
	classNone     errClass = iota // no error
	classOther                    // a client-side error: bad argument, conversion, driver.ErrSkip
	classServer                   // the server answered: the connection is healthy
	classGone                     // the connection is gone, or unusable
	classCanceled                 // the caller's own context ended
)

func (c errClass) String() string {
	switch c {
	case classNone:
		return "none"
	case classOther:
		return "other"
	case classServer:
		return "server"
	case classGone:
		return "gone"
	case classCanceled:
		return "canceled"
	}
	return "unknown"
}

// classify decides what an error from the wrapped driver means. ctx is the
// caller's context (nil if unknown): a context error while it is done is the
// caller giving up; a context error while it is not done is a deadline of our
// own (query_timeout) or of pgx, which counts as the connection being gone.
func classify(ctx context.Context, err error) errClass {
	if err == nil {
		return classNone
	}
	if err == driver.ErrSkip { //nolint:errorlint // ErrSkip is a sentinel compared by identity in database/sql too
		return classOther
	}
	if ctx != nil && ctx.Err() != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
			errors.Is(err, driver.ErrBadConn) || pgconn.Timeout(err) {
			return classCanceled
		}
	}
	var de *DisconnectError
	if errors.As(err, &de) {
		return classGone
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if serverGone(pgErr) {
			return classGone
		}
		return classServer
	}
	if errors.Is(err, driver.ErrBadConn) || pgconn.Timeout(err) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		// A context error while the caller's context is alive: a deadline of
		// our own or of pgx. pgx closes the connection when a deadline fires
		// during I/O.
		return classGone
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, pgconn.ErrConnClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.ENETDOWN) {
		return classGone
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return classGone
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return classGone
	}
	if pgconn.SafeToRetry(err) {
		// pgconn's own "nothing was written" errors (conn closed, ...).
		return classGone
	}
	return classOther
}

// serverGone reports whether a server error means the session is over: the
// server closes the connection after any FATAL or PANIC, and the codes below
// are those it sends when shutting down, crashing, starting up or dropping the
// database, or when the connection itself failed (class 08).
func serverGone(e *pgconn.PgError) bool {
	switch e.Severity {
	case "FATAL", "PANIC":
		return true
	}
	switch e.SeverityUnlocalized {
	case "FATAL", "PANIC":
		return true
	}
	if len(e.Code) == 5 && e.Code[:2] == "08" {
		return true
	}
	switch e.Code {
	case "57P01", // admin_shutdown: pg_terminate_backend, fast shutdown
		"57P02", // crash_shutdown
		"57P03", // cannot_connect_now: starting up, shutting down, recovery
		"57P04", // database_dropped
		"57P05", // idle_session_timeout
		"25P03": // idle_in_transaction_session_timeout
		return true
	}
	return false
}
