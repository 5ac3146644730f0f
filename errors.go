package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrConnLost is matched (errors.Is) by every error returned after the
// connection broke while a statement or a COMMIT may have reached the server:
// the outcome is unknown. The connection is discarded, never used again.
// ErrConnLost never matches driver.ErrBadConn, so database/sql does not retry
// the statement: check whether it took effect, or make it idempotent.
var ErrConnLost = errors.New("pgresilient: connection lost, outcome unknown")

// ErrNotCommitted is matched (errors.Is) by the error of a Commit, and of
// RunTx, when the connection was lost at COMMIT but the transaction certainly
// did not commit: no byte of the COMMIT reached the socket, or the server
// ended the session (FATAL 57P01, a terminated backend) before running it, or
// the connection was already broken when Commit was called. The server rolls
// back a transaction whose session ends without a COMMIT, so running it again
// cannot commit it twice. It never matches ErrConnLost (the outcome is known)
// nor driver.ErrBadConn (database/sql does not retry a Commit anyway).
var ErrNotCommitted = errors.New("pgresilient: transaction not committed")

// ErrCircuitOpen is matched by errors returned while the circuit breaker is
// open: the call failed at once, without dialling or sending anything. It
// never matches driver.ErrBadConn: a retry would hit the same breaker.
var ErrCircuitOpen = errors.New("pgresilient: circuit open")

// ErrTxAborted is matched by every statement and the Commit of a transaction
// after one of its statements failed and pgresilient rolled it back on the
// server. The error also wraps that first failure.
var ErrTxAborted = errors.New("pgresilient: transaction aborted")

// Op names the operation during which a connection broke, in a
// DisconnectError and in log events.
type Op string

// The operations of a connection.
const (
	OpExec     Op = "exec"
	OpQuery    Op = "query"
	OpPrepare  Op = "prepare"
	OpBegin    Op = "begin"
	OpCommit   Op = "commit"
	OpRollback Op = "rollback"
	OpRows     Op = "rows" // reading a result set
	OpPing     Op = "ping"
)

// DisconnectError reports a connection that broke during an operation.
//
// When nothing was done on the server (nothing reached it, or only a BEGIN
// or a PREPARE outside a transaction), the error matches driver.ErrBadConn,
// so database/sql retries the operation on another connection: ask
// errors.Is(err, driver.ErrBadConn). Otherwise the operation may have run:
// the error matches ErrConnLost and never driver.ErrBadConn, except for a
// COMMIT known not to have committed, which matches ErrNotCommitted instead
// of ErrConnLost. In every case it wraps the cause,
// so errors.As still finds a *pgconn.PgError, and errors.Is a context error.
type DisconnectError struct {
	Op   Op    // the operation that broke: OpExec, OpCommit, ...
	safe bool  // nothing was done on the server: driver.ErrBadConn joins the chain
	InTx bool  // the connection was inside a transaction
	Err  error // the cause, from the wrapped driver

	// notCommitted: Op is OpCommit and the transaction certainly did not
	// commit (see ErrNotCommitted): the error matches ErrNotCommitted
	// instead of ErrConnLost.
	notCommitted bool

	// known: the pool had already learned that the server went away when
	// this connection failed (a restart ends every connection at once), or
	// the connection was broken before. The breaker counts one event once.
	known bool
}

// Error names the operation and says whether its outcome is known.
func (e *DisconnectError) Error() string {
	var what string
	switch {
	case e.safe:
		what = ": connection lost, nothing done on the server (safe to retry): "
	case e.notCommitted:
		what = ": connection lost before COMMIT ran, the transaction did not commit: "
	case e.Op == OpCommit:
		what = ": connection lost during commit, outcome unknown (the transaction may or may not have committed): "
	case e.InTx:
		what = ": connection lost inside a transaction, outcome unknown (the transaction is gone; its work was not committed): "
	default:
		what = ": connection lost, outcome unknown (the statement may have run): "
	}
	cause := errString(e.Err)
	if !e.safe && errors.Is(e.Err, driver.ErrBadConn) {
		cause = "the connection closed after the statement was sent (the wrapped driver said " + cause + ")"
	}
	return "pgresilient: " + string(e.Op) + what + cause
}

// Unwrap returns the cause and, for a safe error, driver.ErrBadConn; for a
// COMMIT that certainly did not commit, ErrNotCommitted; for any other,
// ErrConnLost. An unsafe error never matches driver.ErrBadConn,
// even when its cause does (pgx stdlib reports some losses after a send as a
// bare driver.ErrBadConn): the cause is then kept as text only.
func (e *DisconnectError) Unwrap() []error {
	if e.safe {
		return []error{e.Err, driver.ErrBadConn}
	}
	outcome := ErrConnLost
	if e.notCommitted {
		outcome = ErrNotCommitted
	}
	if errors.Is(e.Err, driver.ErrBadConn) {
		return []error{outcome}
	}
	return []error{e.Err, outcome}
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

// Error says the transaction was rolled back, and why.
func (e *TxAbortedError) Error() string {
	return "pgresilient: transaction aborted by an earlier error and rolled back: " + errString(e.Err)
}

// Unwrap returns ErrTxAborted and the first failure.
func (e *TxAbortedError) Unwrap() []error { return []error{ErrTxAborted, e.Err} }

// IsDisconnect reports whether err says that the connection to the server
// broke or could not be used, whatever the outcome: errors returned by
// pgresilient, and raw errors from pgx or the network alike.
//
// An open breaker's *CircuitOpenError is not a disconnect (ask
// errors.Is(err, ErrCircuitOpen)). A connection that could not be opened
// counts only for a connectivity failure: a refused password or a missing database is the server answering,
// not a disconnect.
func IsDisconnect(err error) bool {
	var coe *CircuitOpenError
	if errors.As(err, &coe) {
		return false // nothing was dialled or sent, even when it wraps a retry loop's connect error
	}
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
