package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ngrok/sqlmw"
)

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
