package pgresilient

// This file holds query_timeout's budget for one call across database/sql's
// tries: a reuse check that timed out leaves the rest of the call only what
// remains of it.

import (
	"context"
	"time"
)

// errBudgetSpent is a connection attempt not made: a reuse check of the same
// call already timed out, and took all of query_timeout.
var errBudgetSpent error = budgetError{}

type budgetError struct{}

func (budgetError) Error() string {
	return "pgresilient: query_timeout exceeded: this call's reuse check already took it"
}

func (budgetError) Unwrap() error { return context.DeadlineExceeded }

// callBudget is what remains of query_timeout for one call, after one of its
// reuse checks timed out: database/sql passes the same ctx to each attempt
// of a call (another pooled connection, then a new one), which then get only
// what remains, so a blackhole costs a call one query_timeout, not two.
type callBudget struct {
	ctx   context.Context
	until time.Time
}

// spend starts ctx's budget: until is when its first query_timeout ends.
func (c *Connector) spend(ctx context.Context, until time.Time) {
	c.budget.Store(&callBudget{ctx: ctx, until: until})
}

// budgetLeft returns d, or less if ctx's call has a budget, and false if
// that is spent.
func (c *Connector) budgetLeft(ctx context.Context, d time.Duration) (time.Duration, bool) {
	b := c.budget.Load()
	if b == nil || !sameCtx(b.ctx, ctx) {
		return d, true
	}
	left := time.Until(b.until)
	if left <= 0 {
		return 0, false
	}
	if d <= 0 || left < d {
		return left, true
	}
	return d, true
}

// sameCtx compares two contexts by identity; a context of a type that is not
// comparable is never the same.
func sameCtx(a, b context.Context) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}
