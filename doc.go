// Package pgresilient is a database/sql driver for PostgreSQL that wraps pgx
// v5's stdlib driver and lets applications survive what really happens to
// databases: server restarts and failovers, killed backends, network cuts and
// blackholes, a database that starts after the application, aborted
// transactions. It is a drop-in:
//
//	import "github.com/pgresilient/pgresilient" // registers the driver; errors.Is(err, pgresilient.ErrConnLost)
//
//	db, err := sql.Open("pgresilient", os.Getenv("DATABASE_URL")) // no parameter needed: the defaults are the recommended configuration
//
// Every DSN that pgx accepts works (URL or key=value form, several hosts, PG*
// environment variables, TLS settings). pgresilient's own parameters are
// removed before pgx sees the DSN, so they never reach the server.
//
// # Guarantees
//
//   - A statement is never run twice because of pgresilient. An error matches
//     driver.ErrBadConn, which makes database/sql retry, only when no byte of
//     the operation was written to the server's socket: pgresilient counts
//     them, rather than trusting the wrapped driver.
//   - When a connection breaks after a statement or a COMMIT may have reached
//     the server, the error matches ErrConnLost: the outcome is unknown. It
//     wraps the cause (errors.As finds a *pgconn.PgError; errors.Is finds the
//     caller's context error) and the connection is discarded.
//   - A connection is never handed out broken: one that the server closed
//     while it sat in the pool is noticed on reuse by a non-blocking look at
//     its socket, and discarded before anything is sent, so database/sql
//     retries on another. When one connection learns the server went away,
//     every pooled connection opened before is verified before its next use.
//   - A connection never waits in the pool inside a transaction block: it is
//     rolled back on its way in, or discarded if that fails.
//   - With tx_autorollback=on, a transaction whose statement failed is rolled
//     back on the server at once; its later statements and Commit return
//     ErrTxAborted wrapping the first failure.
//   - With the circuit breaker on, after breaker_failures consecutive
//     connectivity failures every call fails at once with ErrCircuitOpen,
//     without dialling or sending, until a background probe connects.
//   - Passwords, DSNs and statement arguments never appear in errors or logs.
//
// # DSN parameters
//
//	parameter            default meaning
//	breaker              on      the circuit breaker: on or off
//	breaker_failures     5       consecutive connectivity failures that open the breaker; once connected, they must also span 500ms (a timeout opens it at once)
//	breaker_cooldown     1s      the longest wait between two background probes while open
//	connect_retries      3       extra attempts when opening a connection fails transiently
//	connect_backoff      100ms   first retry delay; doubles per attempt, with full jitter
//	connect_backoff_max  5s      ceiling of the retry delay
//	query_timeout        0       upper bound on every statement, connection attempt and check; a caller's earlier deadline wins; 0 is off
//	monitor_grace        1s      a statement in flight this long has its server checked by the host monitor; off turns the monitor off
//	monitor_timeout      1.5s    a check of the server unanswered this long declares it silent: the statements waiting on it end (ErrConnLost)
//	tx_autorollback      on      roll a transaction back on the server as soon as a statement in it fails: on or off
//	keepalives           1       TCP keepalive probes: 1 or 0 (off)
//	keepalives_idle      10      seconds of silence before the first keepalive probe; 0 is the system's setting
//	keepalives_interval  5       seconds between unanswered keepalive probes; 0 is the system's setting
//	keepalives_count     3       unanswered keepalive probes that end the connection; 0 is the system's setting
//	tcp_user_timeout     25000   milliseconds written data may stay unacknowledged before the connection ends (Linux); 0 is the system's setting
//
// docs/configuration.md describes each one. The breaker_failures count is
// necessary, not sufficient: after the first working connection, each failed
// connection attempt and reuse check counts, and the failures must also span
// 500ms, so that a fast restart opens nothing; breaker_failures=2 against a
// server that went down opens the breaker about 0.5s after the first failure,
// however many calls failed meanwhile.
//
// The last five are libpq's TCP parameters, with libpq's units, which pgx
// would send to the server (which refuses them): pgresilient sets them on
// each connection's socket. With the defaults the kernel ends a connection
// whose server went silent (a blackholed network, a host gone without a
// reset) after about 25s, idle, waiting for a result or with a write
// unacknowledged; a healthy server acknowledges the probes, so a long
// statement is never cut. A key that looks like a misspelling of one of
// these or of pgx's ("qeury_timeout", "pasword") is a *ConfigError that
// suggests the right one, rather than a setting sent to the server.
//
// Go-only settings (a logger, extra sqlmw interceptors, pgx's connect hooks, a
// breaker callback, another driver to wrap for tests) are Options of
// NewConnector, used with sql.OpenDB.
//
// # Unit tests with go-sqlmock
//
// Wrap sqlmock's driver with WithDriver, and open sqlmock with the DSN that
// pgresilient passes on (the DSN without pgresilient's parameters):
//
//	db0, mock, _ := sqlmock.NewWithDSN("orders")
//	defer db0.Close()
//	c, _ := pgresilient.NewConnector("orders?breaker=off", pgresilient.WithDriver(db0.Driver()))
//	db := sql.OpenDB(c)
//
// # Reaching pgx
//
// (*sql.Conn).Raw hands its callback a pgresilient connection; PgxConn
// returns the *pgx.Conn beneath it, for COPY or LISTEN/NOTIFY.
package pgresilient
