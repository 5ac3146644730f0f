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
// classes, the one table of SQLSTATEs, the server's and PgBouncer's messages
// that pgresilient tells apart, and the classifiers of statement and
// connection errors. What is done about each lives with the operation that
// failed; errors.go holds what callers see.

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

// The SQLSTATEs that pgresilient decides on, named where code or tests
// read them; what each means is in sqlstates.
const (
	codeReadOnlyTx          = "25006" // read_only_sql_transaction: "cannot execute ... in a read-only transaction"
	codeFeatureNotSupported = "0A000" // with RevalidateCachedQuery: "cached plan must not change result type"
	codeNoPreparedStatement = "26000" // invalid_sql_statement_name: "prepared statement ... does not exist"
	codeDuplicatePrepared   = "42P05" // duplicate_prepared_statement: "prepared statement ... already exists"
	codeQueryCanceled       = "57014" // query_canceled: a cancel request, or statement_timeout
	codeSyntaxError         = "42601" // syntax_error
	codeInvalidParameter    = "22023" // invalid_parameter_value
	codeProtocolViolation   = "08P01" // protocol_violation: every error of PgBouncer's own
)

// The SQLSTATEs that decide what pgresilient does with a server's error,
// in one table that every decision reads: serverGone (a statement's error
// ends the session), connectClass (a connection attempt's error may clear up
// by itself, so it is retried and counts against the breaker), notYet (the
// server is up but not for this client now: waited out, never outage
// evidence), and the statement's own fate (refused before it ran, canceled,
// worth running the transaction again). A code not listed is the server
// answering: the connection is healthy and the error is the caller's (a
// constraint, a refused password).
//
// A two-character key is a whole class; a five-character code overrides it.
var sqlstates = map[string]sqlstate{
	"08": {gone: true, transient: true}, // connection_exception: the connection failed

	"57P01": {gone: true, transient: true, uncommitted: true}, // admin_shutdown: pg_terminate_backend, fast shutdown
	"57P02": {gone: true, transient: true},                    // crash_shutdown
	"57P03": {gone: true, transient: true, notYet: true},      // cannot_connect_now: starting up, shutting down, in recovery, not yet consistent
	"57P04": {gone: true},                                     // database_dropped
	"57P05": {gone: true},                                     // idle_session_timeout
	"25P03": {gone: true, uncommitted: true},                  // idle_in_transaction_session_timeout

	"53300": {transient: true, notYet: true}, // too_many_connections: max_connections reached, or only superuser slots left
	"53000": {transient: true},               // insufficient_resources
	"53100": {transient: true},               // disk_full
	"53200": {transient: true},               // out_of_memory
	"58000": {transient: true},               // system_error
	"58030": {transient: true},               // io_error

	codeReadOnlyTx:       {readOnly: true},  // a write refused before it ran: refusedForRole
	"40001":              {retryTx: true},   // serialization_failure: txRetryableServerError
	"40P01":              {retryTx: true},   // deadlock_detected: txRetryableServerError
	codeQueryCanceled:    {canceled: true},  // canceledByServer
	codeSyntaxError:      {syntax: true},    // placeholderHint
	codeInvalidParameter: {xidFuture: true}, // with "in the future", from txid_status: neverSeen

	codeNoPreparedStatement: {prepared: preparedMissing},     // staleStatement, cachedRefused
	codeDuplicatePrepared:   {prepared: preparedDuplicate},   // staleStatement, cachedRefused
	codeFeatureNotSupported: {prepared: preparedPlanChanged}, // staleStatement, with the routine or message
}

// sqlstate is what one SQLSTATE means to pgresilient.
type sqlstate struct {
	gone      bool // in reply to a statement: the server ended the session
	transient bool // in reply to a connection attempt: "not now", worth a retry
	// uncommitted: as a FATAL in reply to COMMIT, before its CommandComplete,
	// the transaction did not commit (refusedCommit).
	uncommitted bool
	notYet      bool // "not yet" or "busy": the server is up, nothing ran (notYet)
	readOnly    bool // a write refused by a read-only session, before it ran
	retryTx     bool // the transaction was rolled back and may succeed if run again
	canceled    bool // the statement ended by a cancel request or statement_timeout
	syntax      bool // the statement's text did not parse
	xidFuture   bool // with its message, a transaction id the server never assigned
	prepared    preparedFault
}

// preparedFault is why the server refused a prepared statement before
// running anything of it.
type preparedFault uint8

const (
	preparedNone        preparedFault = iota
	preparedMissing                   // the session has no statement of that name
	preparedDuplicate                 // the session has one of that name already
	preparedPlanChanged               // its cached plan's result type changed (0A000, only with its routine or message)
)

// serverState returns the server's error in err and what its SQLSTATE
// means, or ok false when err holds no server error.
func serverState(err error) (pgErr *pgconn.PgError, st sqlstate, ok bool) {
	if !errors.As(err, &pgErr) {
		return nil, sqlstate{}, false
	}
	return pgErr, lookupSQLState(pgErr.Code), true
}

// isCode reports whether err is a server error with SQLSTATE code.
func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
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
	if !errors.As(err, &pgErr) || pgErr.Code != codeProtocolViolation || pgErr.Severity != "FATAL" {
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

// bouncerNotYet are PgBouncer's FATAL 08P01 messages (classify.go's
// bouncerError) that say it is up but cannot serve this client yet: its
// login to PostgreSQL is failing (server_login_retry), it is full
// (max_client_conn), or a client waited too long for a server connection.
// Prefixes: PgBouncer appends the setting's name in parentheses.
var bouncerNotYet = []string{
	bouncerLoginFailing,
	"pgbouncer cannot connect to server", // before PgBouncer 1.17
	"no more connections allowed",        // (max_client_conn)
	bouncerQueueTimeout,                  // query_wait_timeout
	"client_login_timeout",               // (server down): PgBouncer never reached the server
}

// notYet reports a refusal that says "not yet" or "busy", where nothing
// ran: a server starting up or full (notYet in sqlstates), PgBouncer's refusals
// (bouncerNotYet), pgx's target_session_attrs rejection (errWrongRole: a
// change of primary under way). None of them is evidence that the database
// cannot serve anyone, so none counts for the breaker.
func notYet(err error) bool {
	if errors.Is(err, errWrongRole) {
		return true
	}
	_, st, ok := serverState(err)
	if !ok {
		return false
	}
	if st.notYet {
		return true
	}
	if msg := bouncerError(err); msg != "" {
		for _, p := range bouncerNotYet {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
	}
	return false
}

// pgxCachedName starts the name of every statement pgx's statement cache
// prepares (stmtcache_ and a hash of the text), as PostgreSQL quotes it in
// its messages.
const pgxCachedName = `"stmtcache_`

// cachedRefused reports a refusal of one of pgx's own cached statements
// that a transaction pooler explains (26000 or 42P05 naming stmtcache_...):
// refused at Parse or Bind, before anything ran.
func cachedRefused(err error) bool {
	pgErr, st, ok := serverState(err)
	if !ok || serverGone(pgErr) {
		return false
	}
	switch st.prepared {
	case preparedMissing, preparedDuplicate:
		return strings.Contains(pgErr.Message, pgxCachedName)
	}
	return false
}

// staleStatement reports whether err is the server refusing a stale
// prepared statement before running anything of it. 0A000 is the class
// feature_not_supported, raised for much else: only the cached plan's
// refusal counts, known by the server's routine name (not translated) or
// else its English message.
func staleStatement(err error) bool {
	pgErr, st, ok := serverState(err)
	if !ok || serverGone(pgErr) {
		return false
	}
	switch st.prepared {
	case preparedMissing:
		return true
	case preparedDuplicate:
		return strings.Contains(pgErr.Message, pgxCachedName)
	case preparedPlanChanged:
		return pgErr.Routine == "RevalidateCachedQuery" ||
			strings.Contains(pgErr.Message, "cached plan must not change result type")
	}
	return false
}

// neverSeen reports txid_status's error for an id beyond the server's next
// transaction id: "transaction ID ... is in the future" (22023).
func neverSeen(err error) bool {
	pgErr, st, ok := serverState(err)
	return ok && st.xidFuture && strings.Contains(pgErr.Message, "in the future")
}
