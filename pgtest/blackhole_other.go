//go:build !linux

package pgtest

import (
	"context"
	"errors"
	"testing"
)

// The kernel blackhole needs Linux's network namespaces: elsewhere the API
// exists, so that tests using it compile, and StartBlackholeable fails with
// errNoNetns (NewBlackholeableT skips). See blackhole.go.

// ErrNotRoot is matched (with errors.Is) by StartBlackholeable's error when
// the process is not root.
var ErrNotRoot = errors.New("pgtest: a kernel blackhole needs root (a network namespace, a veth pair, ip rules)")

var errNoNetns = errors.New("pgtest: a kernel blackhole needs Linux (network namespaces)")

// Blackholeable is a throwaway PostgreSQL server whose packets Blackhole
// silences; on Linux only.
type Blackholeable struct {
	Cluster *Cluster
}

// StartBlackholeable fails: it needs Linux.
func StartBlackholeable(context.Context) (*Blackholeable, error) { return nil, errNoNetns }

// NewBlackholeableT skips the test: it needs Linux.
func NewBlackholeableT(t testing.TB) *Blackholeable {
	t.Helper()
	t.Skip(errNoNetns.Error() + ": skipped")
	return nil
}

// Host returns "": see blackhole.go.
func (b *Blackholeable) Host() string { return "" }

// Port returns 0: see blackhole.go.
func (b *Blackholeable) Port() int { return 0 }

// Addr returns "": see blackhole.go.
func (b *Blackholeable) Addr() string { return "" }

// DSN returns "": see blackhole.go.
func (b *Blackholeable) DSN() string { return "" }

// PasswordDSN returns "": see blackhole.go.
func (b *Blackholeable) PasswordDSN(string) string { return "" }

// Blackhole fails: it needs Linux.
func (b *Blackholeable) Blackhole() error { return errNoNetns }

// Restore fails: it needs Linux.
func (b *Blackholeable) Restore() error { return errNoNetns }

// Blackholed reports false.
func (b *Blackholeable) Blackholed() bool { return false }

// Restart fails: it needs Linux.
func (b *Blackholeable) Restart(context.Context, ShutdownMode) error { return errNoNetns }

// Close does nothing.
func (b *Blackholeable) Close() error { return nil }
