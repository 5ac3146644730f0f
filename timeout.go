package pgresilient

import (
	"context"
	"errors"
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

// failTimed is fail for an operation run under c.deadline(ctx): stmtCtx is
// that derived context, possibly cancelled already. Only its deadline having
// fired (a context's error is set once, so a later cancel does not hide it)
// labels the error as query_timeout's.
func (c *baseConn) failTimed(ctx, stmtCtx context.Context, op Op, err error, mark int64) error {
	if ce, ok := c.canceledByServer(ctx, stmtCtx, op, err); ok {
		c.owner.stats.canceled.Add(1)
		if ctx.Err() == nil {
			c.autoRollback(ctx, err) // in a transaction, it is aborted
		}
		return ce
	}
	if stmtCtx != ctx && ctx.Err() == nil && errors.Is(stmtCtx.Err(), context.DeadlineExceeded) {
		err = &timeoutError{d: c.owner.cfg.QueryTimeout, err: err}
	}
	return c.fail(ctx, op, err, mark)
}
