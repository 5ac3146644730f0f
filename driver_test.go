package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ngrok/sqlmw"
)

func TestClassify(t *testing.T) {
	live := context.Background()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	resetOp := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}

	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want errClass
	}{
		{"nil", live, nil, classNone},
		{"skip", live, driver.ErrSkip, classOther},
		{"plain error", live, errors.New("cannot convert"), classOther},
		{"unique violation", live, &pgconn.PgError{Severity: "ERROR", Code: "23505"}, classServer},
		{"wrapped unique violation", live, fmt.Errorf("x: %w", &pgconn.PgError{Code: "23505"}), classServer},
		{"aborted transaction", live, &pgconn.PgError{Severity: "ERROR", Code: "25P02"}, classServer},
		{"statement_timeout", live, &pgconn.PgError{Severity: "ERROR", Code: "57014"}, classServer},
		{"read-only", live, &pgconn.PgError{Severity: "ERROR", Code: "25006"}, classServer},
		{"admin shutdown", live, &pgconn.PgError{Severity: "FATAL", Code: "57P01"}, classGone},
		{"admin shutdown, code only", live, &pgconn.PgError{Code: "57P01"}, classGone},
		{"crash shutdown", live, &pgconn.PgError{Code: "57P02"}, classGone},
		{"cannot connect now", live, &pgconn.PgError{Code: "57P03"}, classGone},
		{"connection failure", live, &pgconn.PgError{Code: "08006"}, classGone},
		{"any FATAL", live, &pgconn.PgError{Severity: "FATAL", Code: "XX000"}, classGone},
		{"idle session timeout", live, &pgconn.PgError{Code: "57P05"}, classGone},
		{"bad conn", live, driver.ErrBadConn, classGone},
		{"EOF", live, io.EOF, classGone},
		{"unexpected EOF", live, fmt.Errorf("read: %w", io.ErrUnexpectedEOF), classGone},
		{"ECONNRESET", live, syscall.ECONNRESET, classGone},
		{"EPIPE", live, syscall.EPIPE, classGone},
		{"net.OpError reset", live, resetOp, classGone},
		{"net.ErrClosed", live, net.ErrClosed, classGone},
		{"pgconn conn closed", live, pgconn.ErrConnClosed, classGone},
		{"dns", live, &net.DNSError{Err: "no such host", Name: "db", IsTemporary: true}, classGone},
		{"our deadline", live, context.DeadlineExceeded, classGone},
		{"caller canceled", done, context.Canceled, classCanceled},
		{"caller canceled, wrapped", done, fmt.Errorf("q: %w", context.Canceled), classCanceled},
		{"caller canceled, bad conn", done, driver.ErrBadConn, classCanceled},
		{"caller canceled, SQL error", done, &pgconn.PgError{Code: "23505"}, classServer},
		{"disconnect error", live, &DisconnectError{Op: "exec", Err: errors.New("x")}, classGone},
		{"unknown ctx, EOF", nil, io.EOF, classGone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := classify(tt.ctx, tt.err); got != tt.want {
				t.Errorf("classify(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestDisconnectErrorMatching(t *testing.T) {
	cause := &pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"}
	unsafe := error(&DisconnectError{Op: "exec", Err: cause})
	if !errors.Is(unsafe, ErrConnLost) || errors.Is(unsafe, driver.ErrBadConn) {
		t.Errorf("unsafe: Is(ErrConnLost)=%v Is(ErrBadConn)=%v, want true, false",
			errors.Is(unsafe, ErrConnLost), errors.Is(unsafe, driver.ErrBadConn))
	}
	var pgErr *pgconn.PgError
	if !errors.As(unsafe, &pgErr) || pgErr.Code != "57P01" {
		t.Errorf("errors.As(*pgconn.PgError) lost the cause: %v", unsafe)
	}
	if !strings.Contains(unsafe.Error(), "outcome unknown") {
		t.Errorf("message %q does not say the outcome is unknown", unsafe)
	}
	// pgx stdlib reports some losses after a send as a bare ErrBadConn: an
	// unsafe error must still not match it, or database/sql retries.
	masked := error(&DisconnectError{Op: "exec", Err: fmt.Errorf("x: %w", driver.ErrBadConn)})
	if errors.Is(masked, driver.ErrBadConn) || !errors.Is(masked, ErrConnLost) {
		t.Errorf("unsafe error over an ErrBadConn cause: Is(ErrBadConn)=%v", errors.Is(masked, driver.ErrBadConn))
	}
	safe := error(&DisconnectError{Op: "exec", safe: true, Err: io.EOF})
	if errors.Is(safe, ErrConnLost) || !errors.Is(safe, driver.ErrBadConn) || !errors.Is(safe, io.EOF) {
		t.Errorf("safe: wrong matches: %v", safe)
	}
	for _, s := range []error{ErrConnLost, ErrCircuitOpen, ErrTxAborted} {
		if errors.Is(s, driver.ErrBadConn) {
			t.Errorf("%v matches driver.ErrBadConn", s)
		}
	}
	authFail := &pgconn.PgError{Severity: "FATAL", Code: "28P01"}
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{unsafe, true},
		{io.EOF, true},
		{&pgconn.PgError{Code: "23505"}, false},
		{&ConnectError{Attempts: 1, Permanent: true, Err: authFail}, false},
		{&ConnectError{Attempts: 4, Err: syscall.ECONNREFUSED}, true},
	} {
		if got := IsDisconnect(tt.err); got != tt.want {
			t.Errorf("IsDisconnect(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// openMock opens a pgresilient *sql.DB over go-sqlmock, named after the test.
func openMock(t *testing.T, params string, opts ...Option) (*sql.DB, sqlmock.Sqlmock, *Connector) {
	t.Helper()
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	db0, mock, err := sqlmock.NewWithDSN(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db0.Close() })
	dsn := name
	if params != "" {
		dsn += "?" + params
	}
	c, err := NewConnector(dsn, append([]Option{WithDriver(db0.Driver())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return db, mock, c
}

// TestSqlmockNew: a mock made with sqlmock.New (not NewWithDSN) cannot be
// found by the DSN given to NewConnector: the error says what to do instead of
// go-sqlmock's bare "expected a connection to be available".
func TestSqlmockNew(t *testing.T) {
	db0, _, err := sqlmock.New()
	if err != nil {
		t.Fatal(err)
	}
	defer db0.Close()
	c, err := NewConnector("orders_test?breaker=off", WithDriver(db0.Driver()))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	err = db.Ping()
	if err == nil || !strings.Contains(err.Error(), "sqlmock.NewWithDSN(dsn)") || !strings.Contains(err.Error(), sqlmockNoConn) {
		t.Errorf("Ping over sqlmock.New: %v, want the advice to use sqlmock.NewWithDSN and go-sqlmock's own words", err)
	}
}

// TestErrBadConnRule checks that database/sql retries only what never reached
// the server: each case scripts exactly the expectations that may be used, so
// a retry of an unsafe statement fails ExpectationsWereMet or the call.
func TestErrBadConnRule(t *testing.T) {
	resetOp := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	tests := []struct {
		name        string
		errs        []error // what successive attempts return
		wantExecs   int     // expectations consumed
		wantLost    bool    // errors.Is(err, ErrConnLost)
		wantBadConn bool    // errors.Is(err, driver.ErrBadConn)
		wantPg      string  // SQLSTATE reachable with errors.As
	}{
		{name: "EOF after send", errs: []error{io.EOF}, wantExecs: 1, wantLost: true},
		{name: "reset after send", errs: []error{resetOp}, wantExecs: 1, wantLost: true},
		{name: "terminated backend", errs: []error{&pgconn.PgError{Severity: "FATAL", Code: "57P01"}}, wantExecs: 1, wantLost: true, wantPg: "57P01"},
		{name: "unique violation", errs: []error{&pgconn.PgError{Severity: "ERROR", Code: "23505"}}, wantExecs: 1, wantPg: "23505"},
		{name: "bad conn is retried", errs: []error{driver.ErrBadConn, nil}, wantExecs: 2},
		{name: "bad conn every time", errs: []error{driver.ErrBadConn, driver.ErrBadConn, driver.ErrBadConn}, wantExecs: 3, wantBadConn: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, mock, _ := openMock(t, "breaker=off")
			for _, e := range tt.errs {
				ex := mock.ExpectExec("insert into t").WillReturnResult(sqlmock.NewResult(0, 1))
				if e != nil {
					ex.WillReturnError(e)
				}
			}
			_, err := db.Exec("insert into t values (1)")
			if got := errors.Is(err, ErrConnLost); got != tt.wantLost {
				t.Errorf("Is(ErrConnLost) = %v, want %v (err %v)", got, tt.wantLost, err)
			}
			if got := errors.Is(err, driver.ErrBadConn); got != tt.wantBadConn {
				t.Errorf("Is(ErrBadConn) = %v, want %v (err %v)", got, tt.wantBadConn, err)
			}
			var pgErr *pgconn.PgError
			if tt.wantPg != "" && (!errors.As(err, &pgErr) || pgErr.Code != tt.wantPg) {
				t.Errorf("errors.As(*PgError) = %v, want SQLSTATE %s", err, tt.wantPg)
			}
			if tt.wantPg == "" && !tt.wantLost && !tt.wantBadConn && err != nil {
				t.Errorf("unexpected error %v", err)
			}
			if err := mock.ExpectationsWereMet(); err != nil {
				t.Errorf("expectations: %v", err)
			}
		})
	}
}

// TestBrokenConnNeverReused checks that a connection that returned
// ErrConnLost is discarded (IsValid false) and that a healthy one is kept.
func TestBrokenConnNeverReused(t *testing.T) {
	fd := &fakeDriver{execErrs: []error{&pgconn.PgError{Code: "23505"}, io.EOF}}
	c, err := NewConnector("fake?breaker=off", WithDriver(fd))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	ctx := context.Background()

	if _, err := db.ExecContext(ctx, "insert"); err == nil {
		t.Fatal("want the unique violation")
	}
	if _, err := db.ExecContext(ctx, "insert"); !errors.Is(err, ErrConnLost) {
		t.Fatalf("want ErrConnLost, got %v", err)
	}
	if got := fd.opened.Load(); got != 1 {
		t.Fatalf("opened %d connections before the loss, want 1", got)
	}
	if got := fd.execs.Load(); got != 2 {
		t.Fatalf("the server saw %d statements, want 2 (no retry)", got)
	}
	if _, err := db.ExecContext(ctx, "insert"); err != nil {
		t.Fatal(err)
	}
	if got, want := fd.opened.Load(), int64(2); got != want {
		t.Errorf("opened %d connections, want %d: the broken one was reused", got, want)
	}
	if got := fd.closed.Load(); got != 1 {
		t.Errorf("closed %d connections, want 1", got)
	}
	if got := db.Stats().OpenConnections; got != 1 {
		t.Errorf("open connections = %d, want 1", got)
	}
}

// TestResetSessionForwarded checks that the wrapped driver's ResetSession
// runs on reuse, and that its failure discards the connection and retries the
// statement elsewhere, safely: nothing had been sent.
func TestResetSessionForwarded(t *testing.T) {
	fd := &fakeDriver{}
	c, err := NewConnector("fake", WithDriver(fd))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	db.SetMaxOpenConns(1)
	for range 3 {
		if _, err := db.Exec("insert"); err != nil {
			t.Fatal(err)
		}
	}
	if got := fd.resets.Load(); got != 2 {
		t.Errorf("ResetSession ran %d times, want 2 (on each reuse)", got)
	}
	fd.mu.Lock()
	fd.resetErr = errors.New("session is toast")
	fd.mu.Unlock()
	_, err = db.Exec("insert")
	// The fake's reset fails on every reused conn, but the third attempt
	// uses a new connection, which is not reset.
	if err != nil {
		t.Fatalf("want database/sql to retry on a new connection, got %v", err)
	}
	if got := fd.execs.Load(); got != 4 {
		t.Errorf("the server saw %d statements, want 4", got)
	}
}

// noMinSpan lets a test of the breaker's counting open it on
// breaker_failures failures however close together they come.
func noMinSpan(c *Connector) {
	c.breaker.mu.Lock()
	c.breaker.minSpan = 0
	c.breaker.mu.Unlock()
}

// waitBreaker waits up to 10s for c's breaker to be in state want.
func waitBreaker(t *testing.T, c *Connector, want BreakerState) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c.Stats().Breaker != want {
		if time.Now().After(deadline) {
			t.Fatalf("breaker %v after 10s, want %v", c.Stats().Breaker, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestConnectRetries scripts connection failures.
func TestConnectRetries(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	authFail := &pgconn.PgError{Severity: "FATAL", Code: "28P01", Message: "password authentication failed"}
	tests := []struct {
		name         string
		params       string
		errs         []error
		wantErr      bool
		wantPerm     bool
		wantConnects int64
		wantBreaker  BreakerState
		connected    bool // the Connector had a working connection before
	}{
		{"transient then ok", "connect_retries=3&connect_backoff=1ms&connect_backoff_max=2ms&breaker_failures=1", []error{refused, refused}, false, false, 3, BreakerClosed, false},
		{"retries exhausted", "connect_retries=2&connect_backoff=1ms&connect_backoff_max=2ms&breaker_failures=2", []error{refused, refused, refused, refused}, true, false, 3, BreakerClosed, true},
		{"no retries", "connect_retries=0&breaker_failures=1", []error{refused}, true, false, 1, BreakerClosed, true},
		// Before the first working connection, a refusal is a database
		// that may still be starting: waited out, connect_retries or not.
		{"before the first connection", "connect_retries=0&connect_backoff=1ms&connect_backoff_max=2ms&breaker_failures=1", []error{refused, refused, refused, refused}, false, false, 5, BreakerClosed, false},
		{"starting up", "connect_retries=1&connect_backoff=1ms", []error{&pgconn.PgError{Severity: "FATAL", Code: "57P03"}}, false, false, 2, BreakerClosed, false},
		{"auth failure is permanent", "connect_retries=5&connect_backoff=1ms&breaker_failures=1", []error{authFail}, true, true, 1, BreakerClosed, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd := &fakeDriver{connectErrs: tt.errs}
			c, err := NewConnector("fake?"+tt.params, WithDriver(fd))
			if err != nil {
				t.Fatal(err)
			}
			db := sql.OpenDB(c)
			defer db.Close()
			c.connected.Store(tt.connected)
			err = db.Ping()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Ping: %v, want error %v", err, tt.wantErr)
			}
			var ce *ConnectError
			if tt.wantErr && !errors.As(err, &ce) {
				t.Fatalf("want a *ConnectError, got %T %v", err, err)
			}
			if tt.wantErr && ce.Permanent != tt.wantPerm {
				t.Errorf("Permanent = %v, want %v", ce.Permanent, tt.wantPerm)
			}
			if tt.wantErr && errors.Is(err, driver.ErrBadConn) {
				t.Errorf("a connect error matches ErrBadConn: database/sql would retry it")
			}
			if got := fd.connects.Load(); got != tt.wantConnects {
				t.Errorf("connect attempts = %d, want %d", got, tt.wantConnects)
			}
			if got := c.Stats().Breaker; got != tt.wantBreaker {
				t.Errorf("breaker = %v, want %v (one call counts once)", got, tt.wantBreaker)
			}
		})
	}
}

func TestBackoffBounds(t *testing.T) {
	base, max := 10*time.Millisecond, 80*time.Millisecond
	for n := range 10 {
		ceil := min(base<<n, max)
		for range 200 {
			if d := backoff(n, base, max); d < 0 || d > ceil {
				t.Fatalf("backoff(%d) = %v, outside [0, %v]", n, d, ceil)
			}
		}
	}
}

// recorder is a user interceptor that records the order of calls and the
// errors it sees.
type recorder struct {
	sqlmw.NullInterceptor
	name string
	log  *[]string
	mu   *sync.Mutex
}

func (r recorder) ConnExecContext(ctx context.Context, conn driver.ExecerContext, q string, args []driver.NamedValue) (driver.Result, error) {
	r.mu.Lock()
	*r.log = append(*r.log, r.name+">")
	r.mu.Unlock()
	res, err := conn.ExecContext(ctx, q, args)
	r.mu.Lock()
	*r.log = append(*r.log, fmt.Sprintf("<%s lost=%v", r.name, errors.Is(err, ErrConnLost)))
	r.mu.Unlock()
	return res, err
}

func TestUserInterceptorsOrder(t *testing.T) {
	var (
		log []string
		mu  sync.Mutex
	)
	db, mock, _ := openMock(t, "", WithInterceptor(recorder{name: "a", log: &log, mu: &mu}, recorder{name: "b", log: &log, mu: &mu}))
	mock.ExpectExec("x").WillReturnError(io.EOF)
	if _, err := db.Exec("x"); !errors.Is(err, ErrConnLost) {
		t.Fatalf("want ErrConnLost, got %v", err)
	}
	got := strings.Join(log, " ")
	if want := "a> b> <b lost=true <a lost=true"; got != want {
		t.Errorf("calls %q, want %q: first interceptor outermost, both seeing ErrConnLost", got, want)
	}
}

// TestNoPasswordInErrors checks errors of the connect path against a
// password-bearing DSN.
func TestNoPasswordInErrors(t *testing.T) {
	const pw = "Sup3rSecretPassw0rd"
	fd := &fakeDriver{connectErrs: []error{&pgconn.PgError{Severity: "FATAL", Code: "28P01", Message: "password authentication failed for user \"app\""}}}
	c, err := NewConnector("postgres://app:"+pw+"@127.0.0.1:1/app?breaker_failures=2", WithDriver(fd))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	err = db.Ping()
	if err == nil || strings.Contains(err.Error(), pw) {
		t.Fatalf("error %v: want an error without the password", err)
	}
	if _, err := NewConnector("postgres://app:" + pw + "@127.0.0.1:1/app?breaker_failures=x"); err == nil || strings.Contains(err.Error(), pw) {
		t.Fatalf("config error %v: want an error without the password", err)
	}
}

func TestPgxConnRejectsOthers(t *testing.T) {
	db, _, _ := openMock(t, "")
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = conn.Raw(func(dc any) error {
		if _, ok := dc.(interface{ Unwrap() driver.Conn }); !ok {
			t.Errorf("Raw hands %T, which has no Unwrap", dc)
		}
		_, err := PgxConn(dc)
		return err
	})
	if !errors.Is(err, errNotPgx) {
		t.Errorf("PgxConn over sqlmock: %v, want errNotPgx", err)
	}
}

// TestQueryTimeoutLabelsOnlyItsOwnDeadline: with query_timeout set, an error
// that is not the deadline firing (an SQL error, a reset) must not be
// reported as "query_timeout exceeded".
func TestQueryTimeoutLabelsOnlyItsOwnDeadline(t *testing.T) {
	for _, cause := range []error{&pgconn.PgError{Severity: "ERROR", Code: "23505"}, io.EOF} {
		fd := &fakeDriver{execErrs: []error{cause}}
		c, err := NewConnector("fake?breaker=off&query_timeout=5s", WithDriver(fd))
		if err != nil {
			t.Fatal(err)
		}
		db := sql.OpenDB(c)
		_, err = db.Exec("insert")
		db.Close()
		if err == nil || strings.Contains(err.Error(), "query_timeout") || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("cause %v: got %v, want no query_timeout label", cause, err)
		}
	}
}
