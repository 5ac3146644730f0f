package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
	"net"
	"reflect"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// This file keeps each connection on a server of the role it was opened
// for, across a change of primary: a demoted primary (read-only, or turned
// into a standby) whose pooled connections would otherwise fail every write
// with 25006 until they are recycled.
//
// PostgreSQL 14 and later report in_hot_standby and
// default_transaction_read_only to every session as ParameterStatus, so the
// check reads what pgconn already received: no round trip. An idle session
// receives the change when it next runs something (the server applies a
// reload between commands), which is why a 25006 also invalidates the pool:
// every pooled connection is then pinged before reuse, and the ping brings
// its ParameterStatus in.

// ErrRoleChanged is matched by errors returned when the server refused a
// statement because it no longer has the role the connection was opened for:
// a primary demoted or turned into a standby (SQLSTATE 25006, "cannot execute
// ... in a read-only transaction"). The server ran nothing of the refused
// statement. Outside a transaction the error also matches driver.ErrBadConn,
// so database/sql runs the statement again on another connection (which
// pgx opens on the new primary); callers see it only when every attempt
// failed. Inside a transaction the transaction is gone, nothing of it
// committed, and running it again from BEGIN is safe.
var ErrRoleChanged = errors.New("pgresilient: server changed role")

// RoleChangedError reports a statement refused by a server that changed
// role. It matches ErrRoleChanged and wraps the server's *pgconn.PgError;
// outside a transaction it also matches driver.ErrBadConn.
type RoleChangedError struct {
	Op   Op    // the refused operation
	InTx bool  // the connection was inside a transaction, which is now gone
	Err  error // the server's error, SQLSTATE 25006
}

// Error says what was refused and what is safe.
func (e *RoleChangedError) Error() string {
	what := ": the server no longer accepts writes (it changed role), nothing was done: "
	if e.InTx {
		what = ": the server no longer accepts writes (it changed role); the transaction is gone, nothing of it committed, running it again is safe: "
	}
	return "pgresilient: " + string(e.Op) + what + errString(e.Err)
}

// Unwrap returns ErrRoleChanged and the server's error and, outside a
// transaction, driver.ErrBadConn.
func (e *RoleChangedError) Unwrap() []error {
	if e.InTx {
		return []error{ErrRoleChanged, e.Err}
	}
	return []error{ErrRoleChanged, e.Err, driver.ErrBadConn}
}

// wantRole is the role a Connector's connections are opened for: what
// target_session_attrs asked (pgx checks it only when a connection opens).
type wantRole uint8

const (
	roleAny       wantRole = iota // no target_session_attrs: keep the role the connection found
	roleReadWrite                 // read-write: the server must accept writes
	rolePrimary                   // primary: the server must not be a standby
	roleStandby                   // standby, prefer-standby, read-only: reads on purpose, never churned
)

// targetRole reads target_session_attrs (from the DSN or PGTARGETSESSIONATTRS)
// off the ConnConfig pgx parsed: pgx keeps it only as its ValidateConnect
// function, one of pgconn's exported validators.
func targetRole(cc *pgx.ConnConfig) wantRole {
	if cc == nil || cc.ValidateConnect == nil {
		return roleAny
	}
	fn := reflect.ValueOf(cc.ValidateConnect).Pointer()
	is := func(v pgconn.ValidateConnectFunc) bool { return reflect.ValueOf(v).Pointer() == fn }
	switch {
	case is(pgconn.ValidateConnectTargetSessionAttrsReadWrite):
		return roleReadWrite
	case is(pgconn.ValidateConnectTargetSessionAttrsPrimary):
		return rolePrimary
	case is(pgconn.ValidateConnectTargetSessionAttrsStandby),
		is(pgconn.ValidateConnectTargetSessionAttrsPreferStandby),
		is(pgconn.ValidateConnectTargetSessionAttrsReadOnly):
		return roleStandby
	}
	return roleAny // a ValidateConnect of the user's own
}

// openedRole is what a connection's server reported when it opened.
type openedRole struct {
	standby bool // in_hot_standby was on
}

func roleOf(pc *pgconn.PgConn) openedRole {
	return openedRole{standby: pc.ParameterStatus("in_hot_standby") == "on"}
}

// roleChanged reports whether the server of pc no longer has the role the
// connection was opened for, from the ParameterStatus values received so
// far. A session read-only on purpose (a role's or the session's
// default_transaction_read_only, a DSN aimed at a standby) counts only with
// target_session_attrs=read-write, which asked for writes.
func (c *baseConn) roleChanged() bool {
	pc := c.pgConn()
	if pc == nil || c.owner.role == roleStandby || c.owner.role == roleAny && c.opened.standby {
		return false // reads on purpose, or a standby from the start: nothing to lose
	}
	// One or two map lookups of what pgconn already received, on every
	// checkout: no round trip.
	if pc.ParameterStatus("in_hot_standby") == "on" {
		return true
	}
	return c.owner.role == roleReadWrite && pc.ParameterStatus("default_transaction_read_only") == "on"
}

// singleStatement reports whether query holds at most one statement: no ';'
// but trailing ones. A ';' inside a literal or a comment counts too, which
// errs on the safe side. A prepared statement (query "") is one statement.
func singleStatement(query string) bool {
	q := strings.TrimRight(query, " \t\r\n;")
	return !strings.Contains(q, ";")
}

// hostOrder remembers the host that last served a connection of the wanted
// role, so that new connections try it first: with a multi-host DSN whose
// first host is dead or blackholed, an outage then costs one connect_timeout,
// not one per new connection.
type hostOrder struct {
	c *Connector
}

// before moves the host that last served first in cfg's host list. It runs
// as pgx's BeforeConnect hook, on pgx's copy of the config.
func (h hostOrder) before(ctx context.Context, cfg *pgx.ConnConfig) error {
	last := h.c.lastHost.Load()
	if last == nil || len(cfg.Fallbacks) == 0 {
		return nil
	}
	type hostPort struct {
		host string
		port uint16
		fb   *pgconn.FallbackConfig
	}
	hosts := make([]hostPort, 0, 1+len(cfg.Fallbacks))
	hosts = append(hosts, hostPort{cfg.Host, cfg.Port, &pgconn.FallbackConfig{Host: cfg.Host, Port: cfg.Port, TLSConfig: cfg.TLSConfig}})
	for _, fb := range cfg.Fallbacks {
		hosts = append(hosts, hostPort{fb.Host, fb.Port, fb})
	}
	at := -1
	for i, hp := range hosts {
		if net.JoinHostPort(hp.host, strconv.Itoa(int(hp.port))) == *last {
			at = i
			break
		}
	}
	if at <= 0 {
		return nil // first already, or not found (a name that resolved to it: left as written)
	}
	// The last good host first, then the others in their order. pgconn
	// tries Host/Port/TLSConfig first, then Fallbacks (where the same host
	// may appear again, with another TLS setting: sslmode=prefer).
	first := hosts[at]
	rest := make([]*pgconn.FallbackConfig, 0, len(hosts)-1)
	for i, hp := range hosts {
		if i != at {
			rest = append(rest, hp.fb)
		}
	}
	cfg.Host, cfg.Port, cfg.TLSConfig = first.fb.Host, first.fb.Port, first.fb.TLSConfig
	cfg.Fallbacks = rest
	return nil
}

// errWrongRole is matched by a connection attempt's error when a server
// answered but failed target_session_attrs's check: a standby, or a
// read-only server under read-write. That is a change of primary under way,
// not an outage: the breaker counts it neither as a failure nor as a
// success (measured in TestFailoverSwitchover and TestFailoverKill: counted
// as failures, five of them opened the breaker while no server accepted
// writes, and it then refused writes for up to 0.9 s after the new primary
// did).
var errWrongRole = errors.New("pgresilient: the server answered, but not with the role target_session_attrs asks for")

// wrongRoleError is pgx's refusal, marked as errWrongRole.
type wrongRoleError struct{ err error }

func (e *wrongRoleError) Error() string   { return e.err.Error() }
func (e *wrongRoleError) Unwrap() []error { return []error{e.err, errWrongRole} }

// tagRole wraps cc's ValidateConnect so that its refusals match
// errWrongRole; the network's, the server's and the context's errors during
// the check pass unchanged.
func tagRole(cc *pgx.ConnConfig) {
	v := cc.ValidateConnect
	if v == nil {
		return
	}
	cc.ValidateConnect = func(ctx context.Context, pc *pgconn.PgConn) error {
		err := v(ctx, pc)
		if err == nil || pc.IsClosed() {
			return err
		}
		var pgErr *pgconn.PgError
		var ne net.Error
		if errors.As(err, &pgErr) || errors.As(err, &ne) || ctx.Err() != nil {
			return err
		}
		return &wrongRoleError{err}
	}
}
