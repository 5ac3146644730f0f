package pgresilient

// This file holds the Connector: how it is built from a DSN or a Config,
// how it opens a connection (the breaker, the interceptors, a probe's spare),
// and how it closes.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// Connector opens pgresilient connections. Use it with sql.OpenDB when Go-only
// options are needed; it is safe for concurrent use. One Connector serves one
// *sql.DB.
type Connector struct {
	cfg    Config  // effective values
	driver *Driver // what Driver returns: it leads ConnectorOf back here
	opts   options
	logger *slog.Logger

	inner driver.Connector // pgx's, or the wrapped driver's
	chain driver.Connector // the interceptor chain over baseConnector
	mon   *monitor         // the host monitor; nil when wrapping another driver than pgx

	// gen is bumped whenever a connection learns that the server went away;
	// pooled connections of an older generation are verified before reuse.
	gen           atomic.Uint64
	invalidatedAt atomic.Int64 // unix nanoseconds of the last bump of gen
	verifyTimeout time.Duration
	stats         counters
	role          wantRole               // what target_session_attrs asked for
	lastHost      atomic.Pointer[string] // host:port that last served a connection, tried first

	liveMu sync.Mutex
	live   map[*baseConn]struct{} // open connections, for sweep
	paths  map[string]*pathState  // per server address: idle.go
	// idlePing, idleProofMax and peekAfter: idle.go's constants;
	// notYetMax: reconnect.go's notYetBackoffMax (tests change them).
	idlePing, idleProofMax, peekAfter, notYetMax time.Duration
	breaker                                      *breaker // nil with breaker=off

	// connected is set by the first working connection: from then on the
	// breaker counts connection attempts, not calls.
	connected atomic.Bool
	budget    atomic.Pointer[callBudget] // the last call whose reuse check timed out
	// reuseFailedAt: unix nanoseconds of the last failed reuse check the
	// breaker counted.
	reuseFailedAt atomic.Int64

	// The waits of wait.go: life ends with Close, which releases every
	// call waiting and waits for the goroutines in wg; connecting holds a
	// slot per connection attempt under way (maxConnecting); idle wakes
	// calls waiting out a "not yet" when a pooled connection comes free;
	// served wakes them when a connection attempt succeeds; serving is
	// PgBouncer's shared check (awaitServing).
	life       context.Context
	stop       context.CancelFunc
	wg         sync.WaitGroup
	connecting chan struct{}
	idle       idleSignal
	served     broadcast
	serving    servingCheck

	// execMode is set once a transaction pooler refused one of pgx's own
	// cached statements (stale.go): new connections then use
	// QueryExecModeExec instead of pgx's default statement cache.
	execMode atomic.Bool

	// spare is a probe's connection, for the first call after the
	// breaker closed (keepSpare, takeSpare).
	spare atomic.Pointer[spareConn]
}

// defaultVerifyTimeout bounds the ping that verifies a pooled connection
// before reuse, unless the caller's context ends sooner.
const defaultVerifyTimeout = 2 * time.Second

// NewConnector parses dsn (any DSN pgx accepts, with pgresilient's parameters
// mixed in) and returns a Connector for sql.OpenDB.
func NewConnector(dsn string, opts ...Option) (*Connector, error) {
	o, err := applyOptions(opts)
	if err != nil {
		return nil, err
	}
	if o.driver != nil {
		cfg, rest, err := parseForeignDSN(dsn)
		if err != nil {
			return nil, err
		}
		return newConnector(cfg, rest, o)
	}
	cfg, err := ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	return newConnector(cfg, "", o)
}

// NewConnectorConfig returns a Connector for a Config built or adjusted in
// Go. cfg.ConnConfig is required (pgx.ParseConfig makes one) unless WithDriver
// is given, and is copied: later changes to it have no effect. Zero fields
// mean the defaults; invalid values are a *ConfigError.
func NewConnectorConfig(cfg Config, opts ...Option) (*Connector, error) {
	o, err := applyOptions(opts)
	if err != nil {
		return nil, err
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if o.driver == nil && cfg.ConnConfig == nil {
		return nil, errNoConnConfig
	}
	return newConnector(&cfg, "", o)
}

var errNoConnConfig = errors.New("pgresilient: Config.ConnConfig is nil (make one with pgx.ParseConfig)")

func applyOptions(opts []Option) (options, error) {
	var o options
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&o); err != nil {
			return options{}, err
		}
	}
	return o, nil
}

// newConnector builds a Connector; rest is the DSN handed to a driver set
// with WithDriver.
func newConnector(cfg *Config, rest string, o options) (*Connector, error) {
	c := &Connector{cfg: cfg.effective(), opts: o, logger: o.logger}
	c.driver = &Driver{c: c}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	c.verifyTimeout = defaultVerifyTimeout
	c.life, c.stop = context.WithCancel(context.Background())
	c.connecting = make(chan struct{}, maxConnecting)
	c.idle.init()
	c.served.init()
	c.idlePing, c.idleProofMax, c.peekAfter = idlePingAfter, idleProofMax, peekAfter
	c.notYetMax = notYetBackoffMax
	if c.cfg.QueryTimeout > 0 && c.cfg.QueryTimeout < c.verifyTimeout {
		c.verifyTimeout = c.cfg.QueryTimeout
	}

	if o.driver != nil {
		if dc, ok := o.driver.(driver.DriverContext); ok {
			inner, err := dc.OpenConnector(rest)
			if err != nil {
				return nil, err
			}
			c.inner = inner
		} else {
			c.inner = dsnConnector{dsn: rest, d: o.driver}
		}
	} else {
		// pgresilient decides when a reused connection is pinged (verify,
		// under a deadline); pgx's own ping would run without one.
		popts := []stdlib.OptionOpenDB{stdlib.OptionShouldPing(neverPing)}
		c.role = targetRole(cfg.ConnConfig)
		order := hostOrder{c}.before
		user := o.beforeConnect
		popts = append(popts, stdlib.OptionBeforeConnect(func(ctx context.Context, cc *pgx.ConnConfig) error {
			if err := order(ctx, cc); err != nil {
				return err
			}
			if user != nil {
				if err := user(ctx, cc); err != nil {
					return err
				}
			}
			c.connMode(cc)
			return nil
		}))
		if o.afterConnect != nil {
			popts = append(popts, stdlib.OptionAfterConnect(o.afterConnect))
		}
		pcfg := cfg.ConnConfig.Copy()
		countWrites(pcfg, newTCPOptions(&c.cfg))
		pcfg.BuildContextWatcherHandler = watchWithCancel
		tagRole(pcfg)
		c.inner = stdlib.GetConnector(*pcfg, popts...)
		c.mon = newMonitor(c, cfg.ConnConfig)
	}

	if !c.cfg.DisableBreaker {
		c.breaker = newBreaker(breakerAddr(cfg.ConnConfig), c.cfg.BreakerFailures, c.cfg.BreakerCooldown, c.logger, o.stateChange)
		c.breaker.probeFn = c.probe
		// Connections handed out unverified while open are verified on
		// their next reuse.
		c.breaker.onClose = func() { c.gen.Add(1) }
		c.breaker.refused = c.awaitServing
	}
	if len(o.interceptors) > 0 {
		c.chain = buildChain(baseConnector{c}, o.interceptors)
	}
	return c, nil
}

// Config returns the configuration in effect, defaults filled in, in
// Config's own terms (no retries is ConnectRetries -1): it can be handed to
// NewConnectorConfig again. Its ConnConfig must not be modified.
func (c *Connector) Config() Config {
	cfg := c.cfg
	if cfg.ConnectRetries == 0 {
		cfg.ConnectRetries = -1
	}
	return cfg
}

// Connect opens a connection. It implements driver.Connector.
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	if c.chain == nil {
		// No interceptor: no chain to carry the baseConn up through.
		bc, err := c.openBase(ctx)
		if err != nil {
			return nil, err
		}
		return newConn(bc, bc), nil
	}
	slot := new(baseSlot)
	top, err := c.chain.Connect(context.WithValue(ctx, baseSlotKey{}, slot))
	if err != nil {
		return nil, err
	}
	if slot.conn == nil {
		// An interceptor returned a connection that did not come from ours.
		_ = top.Close()
		return nil, errForeignConn
	}
	return newConn(top, slot.conn), nil
}

var errForeignConn = errors.New("pgresilient: an interceptor's ConnectorConnect returned a connection not opened through its argument")

// Driver returns the pgresilient driver. It implements driver.Connector.
func (c *Connector) Driver() driver.Driver { return c.driver }

// ConnectorOf returns the Connector of a pool opened with
// sql.Open("pgresilient", dsn) or sql.OpenDB(connector), for its Stats or a
// Prometheus collector, without rewriting how the pool is opened:
//
//	db, _ := sql.Open("pgresilient", dsn)
//	c, ok := pgresilient.ConnectorOf(db)
//
// It reports false for a pool of another driver, or one whose driver wraps
// pgresilient's (an instrumenting wrapper such as otelsql.Open): keep the
// Connector from NewConnector then. It takes no connection from the pool.
func ConnectorOf(db *sql.DB) (*Connector, bool) {
	d, ok := db.Driver().(*Driver)
	if !ok || d.c == nil {
		return nil, false
	}
	return d.c, true
}

// invalidate records that the server went away (restart, crash, termination,
// network), as a connection last known good at generation from found out:
// every pooled connection older than now is verified before reuse. It
// reports whether that was news: false if another connection reported it
// since this one was last known good, less than sameEvent ago (a restart
// ends every connection at once), which is then neither counted nor logged
// again.
func (c *Connector) invalidate(from uint64, op Op, cause error) (news bool) {
	now := time.Now().UnixNano()
	if !c.gen.CompareAndSwap(from, from+1) {
		if now-c.invalidatedAt.Load() < int64(sameEvent) {
			return false
		}
		c.gen.Add(1) // an older report, of another event
	}
	c.invalidatedAt.Store(now)
	c.stats.invalidations.Add(1)
	c.logger.LogAttrs(context.Background(), slog.LevelInfo, "pgresilient: pool invalidated: pooled connections will be verified before reuse",
		slog.String("op", string(op)), slog.String("cause", logCause(cause)))
	return true
}

// sameEvent is how close together connection failures reported after one
// another must be to count as one event: the connections a restart or a
// network cut ends all fail within it.
const sameEvent = time.Second

// openBase opens the wrapped driver's connection, retrying as configured,
// behind the breaker: while it is open, the call waits for the prober's next
// probe when that is due soon (breaker.wait), and is rejected otherwise. Before the first
// working connection, the call is counted as a whole by what the last
// attempt's error says about the server's reachability; after it, connect
// counts every attempt.
func (c *Connector) openBase(ctx context.Context) (*baseConn, error) {
	if err := c.breaker.wait(ctx, nil); err != nil {
		return nil, err
	}
	counted := c.connected.Load()
	inner, err := c.takeSpare(), error(nil)
	if inner == nil {
		inner, err = c.connect(ctx)
	}
	if err != nil && counted && errors.Is(err, ErrCircuitOpen) {
		// The breaker opened during this call's retries: it waits for the
		// next probe once, as a call finding it open does.
		if c.breaker.awaitProbe(ctx) == nil {
			inner, err = c.connect(ctx)
		}
	}
	if c.breaker != nil && !counted {
		c.breaker.after(breakerConnectClass(connectClass(ctx, err), err), tripCall, err)
	}
	if err != nil {
		return nil, err
	}
	if !counted {
		c.connected.Store(true)
	}
	bc := newBaseConn(c, inner)
	c.track(bc)
	c.mon.start()
	if bc.wire != nil {
		bc.path = c.pathFor(bc.wire.addr)
	}
	bc.openedNow()
	if bc.path != nil {
		if last := c.lastHost.Load(); last == nil || *last != bc.wire.addr {
			addr := bc.wire.addr
			c.lastHost.Store(&addr)
		}
	}
	return bc, nil
}

// probe is the breaker's check of the server while open: a real connection,
// startup included, through the wrapped connector, then kept as the spare
// (keepSpare). It is bounded like a reuse check, and counted in
// Stats.Probes, not in ConnectFailures.
func (c *Connector) probe(ctx context.Context) error {
	ctx, cancel := within(ctx, c.verifyTimeout)
	defer cancel()
	dc, err := c.inner.Connect(ctx)
	if err != nil {
		return err
	}
	c.served.fire()
	c.keepSpare(dc)
	return nil
}

// spareConn is a connection a successful probe opened, kept for the first
// call that needs a new connection once the breaker closed (takeSpare):
// that call, usually one that waited for the probe, need not dial again, and
// a pool serves again one connection startup sooner after an outage. A
// spare no call took within spareFor is closed.
type spareConn struct{ dc driver.Conn }

const spareFor = time.Second

// keepSpare keeps dc as the spare, or closes it if there is one already or
// the Connector is closed.
func (c *Connector) keepSpare(dc driver.Conn) {
	sp := &spareConn{dc: dc}
	if c.life.Err() != nil || !c.spare.CompareAndSwap(nil, sp) {
		_ = dc.Close()
		return
	}
	time.AfterFunc(spareFor, func() {
		if c.spare.CompareAndSwap(sp, nil) {
			_ = dc.Close()
		}
	})
}

// takeSpare returns the spare and forgets it, or nil: one atomic load when
// there is none.
func (c *Connector) takeSpare() driver.Conn {
	if c.spare.Load() == nil {
		return nil
	}
	sp := c.spare.Swap(nil)
	if sp == nil {
		return nil
	}
	c.stats.opened.Add(1)
	return sp.dc
}

// closeSpare closes the spare, if any (Close, once no probe runs).
func (c *Connector) closeSpare() {
	if sp := c.spare.Swap(nil); sp != nil {
		_ = sp.dc.Close()
	}
}

// Close stops the breaker's background prober and waits for it, and
// releases the calls waiting out a refusal, a probe or a slot for a
// connection attempt: they return at once. database/sql calls it from
// DB.Close; it implements io.Closer. Connections still open are not touched
// (DB.Close closes them). A Connector used after Close keeps working, without
// waiting before a retry, but an open breaker then stays open: nothing
// probes any more.
func (c *Connector) Close() error {
	c.stop() // calls waiting (wait.go) return now
	c.breaker.close()
	c.closeSpare()
	c.mon.close()
	c.wg.Wait()
	return nil
}
