package pgresilient

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestQueryTimeoutUnderCallerDeadline: query_timeout bounds a statement even
// when the caller's context has a later deadline of its own (a request
// handler's, typically), so a blackhole fails within query_timeout and counts
// against the breaker, instead of waiting out every caller's deadline
// unnoticed.
func TestQueryTimeoutUnderCallerDeadline(t *testing.T) {
	c := needCluster(t)
	proxy := newProxy(t, c)
	db, cn := outageDB(t, c.DSNAt(proxy.Addr())+"&query_timeout=300ms&breaker_failures=1&breaker_cooldown=1h")
	db.SetMaxOpenConns(1)
	for range 2 { // the second use is the first reuse, which verifies: the statement below will not
		if err := db.Ping(); err != nil {
			t.Fatal(err)
		}
	}
	proxy.Freeze()
	defer proxy.Thaw()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := db.ExecContext(ctx, "select 1")
	if ctx.Err() != nil {
		t.Fatalf("the caller's 5s deadline fired first: %v", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "query_timeout") {
		t.Errorf("got %v, want query_timeout's deadline", err)
	}
	// A statement's timeout counts (one failure: a slow query must not
	// open the breaker at once); the next call's connection attempt times
	// out too, which opens it at once.
	if _, err := db.ExecContext(ctx, "select 1"); !errors.Is(err, ErrCircuitOpen) {
		t.Errorf("next call: %v, want ErrCircuitOpen", err)
	}
	if s := cn.Stats().Breaker; s == BreakerClosed {
		t.Errorf("breaker %v after a statement and a connection attempt timed out on a frozen network, want open", s)
	}
}
