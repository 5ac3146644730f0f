package pgresilient

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgresilient/pgresilient/pgtest"
)

// logCapture is a slog.Handler that keeps every record, and its text form,
// for a test to inspect.
type logCapture struct {
	mu   sync.Mutex
	recs []slog.Record
	text bytes.Buffer
}

func (l *logCapture) Enabled(context.Context, slog.Level) bool { return true }

func (l *logCapture) Handle(ctx context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return slog.NewTextHandler(&l.text, &slog.HandlerOptions{Level: slog.LevelDebug}).Handle(ctx, r)
}

// The records carry all their attributes: pgresilient's loggers are never
// derived with With or WithGroup.
func (l *logCapture) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCapture) WithGroup(string) slog.Handler      { return l }

// find returns the records whose message starts with msg.
func (l *logCapture) find(msg string) []slog.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []slog.Record
	for _, r := range l.recs {
		if strings.HasPrefix(r.Message, msg) {
			out = append(out, r)
		}
	}
	return out
}

func (l *logCapture) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.text.String()
}

func (l *logCapture) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.recs)
}

// attr returns the value of r's attribute key, and whether it has one.
func attr(r slog.Record, key string) (slog.Value, bool) {
	var v slog.Value
	found := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v, found = a.Value, true
			return false
		}
		return true
	})
	return v, found
}

// wantEvent fails the test unless exactly the expected level was used for at
// least one record starting with msg, each carrying the given attributes.
func wantEvent(t *testing.T, logs *logCapture, msg string, level slog.Level, attrs ...string) {
	t.Helper()
	recs := logs.find(msg)
	if len(recs) == 0 {
		t.Errorf("no %q event; the log:\n%s", msg, logs)
		return
	}
	for _, r := range recs {
		if r.Level != level {
			t.Errorf("%q logged at %v, want %v", r.Message, r.Level, level)
		}
		for _, k := range attrs {
			if _, ok := attr(r, k); !ok {
				t.Errorf("%q has no %q attribute", r.Message, k)
			}
		}
	}
}

// TestLogEvents provokes each of the rare events pgresilient logs, with real
// faults, over a connection authenticated by password, and checks the
// message, its level, its attributes, and that the password appears nowhere.
func TestLogEvents(t *testing.T) {
	c := needCluster(t)
	proxy := newProxy(t, c)
	dsn := c.PasswordDSN(proxy.Addr(), pgtest.Password)
	logs := new(logCapture)
	logger := slog.New(logs)
	ctx := context.Background()

	cn, err := NewConnector(dsn+"&breaker_failures=100", WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(cn)
	t.Cleanup(func() { closeAndCheck(t, db) })
	db.SetMaxOpenConns(2)
	db.SetMaxIdleConns(2)

	// An automatic rollback: a statement fails inside a transaction.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "select 1/0"); err == nil {
		t.Fatal("1/0 succeeded")
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	wantEvent(t, logs, "pgresilient: transaction rolled back after a failed statement", slog.LevelDebug, "cause")

	// A connection handed back inside a transaction block.
	sc, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.ExecContext(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	if err := sc.Close(); err != nil {
		t.Fatal(err)
	}
	wantEvent(t, logs, "pgresilient: connection returned to the pool inside a transaction block", slog.LevelWarn, "status")

	// A connection lost mid-statement, with a second one idle in the pool:
	// outcome unknown, the pool invalidated, the idle one discarded on reuse.
	idle, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	busy, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := idle.Close(); err != nil { // back to the pool, idle
		t.Fatal(err)
	}
	time.AfterFunc(200*time.Millisecond, proxy.Cut)
	_, err = busy.ExecContext(ctx, "select pg_sleep(2)")
	if !errors.Is(err, ErrConnLost) {
		t.Fatalf("statement cut mid-flight: %v, want ErrConnLost", err)
	}
	_ = busy.Close()
	wantEvent(t, logs, "pgresilient: connection lost, outcome unknown", slog.LevelWarn, "op", "in_tx", "cause")
	wantEvent(t, logs, "pgresilient: pool invalidated", slog.LevelInfo, "op", "cause")
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("ping after the cut: %v", err)
	}
	wantEvent(t, logs, "pgresilient: discarding pooled connection", slog.LevelDebug, "why")

	// The breaker: open on a refused connection (Warn), probed in the
	// background (Debug only: no Info or Warn per probe), closed by the
	// first probe that connects (Info).
	bcn, err := NewConnector(dsn+"&breaker_failures=1&breaker_cooldown=200ms&connect_retries=0", WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	bdb := sql.OpenDB(bcn)
	t.Cleanup(func() { closeAndCheck(t, bdb) })
	if err := proxy.Refuse(true); err != nil {
		t.Fatal(err)
	}
	if err := bdb.PingContext(ctx); err == nil {
		t.Fatal("ping through a refusing proxy succeeded")
	}
	if err := proxy.Refuse(false); err != nil {
		t.Fatal(err)
	}
	wantEvent(t, logs, "pgresilient: circuit breaker open", slog.LevelWarn, "from", "to", "cooldown")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if bdb.PingContext(ctx) == nil && bcn.Stats().Breaker == BreakerClosed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the breaker is %v 5s after the proxy accepts again", bcn.Stats().Breaker)
		}
	}
	wantEvent(t, logs, "pgresilient: circuit breaker probe", slog.LevelDebug, "ok", "took")
	wantEvent(t, logs, "pgresilient: circuit breaker closed", slog.LevelInfo, "from", "to", "open_for")
	if recs := logs.find("pgresilient: circuit breaker half-open"); len(recs) != 0 {
		t.Errorf("%d half-open events: a probe is logged at Debug only", len(recs))
	}

	if text := logs.String(); strings.Contains(text, pgtest.Password) || strings.Contains(text, dsn) {
		t.Errorf("the log shows the password or the DSN:\n%s", text)
	}
	t.Logf("%d records:\n%s", logs.count(), logs)
}

// TestLogNoArguments: a failed statement's arguments never reach the log,
// even when the server's message quotes them.
func TestLogNoArguments(t *testing.T) {
	c := needCluster(t)
	table := freshTable(t, c, "log_args", DriverName, "(id int)", "")
	logs := new(logCapture)
	cn, err := NewConnector(c.DSN(), WithLogger(slog.New(logs)))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(cn)
	t.Cleanup(func() { closeAndCheck(t, db) })
	ctx := context.Background()

	const secret = "secret-arg-4711"
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tx.ExecContext(ctx, "insert into "+table+" values ($1)", secret)
	if err == nil || !strings.Contains(err.Error(), secret) {
		t.Fatalf("insert of %q into an int column: %v; want the server's 22P02 quoting it", secret, err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	wantEvent(t, logs, "pgresilient: transaction rolled back after a failed statement", slog.LevelDebug, "cause")
	if text := logs.String(); strings.Contains(text, secret) || !strings.Contains(text, "22P02") {
		t.Errorf("want the SQLSTATE and not the argument in the log:\n%s", text)
	}
}

// TestLogSilentByDefault: without WithLogger, nothing reaches slog.Default,
// even for the events that would be warnings.
func TestLogSilentByDefault(t *testing.T) {
	c := needCluster(t)
	proxy := newProxy(t, c)
	logs := new(logCapture)
	prev := slog.Default()
	slog.SetDefault(slog.New(logs))
	t.Cleanup(func() { slog.SetDefault(prev) })

	cn, err := NewConnector(c.DSNAt(proxy.Addr()) + "&breaker_failures=1")
	if err != nil {
		t.Fatal(err)
	}
	noMinSpan(cn) // one failure opens it
	db := sql.OpenDB(cn)
	t.Cleanup(func() { closeAndCheck(t, db) })
	ctx := context.Background()
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(200*time.Millisecond, proxy.Cut)
	if _, err := db.ExecContext(ctx, "select pg_sleep(2)"); !errors.Is(err, ErrConnLost) {
		t.Fatalf("statement cut mid-flight: %v, want ErrConnLost", err)
	}
	// The cut opened the breaker (breaker_failures=1) and invalidated the
	// pool: both would be logged with a logger.
	if s := cn.Stats(); s.ConnLost != 1 || s.Invalidations == 0 || s.BreakerTransitions == 0 {
		t.Fatalf("stats %+v: the cut did not provoke the events this test is about", s)
	}
	if n := logs.count(); n != 0 {
		t.Errorf("%d records reached slog.Default without WithLogger:\n%s", n, logs)
	}
}
