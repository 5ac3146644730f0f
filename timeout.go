package pgresilient

import (
	"context"
	"time"
)

// deadline bounds ctx by query_timeout. cancel is never nil.
func (c *baseConn) deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	return within(ctx, c.owner.cfg.QueryTimeout)
}

// within bounds ctx by d from now, unless d is 0 or ctx ends no later
// anyway: the earlier deadline wins, the caller's or ours. cancel is never
// nil.
func within(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return ctx, noCancel
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
		return ctx, noCancel
	}
	return context.WithTimeout(ctx, d)
}

func noCancel() {}

// timeoutError names query_timeout as the reason a statement was cut short.
type timeoutError struct {
	d   time.Duration
	err error
}

func (e *timeoutError) Error() string {
	return "query_timeout " + e.d.String() + " exceeded: " + errString(e.err)
}

func (e *timeoutError) Unwrap() error { return e.err }
