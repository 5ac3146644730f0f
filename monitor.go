package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The host monitor catches a silent server while statements wait on it: a
// network that drops packets without a reset (a blackhole) leaves a read
// waiting for TCP, minutes, when no deadline bounds the statement. Once a
// statement has been in flight longer than the grace, the monitor checks its
// server's address over a connection of its own (a startup, then a ping each
// period), never over the statement's socket. A server that does not answer
// within the bound is declared silent: the sockets of the statements in
// flight on it are closed (they return ErrConnLost, wrapping a
// *HostSilentError), its idle connections are closed, the pool is
// invalidated and the breaker opens. A server that answers, however slowly
// within the bound, or that refuses the check with an error of its own (53300
// when it is full), is not silent: a slow statement on a healthy server is
// never touched.
//
// On the path of a statement the monitor costs two stores to the
// connection's own memory and one load of a shared clock; the scan that finds
// long statements runs every monitorPeriod on its own goroutine, and a check
// runs only while a statement on that address is older than the grace, one at
// most per address.

// monitorPeriod is the scan's period, the monitor's clock tick and the wait
// between two checks of an address. The grace (monitor_grace, 1s by default:
// above nearly every OLTP statement, so that the monitor checks only where it
// might help) is counted in whole periods. The timeout (monitor_timeout,
// 1.5s) leaves a margin for a server, or a client, too busy to answer at once
// (a false silence would end healthy statements), while a blackhole is still
// found within about grace + period + timeout, under 3 s
// (TestMonitorSilentServer).
const monitorPeriod = 250 * time.Millisecond

// HostSilentError is the cause wrapped in the ErrConnLost of a statement whose
// server the host monitor declared silent: a check over a connection of its
// own got no answer within Timeout.
type HostSilentError struct {
	Addr    string        // the server's address, host:port
	Timeout time.Duration // how long the check waited
	Err     error         // the check's error
}

// Error names the server and the check.
func (e *HostSilentError) Error() string {
	return "pgresilient: server " + e.Addr + " silent: no answer to the host monitor's check within " +
		e.Timeout.String() + ": " + errString(e.Err)
}

// Unwrap returns the check's error.
func (e *HostSilentError) Unwrap() error { return e.Err }

// monitor is a Connector's host monitor.
type monitor struct {
	c       *Connector
	base    *pgconn.Config // the server's connection settings, for checks
	grace   uint32         // in ticks
	timeout time.Duration
	period  time.Duration

	tick atomic.Uint32 // the clock statements read: 1 at the start, +1 a period

	mu       sync.Mutex
	running  bool                // the scanner runs
	checking map[string]struct{} // addresses with a check under way
	wanted   map[string]uint32   // the tick a long statement last needed each address
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	checks  atomic.Int64 // checks started (one per address and episode)
	silence atomic.Int64 // addresses declared silent
}

// newMonitor returns c's host monitor, or nil with monitor_grace=off.
func newMonitor(c *Connector, cc *pgx.ConnConfig) *monitor {
	if c.cfg.MonitorGrace < 0 {
		return nil
	}
	m := &monitor{
		c:        c,
		base:     cc.Config.Copy(),
		timeout:  c.cfg.MonitorTimeout,
		period:   monitorPeriod,
		checking: map[string]struct{}{},
		wanted:   map[string]uint32{},
	}
	m.setGrace(c.cfg.MonitorGrace)
	m.tick.Store(1)
	m.ctx, m.cancel = context.WithCancel(context.Background())
	// A check is the monitor's own: any server role, no hooks.
	m.base.ValidateConnect = nil
	m.base.AfterConnect = nil
	m.base.Fallbacks = nil
	m.base.OnNotice = nil
	m.base.OnNotification = nil
	return m
}

// setGrace sets the grace, rounded up to whole periods.
func (m *monitor) setGrace(d time.Duration) {
	m.grace = uint32(max(1, (d+m.period-1)/m.period))
}

// busy records that a statement begins on c, or, with on false, that it
// ended. A nil monitor (another driver than pgx) records nothing.
func (c *baseConn) busy(on bool) {
	m := c.owner.mon
	if m == nil {
		return
	}
	if on {
		c.busyAt.Store(m.tick.Load())
	} else {
		c.busyAt.Store(0)
	}
}

// start runs the scanner, once a Connector has a connection.
func (m *monitor) start() {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.running || m.ctx.Err() != nil {
		return
	}
	m.running = true
	m.wg.Add(1)
	go m.scan()
}

// close stops the scanner and every check, and waits for them.
func (m *monitor) close() {
	if m == nil {
		return
	}
	m.cancel()
	m.wg.Wait()
}

// scan advances the clock each period and starts a check for each address
// with a statement in flight for the grace or longer.
func (m *monitor) scan() {
	defer m.wg.Done()
	t := time.NewTicker(m.period)
	defer t.Stop()
	var addrs []string
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		now := m.tick.Add(1)
		addrs = addrs[:0]
		m.c.liveMu.Lock()
		for bc := range m.c.live {
			if at := bc.busyAt.Load(); at != 0 && now-at >= m.grace && bc.wire != nil && bc.wire.addr != "" {
				addrs = append(addrs, bc.wire.addr)
			}
		}
		m.c.liveMu.Unlock()
		for _, a := range addrs {
			m.want(a, now)
		}
	}
}

// want notes that a long statement waits on addr, and starts its check if
// none is under way.
func (m *monitor) want(addr string, now uint32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.wanted[addr] = now
	if _, ok := m.checking[addr]; ok || m.ctx.Err() != nil {
		return
	}
	m.checking[addr] = struct{}{}
	m.checks.Add(1)
	m.wg.Add(1)
	go m.check(addr)
}

// stillWanted reports whether a long statement needed addr in the last two
// ticks; if not, the check ends.
func (m *monitor) stillWanted(addr string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tick.Load()-m.wanted[addr] <= 2 && m.ctx.Err() == nil {
		return true
	}
	delete(m.checking, addr)
	delete(m.wanted, addr)
	return false
}

// check watches addr while long statements wait on it: a connection of its
// own, then a ping each period. The first check not answered within the
// timeout declares the server silent.
func (m *monitor) check(addr string) {
	defer m.wg.Done()
	var pc *pgconn.PgConn
	defer func() {
		if pc != nil {
			ctx, cancel := context.WithTimeout(context.Background(), m.timeout)
			_ = pc.Close(ctx)
			cancel()
		}
	}()
	for {
		ctx, cancel := context.WithTimeout(m.ctx, m.timeout)
		var err error
		if pc == nil {
			pc, err = pgconn.ConnectConfig(ctx, m.configFor(addr))
		} else if err = pc.Ping(ctx); err != nil {
			pc = nil // pgconn closed it
		}
		expired := errors.Is(ctx.Err(), context.DeadlineExceeded)
		cancel()
		if m.ctx.Err() != nil {
			m.stillWanted(addr)
			return
		}
		if err != nil && silent(err, expired) {
			m.declareSilent(addr, err)
			m.stillWanted(addr) // ends the episode
			return
		}
		// Answered: alive, even if it refused the check (full, starting
		// up: a server that speaks is not silent).
		t := time.NewTimer(m.period)
		select {
		case <-m.ctx.Done():
			t.Stop()
		case <-t.C:
		}
		if !m.stillWanted(addr) {
			return
		}
	}
}

// silent reports whether a check's error is the absence of an answer: its
// deadline expired, or the network timed out. A refusal, a reset or a
// server's error is an answer.
func silent(err error, expired bool) bool {
	if expired || pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// configFor is the check's connection settings: the server's, dialling addr,
// the address the statements' connections reached.
func (m *monitor) configFor(addr string) *pgconn.Config {
	cfg := m.base.Copy()
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, _ string) (net.Conn, error) {
		if strings.HasPrefix(addr, "/") {
			network = "unix"
		}
		return dial(ctx, network, addr)
	}
	return cfg
}

// declareSilent ends what waits on the silent server at addr: the sockets of
// its connections with a statement in flight are closed (the statements
// return ErrConnLost wrapping a *HostSilentError), its idle connections are
// closed, the pool is invalidated and the breaker opens.
func (m *monitor) declareSilent(addr string, err error) {
	c := m.c
	cause := &HostSilentError{Addr: addr, Timeout: m.timeout, Err: err}
	m.silence.Add(1)
	c.logger.LogAttrs(context.Background(), slog.LevelWarn, "pgresilient: server silent: statements on it ended",
		slog.String("addr", addr), slog.Duration("timeout", m.timeout), slog.String("cause", logCause(err)))
	var inFlight []*baseConn
	c.liveMu.Lock()
	for bc := range c.live {
		if bc.wire != nil && bc.wire.addr == addr && bc.busyAt.Load() != 0 {
			inFlight = append(inFlight, bc)
		}
	}
	c.liveMu.Unlock()
	for _, bc := range inFlight {
		bc.silenced.Store(cause)
		_ = bc.wire.Conn.Close() // the statement's read returns at once
	}
	c.sweepAddr(addr, discardLost)
	c.invalidate(c.gen.Load(), OpQuery, cause)
	c.breaker.after(classGone, tripNow, cause)
}

// silencedError is a statement's error after the monitor closed its socket:
// the reason first, then what the statement met.
type silencedError struct {
	cause *HostSilentError
	err   error
}

func (e *silencedError) Error() string { return e.cause.Error() + ": " + errString(e.err) }

// Unwrap returns the cause, and the statement's error unless it is pgx's
// driver.ErrBadConn (the statement's bytes were sent: never a retry).
func (e *silencedError) Unwrap() []error {
	if errors.Is(e.err, driver.ErrBadConn) {
		return []error{e.cause}
	}
	return []error{e.cause, e.err}
}
