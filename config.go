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
	BreakerFailures int

	// BreakerCooldown is the longest wait between two background probes of
	// the server while the breaker is open; they start every ~20ms and back
	// off toward it in a long outage (DSN breaker_cooldown). Zero value: the
	// default, 1s.
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

	// QueryTimeout is the deadline given to a statement whose context has
	// none; a deadline of the caller's always wins (DSN query_timeout).
	// Zero value: no timeout (the default).
	QueryTimeout time.Duration

	// DisableTxAutoRollback stops pgresilient from rolling a transaction
	// back on the server as soon as a statement in it fails (DSN
	// tx_autorollback=off). Zero value: false, auto-rollback is on (the
	// default).
	DisableTxAutoRollback bool
}

// DefaultConfig returns the default settings with every field set
// explicitly: breaker on after 5 failures with a 1s cooldown, 3 connect
// retries with a backoff from 100ms to 5s, no query timeout, transaction
// auto-rollback on. ConnConfig is nil.
func DefaultConfig() Config {
	return Config{
		BreakerFailures:   defaultBreakerFailures,
		BreakerCooldown:   defaultBreakerCooldown,
		ConnectRetries:    defaultConnectRetries,
		ConnectBackoff:    defaultConnectBackoff,
		ConnectBackoffMax: defaultConnectBackoffMax,
	}
}

// ParseConfig parses a pgx DSN with pgresilient's parameters mixed in. It
// removes them (they never reach pgx, so never the server), parses the rest
// with pgx.ParseConfig, and validates them. The DSN may be a URL
// ("postgres://..." or "postgresql://..."), keyword/value ("host=db
// breaker=off"), or empty (everything from the PG* environment variables).
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
	// Only a service file can bring one of our keys past the split.
	for _, k := range slices.Sorted(maps.Keys(cc.RuntimeParams)) {
		if isReservedKey(k) {
			return nil, &ConfigError{Param: k, Value: cc.RuntimeParams[k], Err: errOutsideDSN}
		}
	}
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
	{"breaker_failures", "5", "consecutive connectivity failures that open the breaker",
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
	{"tx_autorollback", "on", "roll a transaction back on the server as soon as a statement in it fails: on or off",
		"on or off", func(c *Config, v string) error {
			b, err := parseBool(v)
			c.DisableTxAutoRollback = !b
			return err
		}},
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
// code that builds the breaker, the retry loop and the query deadline:
// BreakerFailures > 0, BreakerCooldown > 0, ConnectRetries >= 0 (the real
// number of extra attempts: a negative value becomes 0), ConnectBackoff > 0,
// ConnectBackoffMax >= ConnectBackoff, QueryTimeout >= 0. Out-of-range values
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
	return e
}

// validate checks a Config, typically a hand-built one, the way ParseConfig
// checks a DSN: zero values are fine (they mean the default); negative
// durations, out-of-range counts, and a ConnectBackoff above
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
//	pgresilient: unknown parameter "breaker_failure" (pgresilient's parameters are breaker, ...)
//	pgresilient: invalid DSN: failed to parse as keyword/value: unterminated quoted string in connection info string
//
// A value that does not look like a value (it contains '=', spaces, '@', ...)
// is described rather than quoted: it is likely a piece of the DSN that
// landed in our parameter by mistake.
type ConfigError struct {
	Param string // the DSN parameter, such as "breaker_cooldown"; "" when pgx refused the DSN
	Value string // the value as given, decoded; it may hold any text of the DSN
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
		names := make([]string, len(paramTable))
		for i, p := range paramTable {
			names[i] = p.name
		}
		return fmt.Sprintf("pgresilient: unknown parameter %s (pgresilient's parameters are %s)",
			quoteParam(e.Param), strings.Join(names, ", "))
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
