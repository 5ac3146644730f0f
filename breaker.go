package pgresilient

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// BreakerState is the state of a Connector's circuit breaker.
type BreakerState int32

// The breaker's states. Closed lets everything through; Open fails every call
// at once; HalfOpen lets one probe through, whose outcome closes or reopens it.
const (
	BreakerClosed BreakerState = iota
	BreakerHalfOpen
	BreakerOpen
	BreakerDisabled // breaker=off
)

// String returns the state's name: "closed", "half-open", "open" or "disabled".
func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerHalfOpen:
		return "half-open"
	case BreakerOpen:
		return "open"
	case BreakerDisabled:
		return "disabled"
	}
	return "BreakerState(" + strconv.Itoa(int(s)) + ")"
}

func fromGobreaker(s gobreaker.State) BreakerState {
	switch s {
	case gobreaker.StateHalfOpen:
		return BreakerHalfOpen
	case gobreaker.StateOpen:
		return BreakerOpen
	}
	return BreakerClosed
}

// CircuitOpenError is returned, without anything being dialled or sent, while
// the breaker is open or while its half-open probe is under way. It matches
// ErrCircuitOpen, never driver.ErrBadConn.
type CircuitOpenError struct {
	NextProbe time.Time // when the breaker lets a probe through; zero while a probe is running
}

// Error says the circuit is open and when the next probe is due.
func (e *CircuitOpenError) Error() string {
	if e.NextProbe.IsZero() {
		return "pgresilient: circuit open: a probe is under way"
	}
	d := time.Until(e.NextProbe).Round(time.Millisecond)
	if d < 0 {
		d = 0
	}
	return "pgresilient: circuit open: the database failed repeatedly; next probe in " + d.String()
}

// Unwrap returns ErrCircuitOpen.
func (e *CircuitOpenError) Unwrap() error { return ErrCircuitOpen }

// errExcluded marks an outcome that is neither a success nor a failure: the
// caller's own cancellation, or a client-side error.
var (
	errOpenState = gobreaker.ErrOpenState
	errExcluded  = errors.New("pgresilient: excluded from breaker counts")
	errFailure   = errors.New("pgresilient: connectivity failure")
)

// breaker is gobreaker with a fast path: in the closed state, a call costs one
// atomic load before and, after a success, one more. gobreaker, whose every
// call takes a mutex, is consulted only for failures, the first success after
// failures, and every call while not closed.
type breaker struct {
	cb       *gobreaker.TwoStepCircuitBreaker[struct{}]
	state    atomic.Int32 // BreakerState, mirrored from gobreaker's transitions
	dirty    atomic.Bool  // a failure was recorded since the last recorded success
	openedAt atomic.Int64 // unix nanoseconds of the last transition to open
	cooldown time.Duration

	logger      *slog.Logger
	onChange    func(from, to BreakerState)
	transitions atomic.Int64
	rejected    atomic.Int64
}

func newBreaker(failures int, cooldown time.Duration, logger *slog.Logger, onChange func(from, to BreakerState)) *breaker {
	b := &breaker{cooldown: cooldown, logger: logger, onChange: onChange}
	n := uint32(failures)
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "pgresilient",
		MaxRequests: 1,
		Timeout:     cooldown,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= n },
		IsExcluded:  func(err error) bool { return err == errExcluded }, //nolint:errorlint // our own sentinel
		// Runs under gobreaker's lock: record, log and notify, never block
		// and never call the breaker.
		OnStateChange: func(_ string, from, to gobreaker.State) {
			f, t := fromGobreaker(from), fromGobreaker(to)
			if t == BreakerOpen {
				b.openedAt.Store(time.Now().UnixNano())
			}
			b.state.Store(int32(t))
			b.dirty.Store(false)
			b.transitions.Add(1)
			level := slog.LevelInfo
			if t == BreakerOpen {
				level = slog.LevelWarn
			}
			b.logger.LogAttrs(context.Background(), level, "pgresilient: circuit breaker "+t.String(),
				slog.String("from", f.String()), slog.String("to", t.String()),
				slog.Duration("cooldown", b.cooldown))
			if b.onChange != nil {
				b.onChange(f, t)
			}
		},
	})
	return b
}

// State returns the current state. An open breaker whose cooldown has passed
// reports half-open, as the next call will find it; reading the state
// changes nothing: gobreaker moves to half-open (and the transition is
// counted and logged) on that call, not on a Stats read or a scrape.
func (b *breaker) State() BreakerState {
	s := BreakerState(b.state.Load())
	if s == BreakerOpen && !b.isOpen() {
		return BreakerHalfOpen
	}
	return s
}

// isOpen reports, cheaply, whether calls are being rejected now.
func (b *breaker) isOpen() bool {
	if BreakerState(b.state.Load()) != BreakerOpen {
		return false
	}
	return time.Now().UnixNano() < b.openedAt.Load()+int64(b.cooldown)
}

// before lets a call through or rejects it. A non-nil probe must be given the
// call's outcome through after (or done). A nil breaker (breaker=off) lets
// everything through; closed, it costs one atomic load.
func (b *breaker) before() (probe func(error), err error) {
	if b == nil || BreakerState(b.state.Load()) == BreakerClosed {
		return nil, nil
	}
	done, err := b.cb.Allow()
	if err != nil {
		return nil, b.openError(err)
	}
	return done, nil
}

func (b *breaker) openError(err error) error {
	b.rejected.Add(1)
	e := &CircuitOpenError{}
	if errors.Is(err, gobreaker.ErrOpenState) {
		e.NextProbe = time.Unix(0, b.openedAt.Load()+int64(b.cooldown))
	}
	return e
}

// done records the outcome of a call that before let through, classified
// by its error. A nil breaker records nothing.
func (b *breaker) done(ctx context.Context, probe func(error), err error) {
	if b == nil {
		return
	}
	if err == nil && probe == nil { // the closed state's success: the common case
		if b.dirty.Load() {
			b.record(nil)
		}
		return
	}
	if de := (*DisconnectError)(nil); errors.As(err, &de) && de.known {
		// The failure of a connection to an event already counted: the
		// breaker counts outages, not the connections one outage ends.
		b.after(probe, classOther)
		return
	}
	b.after(probe, classify(ctx, err))
}

// after records the outcome of a call that before let through.
func (b *breaker) after(probe func(error), class errClass) {
	var outcome error
	switch class {
	case classNone, classServer:
		outcome = nil
	case classGone:
		outcome = errFailure
	default:
		outcome = errExcluded
	}
	if probe != nil {
		probe(outcome)
		return
	}
	switch {
	case outcome == errFailure: //nolint:errorlint // our own sentinel
		b.record(outcome)
	case outcome == nil && b.dirty.Load():
		b.record(nil)
	}
}

func (b *breaker) record(outcome error) {
	done, err := b.cb.Allow()
	if err != nil {
		return // opened meanwhile: the probe decides what comes next
	}
	if outcome != nil {
		b.dirty.Store(true)
	} else {
		b.dirty.Store(false)
	}
	done(outcome)
}

// The breaker gates every call that may reach the server from here, beneath
// the user's interceptors (they see its rejections) and above the error
// model (it counts what the error model concluded). With breaker=off,
// owner.breaker is nil and its methods do nothing.

// gate runs call behind b: rejected at once while b is open, counted by its
// error otherwise. call does not escape: the closure costs no allocation.
func gate[T any](ctx context.Context, b *breaker, call func() (T, error)) (T, error) {
	probe, err := b.before()
	if err != nil {
		var zero T
		return zero, err
	}
	v, err := call()
	b.done(ctx, probe, err)
	return v, err
}
