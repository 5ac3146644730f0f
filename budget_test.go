package pgresilient

import (
	"context"
	"errors"
	"testing"
	"time"
)

// uncomparableCtx is a context whose dynamic type cannot be compared: == on
// two interfaces holding it panics, which sameCtx must survive.
type uncomparableCtx struct {
	context.Context
	_ func()
}

// TestBudgetLeft: query_timeout's budget for one call across database/sql's
// tries. A call without one gets what it asks; the call that spent it gets
// what remains, and nothing once it is spent; another call is not bound by
// it; a context that cannot be compared is never the call's.
func TestBudgetLeft(t *testing.T) {
	c := &Connector{}
	call, cancel := context.WithCancel(context.Background())
	defer cancel()
	other, cancelOther := context.WithCancel(context.Background())
	defer cancelOther()
	if d, ok := c.budgetLeft(call, time.Second); !ok || d != time.Second {
		t.Errorf("no budget: got %v %v, want 1s true", d, ok)
	}
	c.spend(call, time.Now().Add(time.Minute))
	if d, ok := c.budgetLeft(call, time.Second); !ok || d != time.Second {
		t.Errorf("asked for less than remains: got %v %v, want 1s true", d, ok)
	}
	if d, ok := c.budgetLeft(call, time.Hour); !ok || d > time.Minute || d < 50*time.Second {
		t.Errorf("asked for more than remains: got %v %v, want about 1m true", d, ok)
	}
	if d, ok := c.budgetLeft(call, 0); !ok || d > time.Minute || d < 50*time.Second {
		t.Errorf("no bound of its own: got %v %v, want about 1m true", d, ok)
	}
	if d, ok := c.budgetLeft(other, time.Second); !ok || d != time.Second {
		t.Errorf("another call: got %v %v, want 1s true", d, ok)
	}
	c.spend(call, time.Now().Add(-time.Millisecond))
	if d, ok := c.budgetLeft(call, time.Second); ok || d != 0 {
		t.Errorf("spent: got %v %v, want 0 false", d, ok)
	}
	if d, ok := c.budgetLeft(other, time.Second); !ok || d != time.Second {
		t.Errorf("another call, budget spent: got %v %v, want 1s true", d, ok)
	}
	u := uncomparableCtx{Context: call}
	c.spend(u, time.Now().Add(-time.Millisecond))
	if d, ok := c.budgetLeft(u, time.Second); !ok || d != time.Second {
		t.Errorf("uncomparable context: got %v %v, want 1s true (never the same)", d, ok)
	}
	if !errors.Is(errBudgetSpent, context.DeadlineExceeded) {
		t.Errorf("errBudgetSpent is not a context.DeadlineExceeded")
	}
}
