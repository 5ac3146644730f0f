package pgresilient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// This file holds every decision about what an error means: the error
// classes, the SQLSTATE table, and the classifiers of statement and
// connection errors. errors.go holds what callers see.

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
	if errors.Is(err, ErrCanceled) {
		// The server canceled the statement when asked: it answered, and
		// the connection is healthy. The caller's own context, if it is
		// what ended, decides as for any cancellation.
		if ctx != nil && ctx.Err() != nil {
			return classCanceled
		}
		return classServer
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

// The SQLSTATEs that decide what pgresilient does with a server's error,
// in one table that every decision reads: serverGone (a statement's error
// ends the session), connectClass (a connection attempt's error may clear up
// by itself, so it is retried and counts against the breaker). A code not
// listed is the server answering: the connection is healthy and the error
// is the caller's (a constraint, a syntax error, a refused password).
//
// A two-character key is a whole class; a five-character code overrides it.
var sqlstates = map[string]sqlstate{
	"08": {gone: true, transient: true}, // connection_exception: the connection failed

	"57P01": {gone: true, transient: true, uncommitted: true}, // admin_shutdown: pg_terminate_backend, fast shutdown
	"57P02": {gone: true, transient: true},                    // crash_shutdown
	"57P03": {gone: true, transient: true},                    // cannot_connect_now: starting up, shutting down, in recovery
	"57P04": {gone: true},                                     // database_dropped
	"57P05": {gone: true},                                     // idle_session_timeout
	"25P03": {gone: true, uncommitted: true},                  // idle_in_transaction_session_timeout

	"53300": {transient: true}, // too_many_connections
	"53000": {transient: true}, // insufficient_resources
	"53100": {transient: true}, // disk_full
	"53200": {transient: true}, // out_of_memory
	"58000": {transient: true}, // system_error
	"58030": {transient: true}, // io_error
}

// sqlstate is what one SQLSTATE means to pgresilient.
type sqlstate struct {
	gone      bool // in reply to a statement: the server ended the session
	transient bool // in reply to a connection attempt: "not now", worth a retry
	// uncommitted: as a FATAL in reply to COMMIT, before its CommandComplete,
	// the transaction did not commit (refusedCommit).
	uncommitted bool
}

// lookupSQLState returns what code means: its own entry, else its class's,
// else nothing.
func lookupSQLState(code string) sqlstate {
	if s, ok := sqlstates[code]; ok {
		return s
	}
	if len(code) == 5 {
		return sqlstates[code[:2]]
	}
	return sqlstate{}
}

// serverGone reports whether a server error means the session is over: the
// server closes the connection after any FATAL or PANIC, and the SQLSTATEs
// marked gone in sqlstates are those it sends when shutting down, crashing,
// starting up or dropping the database, or when the connection itself
// failed.
func serverGone(e *pgconn.PgError) bool {
	switch e.Severity {
	case "FATAL", "PANIC":
		return true
	}
	switch e.SeverityUnlocalized {
	case "FATAL", "PANIC":
		return true
	}
	return lookupSQLState(e.Code).gone
}

// refusedCommit reports whether err, the reply to a COMMIT that came before
// any CommandComplete, says the transaction did not commit: a FATAL whose
// SQLSTATE is marked uncommitted. PostgreSQL raises those (a terminated
// backend, a fast shutdown, idle_in_transaction_session_timeout) only where
// it checks for interrupts: while waiting for the client, or while running
// COMMIT before its commit record is written. From before the commit record
// until CommitTransaction ends it holds interrupts, and the CommandComplete
// is queued right after, so a FATAL sent after a commit follows a
// CommandComplete "COMMIT", which baseTx.commit reads first and believes.
// The backend aborts the transaction as it exits (TestCommitRefused
// measures it). Interrupts that end a session after the commit record (a
// synchronous standby's wait cut short, an immediate shutdown) send a
// WARNING and close the connection: an EOF, not this. PgBouncer's own
// FATALs (08P01) are not marked: PgBouncer may send one after the server
// committed. Trusted only over pgx, whose COMMIT tag pgresilient reads.
func refusedCommit(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	if pgErr.Severity != "FATAL" && pgErr.SeverityUnlocalized != "FATAL" {
		return false
	}
	return lookupSQLState(pgErr.Code).uncommitted
}

// connectClass classifies an error from opening a connection. Unlike a
// statement's, a FATAL server error here is the server answering (bad
// password, no such database): a permanent failure, and a sign the server is
// up. Only the FATALs that mean "not now" are connectivity failures.
func connectClass(ctx context.Context, err error) errClass {
	general := classify(ctx, err)
	if general == classNone || general == classCanceled {
		return general
	}
	var coe *CircuitOpenError
	if errors.As(err, &coe) {
		return classOther
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if lookupSQLState(pgErr.Code).transient {
			return classGone
		}
		return classServer
	}
	if permanentTLS(err) {
		return classOther
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		if dnsErr.IsNotFound && !dnsErr.IsTemporary {
			return classOther // no such host: retrying will not help
		}
		return classGone
	}
	if general == classGone {
		return classGone
	}
	return classOther
}

// tlsRefused is pgconn's error when sslmode requires TLS and the server
// answers that it has none (an SSLRequest answered 'N'): a configuration
// mismatch, not a passing fault. pgconn makes it with errors.New, so only its
// message tells it apart.
const tlsRefused = "server refused TLS connection"

// permanentTLS reports TLS and certificate failures: configuration problems
// that no retry fixes.
func permanentTLS(err error) bool {
	if strings.Contains(err.Error(), tlsRefused) {
		return true
	}
	var (
		unknownAuth x509.UnknownAuthorityError
		hostErr     x509.HostnameError
		certInvalid x509.CertificateInvalidError
		recordErr   tls.RecordHeaderError
		alertErr    tls.AlertError
		verifyErr   *tls.CertificateVerificationError
	)
	return errors.As(err, &unknownAuth) || errors.As(err, &hostErr) || errors.As(err, &certInvalid) ||
		errors.As(err, &recordErr) || errors.As(err, &alertErr) || errors.As(err, &verifyErr)
}

// isTimeout reports a deadline or I/O timeout (not a caller's cancellation,
// which connectClass already sorted out).
func isTimeout(err error) bool {
	if pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// PgBouncer answers for PostgreSQL with errors of its own, all FATAL 08P01
// (protocol_violation), told apart only by their messages (PgBouncer 1.18
// sends S, C and M fields only; docs/pgbouncer.md lists what each fault
// sends). Most mean what any lost connection means. These say more:
const (
	// bouncerQueueTimeout: the statement waited in PgBouncer's queue for a
	// server connection and was never forwarded to PostgreSQL.
	bouncerQueueTimeout = "query_wait_timeout"
	// bouncerLoginFailing: PgBouncer cannot log in to PostgreSQL, and
	// refuses the statement before linking it to any server connection.
	bouncerLoginFailing = "server login has been failing, try again later (server_login_retry)"
	// bouncerFull: max_client_conn reached, at login: the pooler is up and
	// answering, only full.
	bouncerFull = "no more connections allowed (max_client_conn)"
)

// bouncerError returns PgBouncer's message when err is one of its FATAL
// 08P01 errors, and "" otherwise.
func bouncerError(err error) string {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08P01" || pgErr.Severity != "FATAL" {
		return ""
	}
	return pgErr.Message
}

// bouncerNotForwarded reports a statement that PgBouncer refused without
// forwarding it to PostgreSQL: nothing of it ran, whatever bytes reached
// PgBouncer. PgBouncer sends these only to a client that has no server
// connection: never inside a transaction block under transaction pooling,
// where the client keeps its server connection until the block ends.
func bouncerNotForwarded(err error) bool {
	switch bouncerError(err) {
	case bouncerQueueTimeout, bouncerLoginFailing:
		return true
	}
	return false
}
