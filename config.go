package pgresilient

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Defaults and limits of the DSN parameters.
const (
	defaultBreakerFailures   = 5
	defaultBreakerCooldown   = time.Second
	defaultConnectRetries    = 3
	defaultConnectBackoff    = 100 * time.Millisecond
	defaultConnectBackoffMax = 5 * time.Second

	maxBreakerFailures = 1_000_000
	maxConnectRetries  = 1000

	// The host monitor (monitor.go; docs/design.md has the measurements).
	defaultMonitorGrace   = time.Second
	defaultMonitorTimeout = 1500 * time.Millisecond

	// TCP settings of each connection's socket: see tcpopts.go, and
	// docs/configuration.md for how the defaults were measured.
	defaultKeepalivesIdle     = 10 * time.Second
	defaultKeepalivesInterval = 5 * time.Second
	defaultKeepalivesCount    = 3
	defaultTCPUserTimeout     = 25 * time.Second

	// Linux's limits (TCP_KEEPIDLE and TCP_KEEPINTVL in seconds, TCP_KEEPCNT
	// probes; TCP_USER_TIMEOUT takes a non-negative int of milliseconds).
	maxKeepalivesSeconds = 32767
	maxKeepalivesCount   = 127
	maxTCPUserTimeoutMs  = 1<<31 - 1
)

// Config is what a DSN can express. Go-only settings (logger, interceptors,
// hooks) are options instead.
//
// The zero value of every field means "the default", so a hand-built Config
// is valid; DefaultConfig shows the defaults. ParseConfig starts from
// DefaultConfig, so the Config it returns shows every value explicitly.
type Config struct {
	// ConnConfig is pgx's parsed connection config, without pgresilient's
	// parameters. It is nil when the connector wraps a driver other than pgx.
	ConnConfig *pgx.ConnConfig

	// DisableBreaker turns the circuit breaker off (DSN breaker=off).
	// Zero value: false, the breaker is on (the default).
	DisableBreaker bool

	// BreakerFailures is the number of consecutive connectivity failures
	// that open the breaker (DSN breaker_failures, 1 to 1000000).
	// Zero value: the default, 5.
	//
	// The count is necessary, not sufficient. Before the Connector's first
	// working connection each failed call counts once. After it, every
	// failed connection attempt and reuse check counts (a call may make
	// several), and the failures must also span at least 500ms from the
	// first of them, so that a fast server restart, which refuses
	// connections for a moment, opens nothing: with breaker_failures=2, a
	// server that went down opens the breaker about 0.5s after the first
	// failure, after however many failed calls fit in that time (10 in
	// one measurement). A connection attempt or reuse check that times out
	// opens it at once. See docs/configuration.md.
	BreakerFailures int

	// BreakerCooldown is the longest wait between two background probes of
	// the server while the breaker is open; they start every ~20ms and back
	// off toward it in a long outage (DSN breaker_cooldown). While calls
	// wait for a probe, probes come at most 35ms apart whatever it says, so
	// that the breaker closes soon after the server serves again. Zero
	// value: the default, 1s.
	BreakerCooldown time.Duration

	// ConnectRetries is the number of extra attempts made when opening a
	// connection fails transiently (DSN connect_retries, 0 to 1000).
	// Zero value: the default, 3. Negative: no retries (DSN
	// connect_retries=0 sets -1).
	ConnectRetries int

	// ConnectBackoff is the delay before the first retry; it doubles on
	// each attempt, with full jitter, up to ConnectBackoffMax (DSN
	// connect_backoff). Zero value: the default, 100ms.
	ConnectBackoff time.Duration

	// ConnectBackoffMax is the ceiling of the retry delay; it must not be
	// below ConnectBackoff (DSN connect_backoff_max). Zero value: the
	// default, 5s.
	ConnectBackoffMax time.Duration

	// QueryTimeout bounds every statement, connection attempt and check:
	// each gets this long, or until the caller's deadline if that comes
	// first (DSN query_timeout). Zero value: no bound of pgresilient's (the
	// default); the host monitor still ends statements on a silent server.
	QueryTimeout time.Duration

	// MonitorGrace is how long a statement (or a COMMIT) waits for its
	// result before the host monitor checks its server over a connection of
	// its own (DSN monitor_grace). A slow statement on a server that
	// answers the check is never touched. Zero value: the default, 1s.
	// Negative: no host monitor (DSN monitor_grace=off).
	MonitorGrace time.Duration

	// MonitorTimeout is how long the host monitor's check waits for the
	// server: unanswered, the server is declared silent and the statements
	// waiting on it end with ErrConnLost (DSN monitor_timeout). Zero value:
	// the default, 1.5s.
	MonitorTimeout time.Duration

	// DisableTxAutoRollback stops pgresilient from rolling a transaction
	// back on the server as soon as a statement in it fails (DSN
	// tx_autorollback=off). Zero value: false, auto-rollback is on (the
	// default).
	DisableTxAutoRollback bool

	// The TCP settings of every connection's socket, libpq's parameters of
	// the same names. With the defaults the kernel ends a connection to a
	// server gone silent (a blackholed network, a host gone without a
	// reset) after about 25 seconds, idle, waiting for a result or with a
	// write unacknowledged, where the system's defaults take over two hours
	// for the first two and about 15 minutes for the third. A healthy
	// server acknowledges keepalive probes, so a long statement is never
	// cut by them. They are set on every TCP socket pgx dials, whatever its
	// DialFunc (not on Unix sockets); on systems other than Linux,
	// TCPUserTimeout has no effect, as in libpq. docs/configuration.md
	// has the measurements.

	// DisableKeepalives turns TCP keepalive probes off (DSN keepalives=0).
	// Zero value: false, keepalives on (the default).
	DisableKeepalives bool

	// KeepalivesIdle is how long a connection must hear nothing from the
	// server before the first keepalive probe (DSN keepalives_idle, whole
	// seconds, 0 to 32767). Zero value: the default, 10s. Negative: left as
	// the dialer set it: the system's setting with a ConnConfig from
	// ParseConfig (DSN keepalives_idle=0, as in libpq), Go's 15s with pgx's
	// own. Rounded up to whole seconds.
	KeepalivesIdle time.Duration

	// KeepalivesInterval is the time between two unanswered keepalive
	// probes (DSN keepalives_interval, whole seconds, 0 to 32767). Zero
	// value: the default, 5s. Negative: left as the dialer set it, as for
	// KeepalivesIdle (DSN keepalives_interval=0). Rounded up to whole
	// seconds.
	KeepalivesInterval time.Duration

	// KeepalivesCount is how many unanswered probes end the connection (DSN
	// keepalives_count, 0 to 127). Zero value: the default, 3. Negative:
	// left as the dialer set it, as for KeepalivesIdle (DSN
	// keepalives_count=0). On Linux a TCPUserTimeout decides instead when
	// it is set: the connection ends at the first probe sent that long
	// after the server was last heard.
	KeepalivesCount int

	// TCPUserTimeout is how long written data may stay unacknowledged
	// before the connection ends (TCP_USER_TIMEOUT, Linux only; DSN
	// tcp_user_timeout, whole milliseconds as in libpq). Zero value: the
	// default, 25s. Negative: none, the system's setting (DSN
	// tcp_user_timeout=0).
	TCPUserTimeout time.Duration
}

// DefaultConfig returns the default settings with every field set
// explicitly: breaker on after 5 failures with a 1s cooldown, 3 connect
// retries with a backoff from 100ms to 5s, no query timeout, transaction
// auto-rollback on, TCP keepalive probes after 10s of silence every 5s, 3 of
// them, and a 25s TCP user timeout. ConnConfig is nil.
func DefaultConfig() Config {
	return Config{
		BreakerFailures:    defaultBreakerFailures,
		BreakerCooldown:    defaultBreakerCooldown,
		ConnectRetries:     defaultConnectRetries,
		ConnectBackoff:     defaultConnectBackoff,
		ConnectBackoffMax:  defaultConnectBackoffMax,
		MonitorGrace:       defaultMonitorGrace,
		MonitorTimeout:     defaultMonitorTimeout,
		KeepalivesIdle:     defaultKeepalivesIdle,
		KeepalivesInterval: defaultKeepalivesInterval,
		KeepalivesCount:    defaultKeepalivesCount,
		TCPUserTimeout:     defaultTCPUserTimeout,
	}
}

// ParseConfig parses a pgx DSN with pgresilient's parameters mixed in. It
// removes them (they never reach pgx, so never the server), parses the rest
// with pgx.ParseConfig, and validates them. The DSN may be a URL
// ("postgres://..." or "postgresql://..."), keyword/value ("host=db
// breaker=off"), or empty (everything from the PG* environment variables).
//
// libpq's TCP parameters (keepalives, keepalives_idle, keepalives_interval,
// keepalives_count, tcp_user_timeout) are pgresilient's: pgx does not know
// them. A key that looks like a misspelling of one of ours or of pgx's
// ("qeury_timeout", "pasword") is an error that suggests the right one,
// rather than a setting sent to the server, which would refuse it at the
// first connection. ConnConfig.DialFunc is a dialer that, unlike pgx's,
// leaves the socket's keepalive settings to the system: each connection's
// socket then gets the TCP settings of the Config.
//
// Every error is a *ConfigError. Its message never contains the DSN or a
// password; when pgx rejected the DSN, the error also unwraps to pgx's
// *pgconn.ParseConfigError, whose own Error text may quote parts of the DSN.
func ParseConfig(dsn string) (*Config, error) {
	rest, params, err := splitPgxDSN(dsn)
	if err != nil {
		return nil, err
	}
	cfg := DefaultConfig()
	if err := parseParams(&cfg, params); err != nil {
		return nil, err
	}
	cc, err := pgx.ParseConfig(rest)
	if err != nil {
		return nil, &ConfigError{Err: &pgxParseError{reason: pgxReason(err), err: err}}
	}
	for _, k := range slices.Sorted(maps.Keys(cc.RuntimeParams)) {
		switch {
		case lookupParam(k) != nil:
			// Only a service file can bring one of our keys past the split.
			return nil, &ConfigError{Param: k, Value: cc.RuntimeParams[k], Err: errOutsideDSN}
		case isReservedKey(k), nearMiss(k, pgxKeys) != "":
			// A typo that pgx would send to the server, which would refuse
			// it at the first connection. Its value is not kept: it may be
			// a password given to a misspelt "password".
			return nil, &ConfigError{Param: k, Err: errUnknownParam}
		}
	}
	// pgx's dialer sets Go's keepalive defaults; ours leaves the socket to
	// the system, so that keepalives_idle=0 and friends mean, as in libpq,
	// the system's setting (the others are set after each dial).
	cc.DialFunc = systemDialer(cc.ConnectTimeout)
	cfg.ConnConfig = cc
	return &cfg, nil
}

// parseForeignDSN parses the DSN of a driver other than pgx (go-sqlmock,
// lib/pq, ...): it returns our settings, with a nil ConnConfig, and the DSN
// without our parameters, to hand to that driver. See splitDSN for the forms
// it understands; a DSN with nothing of ours comes back unchanged.
func parseForeignDSN(dsn string) (*Config, string, error) {
	rest, params, err := splitDSN(dsn)
	if err != nil {
		return nil, "", err
	}
	cfg := DefaultConfig()
	if err := parseParams(&cfg, params); err != nil {
		return nil, "", err
	}
	return &cfg, rest, nil
}

// paramSpec describes one DSN parameter: its default and meaning as the
// documentation shows them (README.md, doc.go and docs/configuration.md
// repeat them, and TestParamDocs holds them to this table), what it accepts,
// and set, which parses a value into a Config and returns the cause of a
// failure.
type paramSpec struct {
	name string
	def  string
	doc  string
	want string
	set  func(c *Config, v string) error
}

// paramTable is the one list of pgresilient's DSN parameters, in the order
// they are validated and documented.
var paramTable = []paramSpec{
	{"breaker", "on", "the circuit breaker: on or off",
		"on or off", func(c *Config, v string) error {
			b, err := parseBool(v)
			c.DisableBreaker = !b
			return err
		}},
	{"breaker_failures", "5", "consecutive connectivity failures that open the breaker; once connected, they must also span 500ms (a timeout opens it at once)",
		fmt.Sprintf("an integer from 1 to %d", maxBreakerFailures), func(c *Config, v string) (err error) {
			c.BreakerFailures, err = parseInt(v, 1, maxBreakerFailures)
			return err
		}},
	{"breaker_cooldown", "1s", "the longest wait between two background probes while open",
		"a duration greater than 0, such as 5s", func(c *Config, v string) (err error) {
			c.BreakerCooldown, err = parseDuration(v, false)
			return err
		}},
	{"connect_retries", "3", "extra attempts when opening a connection fails transiently",
		fmt.Sprintf("an integer from 0 to %d", maxConnectRetries), func(c *Config, v string) error {
			n, err := parseInt(v, 0, maxConnectRetries)
			if n == 0 {
				n = -1 // 0 in a Config means "the default"
			}
			c.ConnectRetries = n
			return err
		}},
	{"connect_backoff", "100ms", "first retry delay; doubles per attempt, with full jitter",
		"a duration greater than 0, such as 100ms", func(c *Config, v string) (err error) {
			c.ConnectBackoff, err = parseDuration(v, false)
			return err
		}},
	{"connect_backoff_max", "5s", "ceiling of the retry delay",
		"a duration greater than 0, such as 5s", func(c *Config, v string) (err error) {
			c.ConnectBackoffMax, err = parseDuration(v, false)
			return err
		}},
	{"query_timeout", "0", "upper bound on every statement, connection attempt and check; a caller's earlier deadline wins; 0 is off",
		"a duration such as 30s, or 0 for none", func(c *Config, v string) (err error) {
			c.QueryTimeout, err = parseDuration(v, true)
			return err
		}},
	{"monitor_grace", "1s", "a statement in flight this long has its server checked by the host monitor; off turns the monitor off",
		"a duration greater than 0, such as 1s, or off", func(c *Config, v string) (err error) {
			if strings.EqualFold(v, "off") {
				c.MonitorGrace = -1
				return nil
			}
			c.MonitorGrace, err = parseDuration(v, false)
			return err
		}},
	{"monitor_timeout", "1.5s", "a check of the server unanswered this long declares it silent: the statements waiting on it end (ErrConnLost)",
		"a duration greater than 0, such as 1.5s", func(c *Config, v string) (err error) {
			c.MonitorTimeout, err = parseDuration(v, false)
			return err
		}},
	{"tx_autorollback", "on", "roll a transaction back on the server as soon as a statement in it fails: on or off",
		"on or off", func(c *Config, v string) error {
			b, err := parseBool(v)
			c.DisableTxAutoRollback = !b
			return err
		}},
	// libpq's TCP parameters, with libpq's units and its 0 for "the
	// system's setting".
	{"keepalives", "1", "TCP keepalive probes: 1 or 0 (off)",
		"1 or 0 (or on, off)", func(c *Config, v string) error {
			b, err := parseBool(v)
			c.DisableKeepalives = !b
			return err
		}},
	{"keepalives_idle", "10", "seconds of silence before the first keepalive probe; 0 is the system's setting",
		fmt.Sprintf("whole seconds from 0 to %d", maxKeepalivesSeconds), func(c *Config, v string) (err error) {
			c.KeepalivesIdle, err = parseLibpqUnits(v, maxKeepalivesSeconds, time.Second)
			return err
		}},
	{"keepalives_interval", "5", "seconds between unanswered keepalive probes; 0 is the system's setting",
		fmt.Sprintf("whole seconds from 0 to %d", maxKeepalivesSeconds), func(c *Config, v string) (err error) {
			c.KeepalivesInterval, err = parseLibpqUnits(v, maxKeepalivesSeconds, time.Second)
			return err
		}},
	{"keepalives_count", "3", "unanswered keepalive probes that end the connection; 0 is the system's setting",
		fmt.Sprintf("an integer from 0 to %d", maxKeepalivesCount), func(c *Config, v string) error {
			n, err := parseInt(v, 0, maxKeepalivesCount)
			if n == 0 {
				n = -1 // 0 in a Config means "the default"
			}
			c.KeepalivesCount = n
			return err
		}},
	{"tcp_user_timeout", "25000", "milliseconds written data may stay unacknowledged before the connection ends (Linux); 0 is the system's setting",
		fmt.Sprintf("whole milliseconds from 0 to %d", maxTCPUserTimeoutMs), func(c *Config, v string) (err error) {
			c.TCPUserTimeout, err = parseLibpqUnits(v, maxTCPUserTimeoutMs, time.Millisecond)
			return err
		}},
}

// keepaliveParams are the parameters that keepalives=0 makes pointless.
var keepaliveParams = []string{"keepalives_idle", "keepalives_interval", "keepalives_count"}

// parseLibpqUnits parses a libpq-style count of unit (seconds or
// milliseconds) from 0 to hi. 0 means the system's setting, which a Config
// spells as a negative duration (its zero means our default).
func parseLibpqUnits(v string, hi int, unit time.Duration) (time.Duration, error) {
	n, err := parseInt(v, 0, hi)
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return -1, nil
	}
	return time.Duration(n) * unit, nil
}

// paramNames returns the names of paramTable, in its order.
func paramNames() []string { return ourNames }

var ourNames = func() []string {
	names := make([]string, len(paramTable))
	for i, p := range paramTable {
		names[i] = p.name
	}
	return names
}()

// pgxKeys are the connection keywords that pgx v5 reads instead of sending
// them to the server (pgconn's and pgx's own; "dbname" is libpq's name for
// "database"). A DSN key close to one of them (see nearMiss), that pgx would
// send to the server, is reported as a typo: the server would refuse it.
var pgxKeys = []string{
	"host", "port", "database", "dbname", "user", "password", "passfile", "connect_timeout",
	"sslmode", "sslkey", "sslcert", "sslcertmode", "sslrootcert", "sslnegotiation", "sslpassword", "sslsni",
	"krbspn", "krbsrvname", "target_session_attrs", "service", "servicefile",
	"min_protocol_version", "max_protocol_version", "channel_binding", "require_auth",
	"statement_cache_capacity", "description_cache_capacity", "default_query_exec_mode",
}

// suggest returns the name that the unknown key p probably misspells: one of
// ours, or else one of pgx's; "" when none is close.
func suggest(p string) string {
	if s := nearMiss(strings.TrimSpace(p), ourNames); s != "" {
		return s
	}
	return nearMiss(strings.TrimSpace(p), pgxKeys)
}

func lookupParam(name string) *paramSpec {
	for i := range paramTable {
		if paramTable[i].name == name {
			return &paramTable[i]
		}
	}
	return nil
}

var (
	errUnknownParam = errors.New("unknown parameter")
	errOutOfRange   = errors.New("out of range")
	errNotBool      = errors.New("not a boolean")
	errNotPositive  = errors.New("must be greater than 0")
	errNegative     = errors.New("negative")
	errOutsideDSN   = errors.New("pgresilient reads its parameters from the DSN only, not from a service file")
	// errKeepalivesOff: libpq ignores the keepalive settings when
	// keepalives=0; both in one DSN is more likely a mistake.
	errKeepalivesOff = errors.New("set while keepalives=0 turns keepalive probes off")
)

// parseParams validates params, as returned by splitDSN, into cfg. Unknown
// keys are reported first (in sorted order), then the known ones in
// paramTable order, then the backoff pair.
func parseParams(cfg *Config, params map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(params)) {
		if lookupParam(k) == nil {
			return &ConfigError{Param: k, Value: params[k], Err: errUnknownParam}
		}
	}
	for _, p := range paramTable {
		v, ok := params[p.name]
		if !ok {
			continue
		}
		if !showable(v) {
			// Do not even parse it: the parsers' errors quote their input.
			return &ConfigError{Param: p.name, Value: v, Err: errors.New("want " + p.want)}
		}
		if err := p.set(cfg, v); err != nil {
			return &ConfigError{Param: p.name, Value: v, Err: fmt.Errorf("%w (want %s)", err, p.want)}
		}
	}
	if cfg.ConnectBackoff > cfg.ConnectBackoffMax {
		describe := func(name string, d time.Duration) string {
			if v, ok := params[name]; ok {
				return fmt.Sprintf("%s %q", name, v)
			}
			return fmt.Sprintf("%s (default %s)", name, d)
		}
		if v, ok := params["connect_backoff"]; ok {
			return &ConfigError{Param: "connect_backoff", Value: v,
				Err: errors.New("greater than " + describe("connect_backoff_max", cfg.ConnectBackoffMax))}
		}
		return &ConfigError{Param: "connect_backoff_max", Value: params["connect_backoff_max"],
			Err: errors.New("less than " + describe("connect_backoff", cfg.ConnectBackoff))}
	}
	if cfg.DisableKeepalives {
		for _, name := range keepaliveParams {
			if v, ok := params[name]; ok {
				return &ConfigError{Param: name, Value: v, Err: errKeepalivesOff}
			}
		}
	}
	return cfg.validate()
}

// parseBool accepts on/off, true/false, yes/no and 1/0, in any case.
func parseBool(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "on", "true", "yes", "1":
		return true, nil
	case "off", "false", "no", "0":
		return false, nil
	}
	return false, errNotBool
}

// parseInt accepts a decimal integer from lo to hi.
func parseInt(v string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil {
		var ne *strconv.NumError
		if errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange) {
			return 0, errOutOfRange
		}
		return 0, strconv.ErrSyntax
	}
	if n < lo || n > hi {
		return 0, errOutOfRange
	}
	return n, nil
}

// parseDuration accepts what time.ParseDuration accepts (a bare 0 too);
// zeroOK allows 0, negative durations are always refused.
func parseDuration(v string, zeroOK bool) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	switch {
	case err != nil:
		return 0, err
	case d < 0:
		return 0, errNegative
	case d == 0 && !zeroOK:
		return 0, errNotPositive
	}
	return d, nil
}

// effective returns c with every default filled in, ready to be read by the
// code that builds the breaker, the retry loop, the query deadline and the
// sockets: BreakerFailures > 0, BreakerCooldown > 0, ConnectRetries >= 0 (the
// real number of extra attempts: a negative value becomes 0), ConnectBackoff
// > 0, ConnectBackoffMax >= ConnectBackoff, QueryTimeout >= 0, the TCP
// settings non-zero (negative: as dialled). Out-of-range values
// that validate would refuse are replaced by defaults or clamped, so the
// result is always usable.
//
// The result is for reading, not a Config to keep: its ConnectRetries of 0
// means "no retries", where a Config's 0 means "the default".
func (c *Config) effective() Config {
	e := *c
	if e.BreakerFailures <= 0 {
		e.BreakerFailures = defaultBreakerFailures
	}
	e.BreakerFailures = min(e.BreakerFailures, maxBreakerFailures)
	if e.BreakerCooldown <= 0 {
		e.BreakerCooldown = defaultBreakerCooldown
	}
	switch {
	case e.ConnectRetries == 0:
		e.ConnectRetries = defaultConnectRetries
	case e.ConnectRetries < 0:
		e.ConnectRetries = 0
	}
	e.ConnectRetries = min(e.ConnectRetries, maxConnectRetries)
	if e.ConnectBackoff <= 0 {
		e.ConnectBackoff = defaultConnectBackoff
	}
	if e.ConnectBackoffMax <= 0 {
		e.ConnectBackoffMax = defaultConnectBackoffMax
	}
	e.ConnectBackoffMax = max(e.ConnectBackoffMax, e.ConnectBackoff)
	e.QueryTimeout = max(e.QueryTimeout, 0)
	if e.MonitorGrace == 0 {
		e.MonitorGrace = defaultMonitorGrace
	}
	if e.MonitorTimeout <= 0 {
		e.MonitorTimeout = defaultMonitorTimeout
	}
	// TCP settings: negative is "as dialled", kept as is.
	if e.KeepalivesIdle == 0 {
		e.KeepalivesIdle = defaultKeepalivesIdle
	}
	e.KeepalivesIdle = min(e.KeepalivesIdle, maxKeepalivesSeconds*time.Second)
	if e.KeepalivesInterval == 0 {
		e.KeepalivesInterval = defaultKeepalivesInterval
	}
	e.KeepalivesInterval = min(e.KeepalivesInterval, maxKeepalivesSeconds*time.Second)
	if e.KeepalivesCount == 0 {
		e.KeepalivesCount = defaultKeepalivesCount
	}
	e.KeepalivesCount = min(e.KeepalivesCount, maxKeepalivesCount)
	if e.TCPUserTimeout == 0 {
		e.TCPUserTimeout = defaultTCPUserTimeout
	}
	e.TCPUserTimeout = min(e.TCPUserTimeout, maxTCPUserTimeoutMs*time.Millisecond)
	return e
}

// validate checks a Config, typically a hand-built one, the way ParseConfig
// checks a DSN: zero values are fine (they mean the default), and so are
// negative TCP settings ("as dialled"); other negative durations,
// out-of-range counts and durations, and a ConnectBackoff above
// ConnectBackoffMax (after defaults) are *ConfigError values named after the
// DSN parameter.
func (c *Config) validate() error {
	intErr := func(name string, n int) error {
		return &ConfigError{Param: name, Value: strconv.Itoa(n),
			Err: fmt.Errorf("%w (want %s)", errOutOfRange, lookupParam(name).want)}
	}
	durErr := func(name string, d time.Duration) error {
		return &ConfigError{Param: name, Value: d.String(),
			Err: fmt.Errorf("%w (want %s)", errNegative, lookupParam(name).want)}
	}
	tooLong := func(name string, d time.Duration) error {
		return &ConfigError{Param: name, Value: d.String(),
			Err: fmt.Errorf("%w (want %s)", errOutOfRange, lookupParam(name).want)}
	}
	switch {
	case c.BreakerFailures < 0 || c.BreakerFailures > maxBreakerFailures:
		return intErr("breaker_failures", c.BreakerFailures)
	case c.BreakerCooldown < 0:
		return durErr("breaker_cooldown", c.BreakerCooldown)
	case c.ConnectRetries > maxConnectRetries:
		return intErr("connect_retries", c.ConnectRetries)
	case c.ConnectBackoff < 0:
		return durErr("connect_backoff", c.ConnectBackoff)
	case c.ConnectBackoffMax < 0:
		return durErr("connect_backoff_max", c.ConnectBackoffMax)
	case c.QueryTimeout < 0:
		return durErr("query_timeout", c.QueryTimeout)
	case c.MonitorTimeout < 0:
		return durErr("monitor_timeout", c.MonitorTimeout)
	case c.KeepalivesIdle > maxKeepalivesSeconds*time.Second:
		return tooLong("keepalives_idle", c.KeepalivesIdle)
	case c.KeepalivesInterval > maxKeepalivesSeconds*time.Second:
		return tooLong("keepalives_interval", c.KeepalivesInterval)
	case c.KeepalivesCount > maxKeepalivesCount:
		return intErr("keepalives_count", c.KeepalivesCount)
	case c.TCPUserTimeout > maxTCPUserTimeoutMs*time.Millisecond:
		return tooLong("tcp_user_timeout", c.TCPUserTimeout)
	}
	backoff, backoffMax := c.ConnectBackoff, c.ConnectBackoffMax
	if backoff == 0 {
		backoff = defaultConnectBackoff
	}
	if backoffMax == 0 {
		backoffMax = defaultConnectBackoffMax
	}
	if backoff > backoffMax {
		return &ConfigError{Param: "connect_backoff", Value: backoff.String(),
			Err: fmt.Errorf("greater than connect_backoff_max %s", backoffMax)}
	}
	return nil
}

// ConfigError reports a DSN parameter, or a Config field, with an invalid
// value; or, with an empty Param, a DSN that pgx refused. Its message names
// the parameter and quotes the value, says what is accepted, and never
// contains the DSN or a password:
//
//	pgresilient: invalid breaker_cooldown "5x": time: unknown unit "x" in duration "5x" (want a duration greater than 0, such as 5s)
//	pgresilient: unknown parameter "qeury_timeout": did you mean query_timeout?
//	pgresilient: unknown parameter "breaker_delay" (pgresilient's parameters are breaker, ...)
//	pgresilient: invalid DSN: failed to parse as keyword/value: unterminated quoted string in connection info string
//
// An unknown parameter is a key that starts like ours (breaker_delay) or is
// close to one of ours or pgx's (qeury_timeout, pasword, sslmod): pgx would
// send it to the server, which refuses unknown settings at the first
// connection. Keys the server may know (application_name, search_path,
// statement_timeout, myapp.tenant) pass through.
//
// A value that does not look like a value (it contains '=', spaces, '@', ...)
// is described rather than quoted: it is likely a piece of the DSN that
// landed in our parameter by mistake.
type ConfigError struct {
	Param string // the DSN parameter, such as "breaker_cooldown"; "" when pgx refused the DSN
	Value string // the value as given, decoded; it may hold any text of the DSN; empty for a misspelt key of pgx's
	Err   error  // the cause; when Param is "", it unwraps to *pgconn.ParseConfigError
}

// Error names the parameter and its value, as described on ConfigError.
func (e *ConfigError) Error() string {
	cause := "invalid value"
	if e.Err != nil {
		cause = e.Err.Error()
	}
	switch {
	case e.Param == "":
		return "pgresilient: invalid DSN: " + cause
	case errors.Is(e.Err, errUnknownParam):
		if s := suggest(e.Param); s != "" {
			return fmt.Sprintf("pgresilient: unknown parameter %s: did you mean %s?", quoteParam(e.Param), s)
		}
		return fmt.Sprintf("pgresilient: unknown parameter %s (pgresilient's parameters are %s)",
			quoteParam(e.Param), strings.Join(ourNames, ", "))
	case !showable(e.Value):
		return fmt.Sprintf("pgresilient: invalid %s (value not shown): %s", quoteParam(e.Param), cause)
	}
	return fmt.Sprintf("pgresilient: invalid %s %q: %s", quoteParam(e.Param), e.Value, cause)
}

// Unwrap returns Err.
func (e *ConfigError) Unwrap() error { return e.Err }

// showable reports whether v may be quoted in an error message: a short
// token that could be meant as one of our values. Anything with '=', '&',
// '@', ':', '/', spaces or control characters is more likely a stray piece
// of the DSN, perhaps with a password in it.
func showable(v string) bool {
	if len(v) > 64 || strings.ContainsAny(v, "=&@:/") {
		return false
	}
	for _, r := range v {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

// quoteParam names a parameter in a message. Our names are plain; an
// unknown one, decoded from a URL, could hold anything.
func quoteParam(p string) string {
	if lookupParam(p) != nil {
		return p
	}
	if showable(p) {
		return strconv.Quote(p)
	}
	for _, pre := range reservedPrefixes {
		if strings.HasPrefix(strings.ToLower(strings.TrimSpace(p)), pre) {
			return fmt.Sprintf("starting with %q", pre)
		}
	}
	return "(name not shown)"
}

// pgxParseError carries pgx's ParseConfig error under a message that
// cannot echo the DSN: pgx's own message quotes the DSN with passwords
// masked only on a best-effort basis, and its causes can quote raw pieces
// of a malformed DSN (see pgxReason).
type pgxParseError struct {
	reason string
	err    error
}

func (e *pgxParseError) Error() string { return e.reason }
func (e *pgxParseError) Unwrap() error { return e.err }

// pgxReason rebuilds pgx's message without the DSN and without anything
// quoted from it: it keeps pgx's description up to the first ':' or quote.
// For example pgx's
//
//	cannot parse `host=db password=xxxxx secret`: failed to parse as keyword/value (missing "=" after "secret" in connection info string)
//
// (which shows the second word of a password with a space in it) becomes
// `failed to parse as keyword/value: missing "="`.
func pgxReason(err error) string {
	const fallback = "rejected by pgx"
	var pce *pgconn.ParseConfigError
	if !errors.As(err, &pce) {
		return fallback
	}
	blank := *pce
	blank.ConnString = ""
	msg, ok := strings.CutPrefix(blank.Error(), "cannot parse ``: ")
	if !ok {
		return fallback
	}
	inner := pce.Unwrap()
	if inner != nil {
		if msg, ok = strings.CutSuffix(msg, " ("+inner.Error()+")"); !ok {
			return fallback
		}
	}
	reason := safePrefix(msg)
	if reason == "" {
		return fallback
	}
	if inner != nil {
		var ne *strconv.NumError
		detail := ""
		if errors.As(inner, &ne) {
			detail = ne.Err.Error()
		} else {
			detail = safePrefix(inner.Error())
		}
		if detail != "" {
			reason += ": " + detail
		}
	}
	return reason
}

// quotedLiterals are quoted pieces of pgx's messages that are fixed text, not
// quoted input.
var quotedLiterals = []string{`"="`, `"]"`, `":"`, `"/"`, `"sslcert"`, `"sslkey"`}

// safePrefix returns s up to its first ':', backquote, single quote or double
// quote that does not open one of quotedLiterals, without a dangling
// preposition: pgx's messages put the input they quote after such a mark.
func safePrefix(s string) string {
	i := 0
scan:
	for i < len(s) {
		switch s[i] {
		case ':', '`', '\'':
			break scan
		case '"':
			for _, lit := range quotedLiterals {
				if strings.HasPrefix(s[i:], lit) {
					i += len(lit)
					continue scan
				}
			}
			break scan
		}
		i++
	}
	out := strings.TrimSpace(s[:i])
	for _, w := range []string{" in", " after", " at", " for", " of"} {
		out = strings.TrimSuffix(out, w)
	}
	return out
}
