package pgresilient

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// caFile stands, in validDSNs, for the path of a CA certificate written by
// the test (pgx reads sslrootcert while parsing).
const caFile = "CAFILE"

// validDSNs is the one table of valid DSNs: TestParseConfig checks it and
// FuzzParseConfig starts from it.
var validDSNs = []struct {
	name string
	dsn  string
	// set changes DefaultConfig into the expected Config; nil: defaults.
	set func(*Config)
	// What pgx must see. hosts lists "host:port" of ConnConfig and then of
	// each Fallback (sslmode=prefer, the default, gives each host twice).
	hosts                    []string
	user, password, database string
	runtime                  map[string]string // exactly ConnConfig.RuntimeParams
	connectTimeout           time.Duration
	tls                      bool // ConnConfig.TLSConfig is set
	validateConnect          bool // target_session_attrs installed a check
}{
	{
		name:  "url without our keys",
		dsn:   "postgres://alice:secret@db.example:5433/app?sslmode=disable",
		hosts: []string{"db.example:5433"}, user: "alice", password: "secret", database: "app",
	},
	{
		name:  "url postgresql scheme, ours first",
		dsn:   "postgresql://alice@db/app?breaker=off&sslmode=disable&application_name=api",
		set:   func(c *Config) { c.DisableBreaker = true },
		hosts: []string{"db:5432"}, user: "alice", database: "app",
		runtime: map[string]string{"application_name": "api"},
	},
	{
		name: "url ours in the middle, connect_timeout kept",
		dsn:  "postgres://alice@db/app?sslmode=disable&breaker_failures=10&breaker_cooldown=250ms&application_name=api&connect_timeout=5",
		set: func(c *Config) {
			c.BreakerFailures = 10
			c.BreakerCooldown = 250 * time.Millisecond
		},
		hosts: []string{"db:5432"}, user: "alice", database: "app",
		runtime:        map[string]string{"application_name": "api"},
		connectTimeout: 5 * time.Second,
	},
	{
		name: "url ours last",
		dsn:  "postgres://alice@db/app?sslmode=disable&connect_retries=0&connect_backoff=10ms&connect_backoff_max=1s",
		set: func(c *Config) {
			c.ConnectRetries = -1
			c.ConnectBackoff = 10 * time.Millisecond
			c.ConnectBackoffMax = time.Second
		},
		hosts: []string{"db:5432"}, user: "alice", database: "app",
	},
	{
		name: "url only ours, sslmode prefer by default",
		dsn:  "postgres://alice@db/app?query_timeout=2s&tx_autorollback=off",
		set: func(c *Config) {
			c.QueryTimeout = 2 * time.Second
			c.DisableTxAutoRollback = true
		},
		hosts: []string{"db:5432", "db:5432"}, user: "alice", database: "app", tls: true,
	},
	{
		name:  "url multi-host, read-write",
		dsn:   "postgres://alice:pw@h1:5432,h2:5433,h3/app?sslmode=disable&target_session_attrs=read-write&breaker=no",
		set:   func(c *Config) { c.DisableBreaker = true },
		hosts: []string{"h1:5432", "h2:5433", "h3:5432"}, user: "alice", password: "pw", database: "app",
		validateConnect: true,
	},
	{
		name:  "url escaped password",
		dsn:   "postgres://alice:p%40ss%2Fw%3Ard%25%26@db/app?sslmode=disable&query_timeout=1m",
		set:   func(c *Config) { c.QueryTimeout = time.Minute },
		hosts: []string{"db:5432"}, user: "alice", password: "p@ss/w:rd%&", database: "app",
	},
	{
		name:  "url escaped key and value of ours",
		dsn:   "postgres://alice@db/app?sslmode=disable&%62reaker_failures=%37",
		set:   func(c *Config) { c.BreakerFailures = 7 },
		hosts: []string{"db:5432"}, user: "alice", database: "app",
	},
	{
		name:  "url verify-full",
		dsn:   "postgres://alice@db.example/app?sslmode=verify-full&sslrootcert=" + caFile + "&breaker_cooldown=1s",
		set:   func(c *Config) { c.BreakerCooldown = time.Second },
		hosts: []string{"db.example:5432"}, user: "alice", database: "app", tls: true,
	},
	{
		name:  "url runtime params kept",
		dsn:   "postgres://alice@db/app?sslmode=disable&search_path=app,public&myapp.tenant=42&breaker=TRUE&statement_timeout=30000",
		hosts: []string{"db:5432"}, user: "alice", database: "app",
		runtime: map[string]string{"search_path": "app,public", "myapp.tenant": "42", "statement_timeout": "30000"},
	},
	{
		name:  "url IPv6",
		dsn:   "postgres://alice@[::1]:5433/app?sslmode=disable&tx_autorollback=0",
		set:   func(c *Config) { c.DisableTxAutoRollback = true },
		hosts: []string{"::1:5433"}, user: "alice", database: "app",
	},
	{
		name:  "url hash is data, as in pgx",
		dsn:   "postgres://alice@db/app?sslmode=disable&application_name=a#b&breaker=off",
		set:   func(c *Config) { c.DisableBreaker = true },
		hosts: []string{"db:5432"}, user: "alice", database: "app",
		runtime: map[string]string{"application_name": "a#b"},
	},
	{
		name:  "url query without path",
		dsn:   "postgres://alice@db?breaker=Off&sslmode=disable",
		set:   func(c *Config) { c.DisableBreaker = true },
		hosts: []string{"db:5432"}, user: "alice",
	},
	{
		name:  "kv without our keys",
		dsn:   "host=db port=5433 user=alice password=secret dbname=app sslmode=disable",
		hosts: []string{"db:5433"}, user: "alice", password: "secret", database: "app",
	},
	{
		name: "kv ours first, middle and last",
		dsn:  "breaker=off host=db user=alice query_timeout=250ms dbname=app sslmode=disable tx_autorollback=no",
		set: func(c *Config) {
			c.DisableBreaker = true
			c.QueryTimeout = 250 * time.Millisecond
			c.DisableTxAutoRollback = true
		},
		hosts: []string{"db:5432"}, user: "alice", database: "app",
	},
	{
		name:  "kv spaces around =",
		dsn:   "host = db user= alice  breaker_failures =3 sslmode = disable dbname=app",
		set:   func(c *Config) { c.BreakerFailures = 3 },
		hosts: []string{"db:5432"}, user: "alice", database: "app",
	},
	{
		name:  "kv quoted values with escapes",
		dsn:   `host=db user=alice password='it\'s a \\ secret' dbname=app sslmode=disable connect_backoff='20ms' application_name='my app'`,
		set:   func(c *Config) { c.ConnectBackoff = 20 * time.Millisecond },
		hosts: []string{"db:5432"}, user: "alice", password: `it's a \ secret`, database: "app",
		runtime: map[string]string{"application_name": "my app"},
	},
	{
		name:  "kv multi-host, read-write",
		dsn:   "host=h1,h2 port=5432,5433 user=alice dbname=app sslmode=disable target_session_attrs=read-write breaker_failures=2",
		set:   func(c *Config) { c.BreakerFailures = 2 },
		hosts: []string{"h1:5432", "h2:5433"}, user: "alice", database: "app", validateConnect: true,
	},
	{
		name:  "kv connect_timeout kept",
		dsn:   "host=db user=alice dbname=app sslmode=disable connect_timeout=5 connect_retries=10",
		set:   func(c *Config) { c.ConnectRetries = 10 },
		hosts: []string{"db:5432"}, user: "alice", database: "app", connectTimeout: 5 * time.Second,
	},
	{
		name:  "kv verify-full",
		dsn:   "host=db.example user=alice dbname=app sslmode=verify-full sslrootcert=" + caFile + " breaker=off",
		set:   func(c *Config) { c.DisableBreaker = true },
		hosts: []string{"db.example:5432"}, user: "alice", database: "app", tls: true,
	},
	{
		name:  "kv quoted value of ours glued to the next key",
		dsn:   "host=db user=alice dbname=app sslmode=disable query_timeout='1s'application_name=x",
		set:   func(c *Config) { c.QueryTimeout = time.Second },
		hosts: []string{"db:5432"}, user: "alice", database: "app",
		runtime: map[string]string{"application_name": "x"},
	},
	{
		name: "kv every key of ours",
		dsn: "host=db user=alice sslmode=disable breaker=yes breaker_failures=1000000 breaker_cooldown=1h " +
			"connect_retries=1000 connect_backoff=1µs connect_backoff_max=1µs query_timeout=0 tx_autorollback=1",
		set: func(c *Config) {
			c.BreakerFailures = 1000000
			c.BreakerCooldown = time.Hour
			c.ConnectRetries = 1000
			c.ConnectBackoff = time.Microsecond
			c.ConnectBackoffMax = time.Microsecond
		},
		hosts: []string{"db:5432"}, user: "alice",
	},
	{
		name: "url libpq's TCP parameters",
		dsn:  "postgres://alice@db/app?sslmode=disable&keepalives=1&keepalives_idle=30&keepalives_interval=10&keepalives_count=5&tcp_user_timeout=45000&application_name=api",
		set: func(c *Config) {
			c.KeepalivesIdle = 30 * time.Second
			c.KeepalivesInterval = 10 * time.Second
			c.KeepalivesCount = 5
			c.TCPUserTimeout = 45 * time.Second
		},
		hosts: []string{"db:5432"}, user: "alice", database: "app",
		runtime: map[string]string{"application_name": "api"},
	},
	{
		name: "kv libpq's TCP parameters at 0: the system's settings",
		dsn:  "host=db user=alice sslmode=disable keepalives_idle=0 keepalives_interval=0 keepalives_count=0 tcp_user_timeout=0",
		set: func(c *Config) {
			c.KeepalivesIdle, c.KeepalivesInterval, c.KeepalivesCount, c.TCPUserTimeout = -1, -1, -1, -1
		},
		hosts: []string{"db:5432"}, user: "alice",
	},
	{
		name:  "kv keepalives off",
		dsn:   "host=db user=alice sslmode=disable keepalives=0 tcp_user_timeout=1",
		set:   func(c *Config) { c.DisableKeepalives, c.TCPUserTimeout = true, time.Millisecond },
		hosts: []string{"db:5432"}, user: "alice",
	},
	{
		name:  "url server settings close to ours are the server's",
		dsn:   "postgres://alice@db/app?sslmode=disable&tcp_keepalives_idle=30&tcp_keepalives_count=3&idle_session_timeout=60000&lock_timeout=1000&myapp.query_timeout=5",
		hosts: []string{"db:5432"}, user: "alice", database: "app",
		runtime: map[string]string{"tcp_keepalives_idle": "30", "tcp_keepalives_count": "3",
			"idle_session_timeout": "60000", "lock_timeout": "1000", "myapp.query_timeout": "5"},
	},
}

// pgEnv lists the environment variables pgx reads.
var pgEnv = []string{
	"PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE", "PGAPPNAME", "PGCONNECT_TIMEOUT",
	"PGSSLMODE", "PGSSLKEY", "PGSSLCERT", "PGSSLCERTMODE", "PGSSLSNI", "PGSSLROOTCERT", "PGSSLPASSWORD",
	"PGSSLNEGOTIATION", "PGTARGETSESSIONATTRS", "PGSERVICE", "PGSERVICEFILE", "PGTZ", "PGOPTIONS",
	"PGMINPROTOCOLVERSION", "PGMAXPROTOCOLVERSION", "PGCHANNELBINDING", "PGREQUIREAUTH",
}

// isolatePGEnv unsets pgx's environment variables and points HOME at an
// empty directory (no ~/.pgpass, ~/.postgresql), until the test ends.
func isolatePGEnv(tb testing.TB) {
	tb.Helper()
	for _, k := range pgEnv {
		tb.Setenv(k, "") // restores the old value at cleanup
		os.Unsetenv(k)   // an empty PGSSLCERTMODE is an error to pgx
	}
	tb.Setenv("HOME", tb.TempDir())
}

// writeTestCA writes a self-signed CA certificate and returns its path.
func writeTestCA(tb testing.TB) string {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pgresilient test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(tb.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

func hostList(cc *pgx.ConnConfig) []string {
	hosts := []string{fmt.Sprintf("%s:%d", cc.Host, cc.Port)}
	for _, fb := range cc.Fallbacks {
		hosts = append(hosts, fmt.Sprintf("%s:%d", fb.Host, fb.Port))
	}
	return hosts
}

func TestParseConfig(t *testing.T) {
	isolatePGEnv(t)
	ca := writeTestCA(t)
	for _, tt := range validDSNs {
		t.Run(tt.name, func(t *testing.T) {
			dsn := strings.ReplaceAll(tt.dsn, caFile, ca)
			got, err := ParseConfig(dsn)
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			want := DefaultConfig()
			if tt.set != nil {
				tt.set(&want)
			}
			cc := got.ConnConfig
			if cc == nil {
				t.Fatal("ConnConfig is nil")
			}
			gotOurs := *got
			gotOurs.ConnConfig = nil
			if gotOurs != want {
				t.Errorf("config = %+v\nwant     %+v", gotOurs, want)
			}
			if h := hostList(cc); !slices.Equal(h, tt.hosts) {
				t.Errorf("hosts = %v, want %v", h, tt.hosts)
			}
			if cc.User != tt.user || cc.Password != tt.password || cc.Database != tt.database {
				t.Errorf("user, password, database = %q, %q, %q; want %q, %q, %q",
					cc.User, cc.Password, cc.Database, tt.user, tt.password, tt.database)
			}
			wantRuntime := tt.runtime
			if wantRuntime == nil {
				wantRuntime = map[string]string{}
			}
			if !maps.Equal(cc.RuntimeParams, wantRuntime) {
				t.Errorf("RuntimeParams = %v, want %v", cc.RuntimeParams, wantRuntime)
			}
			if cc.ConnectTimeout != tt.connectTimeout {
				t.Errorf("ConnectTimeout = %v, want %v", cc.ConnectTimeout, tt.connectTimeout)
			}
			if (cc.TLSConfig != nil) != tt.tls {
				t.Errorf("TLSConfig set = %v, want %v", cc.TLSConfig != nil, tt.tls)
			}
			if (cc.ValidateConnect != nil) != tt.validateConnect {
				t.Errorf("ValidateConnect set = %v, want %v", cc.ValidateConnect != nil, tt.validateConnect)
			}
			for _, p := range paramTable {
				if regexp.MustCompile(`(^|[?&\s])` + p.name + `\s*=`).MatchString(cc.ConnString()) {
					t.Errorf("ConnString() %q still holds %s", cc.ConnString(), p.name)
				}
			}
		})
	}
}

func TestParseConfigInvalid(t *testing.T) {
	isolatePGEnv(t)
	tests := []struct {
		name         string
		dsn          string
		param, value string
		msg          string // the exact message, when given
	}{
		{name: "bool", dsn: "host=db breaker=maybe", param: "breaker", value: "maybe",
			msg: `pgresilient: invalid breaker "maybe": not a boolean (want on or off)`},
		{name: "bool url", dsn: "postgres://db/app?tx_autorollback=2", param: "tx_autorollback", value: "2"},
		{name: "duration unit", dsn: "postgres://db/app?breaker_cooldown=5x", param: "breaker_cooldown", value: "5x",
			msg: `pgresilient: invalid breaker_cooldown "5x": time: unknown unit "x" in duration "5x" (want a duration greater than 0, such as 5s)`},
		{name: "cooldown zero", dsn: "host=db breaker_cooldown=0", param: "breaker_cooldown", value: "0",
			msg: `pgresilient: invalid breaker_cooldown "0": must be greater than 0 (want a duration greater than 0, such as 5s)`},
		{name: "cooldown negative", dsn: "host=db breaker_cooldown=-1s", param: "breaker_cooldown", value: "-1s"},
		{name: "failures zero", dsn: "host=db breaker_failures=0", param: "breaker_failures", value: "0",
			msg: `pgresilient: invalid breaker_failures "0": out of range (want an integer from 1 to 1000000)`},
		{name: "failures too many", dsn: "host=db breaker_failures=1000001", param: "breaker_failures", value: "1000001"},
		{name: "failures overflow", dsn: "host=db breaker_failures=99999999999999999999", param: "breaker_failures", value: "99999999999999999999"},
		{name: "failures syntax", dsn: "host=db breaker_failures=3.5", param: "breaker_failures", value: "3.5",
			msg: `pgresilient: invalid breaker_failures "3.5": invalid syntax (want an integer from 1 to 1000000)`},
		{name: "failures empty", dsn: "postgres://db/app?breaker_failures=", param: "breaker_failures", value: ""},
		{name: "retries negative", dsn: "host=db connect_retries=-1", param: "connect_retries", value: "-1"},
		{name: "retries too many", dsn: "host=db connect_retries=1001", param: "connect_retries", value: "1001"},
		{name: "backoff zero", dsn: "host=db connect_backoff=0", param: "connect_backoff", value: "0"},
		{name: "backoff above default max", dsn: "host=db connect_backoff=10s", param: "connect_backoff", value: "10s",
			msg: `pgresilient: invalid connect_backoff "10s": greater than connect_backoff_max (default 5s)`},
		{name: "backoff above max", dsn: "postgres://db/app?connect_backoff_max=1s&connect_backoff=2s", param: "connect_backoff", value: "2s",
			msg: `pgresilient: invalid connect_backoff "2s": greater than connect_backoff_max "1s"`},
		{name: "max below default backoff", dsn: "host=db connect_backoff_max=50ms", param: "connect_backoff_max", value: "50ms",
			msg: `pgresilient: invalid connect_backoff_max "50ms": less than connect_backoff (default 100ms)`},
		{name: "query timeout negative", dsn: "host=db query_timeout=-1s", param: "query_timeout", value: "-1s",
			msg: `pgresilient: invalid query_timeout "-1s": negative (want a duration such as 30s, or 0 for none)`},
		{name: "query timeout without unit", dsn: "host=db query_timeout=5", param: "query_timeout", value: "5"},
		{name: "unknown look-alike", dsn: "host=db breaker_failure=3", param: "breaker_failure", value: "3",
			msg: `pgresilient: unknown parameter "breaker_failure": did you mean breaker_failures?`},
		{name: "unknown look-alike, nothing close", dsn: "host=db breaker_delay=3", param: "breaker_delay", value: "3",
			msg: `pgresilient: unknown parameter "breaker_delay" (pgresilient's parameters are breaker, breaker_failures, ` +
				`breaker_cooldown, connect_retries, connect_backoff, connect_backoff_max, query_timeout, monitor_grace, monitor_timeout, tx_autorollback, ` +
				`keepalives, keepalives_idle, keepalives_interval, keepalives_count, tcp_user_timeout)`},
		// Typos (issue 24, trap 6): they reached the server and failed the
		// first connection with "unrecognized configuration parameter".
		{name: "typo swap", dsn: "postgres://db/app?qeury_timeout=5s", param: "qeury_timeout", value: "5s",
			msg: `pgresilient: unknown parameter "qeury_timeout": did you mean query_timeout?`},
		{name: "typo missing letter", dsn: "host=db conect_retries=2", param: "conect_retries", value: "2",
			msg: `pgresilient: unknown parameter "conect_retries": did you mean connect_retries?`},
		{name: "typo two edits", dsn: "host=db conect_retrie=2", param: "conect_retrie", value: "2",
			msg: `pgresilient: unknown parameter "conect_retrie": did you mean connect_retries?`},
		{name: "typo tx", dsn: "host=db tx_autorolback=off", param: "tx_autorolback", value: "off",
			msg: `pgresilient: unknown parameter "tx_autorolback": did you mean tx_autorollback?`},
		{name: "typo camel case", dsn: "postgres://db/app?QueryTimeout=5s", param: "QueryTimeout", value: "5s",
			msg: `pgresilient: unknown parameter "QueryTimeout": did you mean query_timeout?`},
		{name: "typo TCP", dsn: "host=db keepalive_idle=10", param: "keepalive_idle", value: "10",
			msg: `pgresilient: unknown parameter "keepalive_idle": did you mean keepalives_idle?`},
		{name: "typo TCP user timeout", dsn: "host=db tcp_user_timout=1000", param: "tcp_user_timout", value: "1000",
			msg: `pgresilient: unknown parameter "tcp_user_timout": did you mean tcp_user_timeout?`},
		{name: "typo of pgx's password, value not kept", dsn: "host=db pasword=Secret99", param: "pasword", value: "",
			msg: `pgresilient: unknown parameter "pasword": did you mean password?`},
		{name: "typo of pgx's sslmode", dsn: "postgres://db/app?sslmod=disable", param: "sslmod", value: "",
			msg: `pgresilient: unknown parameter "sslmod": did you mean sslmode?`},
		{name: "pgx's key in another case", dsn: "Host=db", param: "Host", value: "",
			msg: `pgresilient: unknown parameter "Host": did you mean host?`},
		{name: "typo of pgx's statement_cache_capacity", dsn: "host=db statement_cache_capacty=10", param: "statement_cache_capacty",
			msg: `pgresilient: unknown parameter "statement_cache_capacty": did you mean statement_cache_capacity?`},
		// libpq's TCP parameters.
		{name: "keepalives not a boolean", dsn: "host=db keepalives=2", param: "keepalives", value: "2",
			msg: `pgresilient: invalid keepalives "2": not a boolean (want 1 or 0 (or on, off))`},
		{name: "keepalives_idle with a unit", dsn: "postgres://db/app?keepalives_idle=10s", param: "keepalives_idle", value: "10s",
			msg: `pgresilient: invalid keepalives_idle "10s": invalid syntax (want whole seconds from 0 to 32767)`},
		{name: "keepalives_idle negative", dsn: "host=db keepalives_idle=-1", param: "keepalives_idle", value: "-1"},
		{name: "keepalives_idle too long", dsn: "host=db keepalives_idle=32768", param: "keepalives_idle", value: "32768",
			msg: `pgresilient: invalid keepalives_idle "32768": out of range (want whole seconds from 0 to 32767)`},
		{name: "keepalives_interval empty", dsn: "host=db keepalives_interval=''", param: "keepalives_interval", value: ""},
		{name: "keepalives_count too many", dsn: "host=db keepalives_count=128", param: "keepalives_count", value: "128",
			msg: `pgresilient: invalid keepalives_count "128": out of range (want an integer from 0 to 127)`},
		{name: "tcp_user_timeout fraction", dsn: "host=db tcp_user_timeout=1.5", param: "tcp_user_timeout", value: "1.5"},
		{name: "tcp_user_timeout too long", dsn: "host=db tcp_user_timeout=2147483648", param: "tcp_user_timeout", value: "2147483648"},
		{name: "keepalive settings with keepalives off", dsn: "host=db keepalives=0 keepalives_idle=30", param: "keepalives_idle", value: "30",
			msg: `pgresilient: invalid keepalives_idle "30": set while keepalives=0 turns keepalive probes off`},
		{name: "unknown tx_", dsn: "postgres://db/app?tx_isolation=serializable", param: "tx_isolation", value: "serializable"},
		{name: "unknown connect_retry", dsn: "host=db connect_retry=2", param: "connect_retry", value: "2"},
		{name: "unknown query_timeout_ms", dsn: "host=db query_timeout_ms=5", param: "query_timeout_ms", value: "5"},
		{name: "unknown case", dsn: "host=db BREAKER=off", param: "BREAKER", value: "off"},
		{name: "duplicate", dsn: "breaker=off host=db breaker=on", param: "breaker", value: "on",
			msg: `pgresilient: invalid breaker "on": given more than once`},
		{name: "duplicate url", dsn: "postgres://db/app?query_timeout=1s&query_timeout=2s", param: "query_timeout", value: "2s"},
		{name: "missing value url", dsn: "postgres://db/app?breaker", param: "breaker", value: "",
			msg: `pgresilient: invalid breaker "": missing "=" and value`},
		{name: "value with = not shown", dsn: "postgres://db/app?breaker_failures=1=2", param: "breaker_failures", value: "1=2",
			msg: `pgresilient: invalid breaker_failures (value not shown): want an integer from 1 to 1000000`},
		{name: "swallowed pair not shown", dsn: "host=db breaker_cooldown= password=Secret99", param: "breaker_cooldown", value: "password=Secret99"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig(tt.dsn)
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("ParseConfig(%q) = %+v, %v; want a *ConfigError", tt.dsn, cfg, err)
			}
			if ce.Param != tt.param || ce.Value != tt.value {
				t.Errorf("Param, Value = %q, %q; want %q, %q", ce.Param, ce.Value, tt.param, tt.value)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "pgresilient: ") || !strings.Contains(msg, tt.param) {
				t.Errorf("message %q does not name %s", msg, tt.param)
			}
			if tt.msg != "" && msg != tt.msg {
				t.Errorf("message = %q\nwant      %q", msg, tt.msg)
			}
			if strings.Contains(msg, "Secret99") {
				t.Errorf("message %q shows a password", msg)
			}
		})
	}
}

func TestConfigErrorUnwrap(t *testing.T) {
	_, err := ParseConfig("host=db breaker_failures=x")
	if !errors.Is(err, strconv.ErrSyntax) {
		t.Errorf("errors.Is(%v, strconv.ErrSyntax) = false", err)
	}
	_, err = ParseConfig("host=db breaker_cooldown=5x")
	var ce *ConfigError
	if !errors.As(err, &ce) || errors.Unwrap(err) != ce.Err {
		t.Errorf("Unwrap(%v) is not Err", err)
	}
}

// Errors of pgx's own parser become *ConfigError with an empty Param; their
// message is rebuilt without the DSN, and pgx's error stays reachable.
func TestParseConfigPgxErrors(t *testing.T) {
	isolatePGEnv(t)
	tests := []struct {
		name, dsn, msg string
	}{
		{"space in password", "host=db password=Secret99 Wordpart77 user=alice",
			`pgresilient: invalid DSN: failed to parse as keyword/value: missing "="`},
		{"unterminated quote", "host=db password='Secret99",
			"pgresilient: invalid DSN: failed to parse as keyword/value: unterminated quoted string in connection info string"},
		{"slash in url password", "postgres://alice:Secret99/x@db/app?breaker=off", "pgresilient: invalid DSN: invalid port"},
		{"url password stranded in connect_timeout", "postgres://alice:p/?connect_timeout=Secret99@db",
			"pgresilient: invalid DSN: invalid connect_timeout: invalid syntax"},
		{"bad escape in url password", "postgres://alice:Secret99%zz@db/app",
			"pgresilient: invalid DSN: failed to parse as URL: invalid percent-encoded token in password"},
		{"bad escape in url host", "postgres://alice:Secret99@d%zzb/app", "pgresilient: invalid DSN: failed to parse as URL: invalid percent-encoded token"},
		{"unterminated ipv6", "postgres://alice:Secret99@[::1/app",
			`pgresilient: invalid DSN: failed to parse as URL: end of string reached when looking for matching "]" in IPv6 host address in URI`},
		{"bad sslmode", "host=db password=Secret99 sslmode=bogus", "pgresilient: invalid DSN: failed to configure TLS: sslmode is invalid"},
		{"missing CA file", "host=db password=Secret99 sslmode=verify-full sslrootcert=/nonexistent/ca.pem",
			"pgresilient: invalid DSN: failed to configure TLS: unable to read CA file"},
		{"bad connect_timeout", "host=db password=Secret99 connect_timeout=soon", "pgresilient: invalid DSN: invalid connect_timeout: invalid syntax"},
		{"bad target_session_attrs", "postgres://alice:Secret99@db/app?target_session_attrs=Secret99",
			"pgresilient: invalid DSN: unknown target_session_attrs value"},
		{"bad port", "host=db port=Secret99 password=Secret99", "pgresilient: invalid DSN: invalid port"},
		{"password swallowed by an empty value", "host=db target_session_attrs= password=Secret99",
			"pgresilient: invalid DSN: unknown target_session_attrs value"},
		{"foreign name", "sqlmock_db_1", "pgresilient: invalid DSN: failed to parse as keyword/value: invalid keyword/value"},
		{"pgx option", "host=db password=Secret99 statement_cache_capacity=Secret99",
			"pgresilient: invalid DSN: cannot parse statement_cache_capacity: invalid syntax"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig(tt.dsn)
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Param != "" {
				t.Fatalf("ParseConfig(%q) error = %v; want a *ConfigError without Param", tt.dsn, err)
			}
			var pce *pgconn.ParseConfigError
			if !errors.As(err, &pce) {
				t.Errorf("errors.As(%v, *pgconn.ParseConfigError) = false", err)
			}
			if msg := err.Error(); msg != tt.msg {
				t.Errorf("message = %q\nwant      %q", msg, tt.msg)
			}
			if strings.Contains(err.Error(), "Secret99") || strings.Contains(err.Error(), "Wordpart77") {
				t.Errorf("message %q shows the password", err)
			}
		})
	}
}

func TestParseConfigEnv(t *testing.T) {
	isolatePGEnv(t)
	t.Setenv("PGHOST", "envhost")
	t.Setenv("PGPORT", "6543")
	t.Setenv("PGUSER", "envuser")
	t.Setenv("PGSSLMODE", "disable")
	for _, tt := range []struct {
		dsn  string
		want time.Duration
	}{{"", 0}, {"query_timeout=2s", 2 * time.Second}, {"postgres://?query_timeout=3s", 3 * time.Second}} {
		t.Run(tt.dsn, func(t *testing.T) {
			cfg, err := ParseConfig(tt.dsn)
			if err != nil {
				t.Fatal(err)
			}
			cc := cfg.ConnConfig
			if cc.Host != "envhost" || cc.Port != 6543 || cc.User != "envuser" || len(cc.RuntimeParams) != 0 {
				t.Errorf("host, port, user, runtime = %q, %d, %q, %v; want envhost, 6543, envuser, none",
					cc.Host, cc.Port, cc.User, cc.RuntimeParams)
			}
			if cfg.QueryTimeout != tt.want {
				t.Errorf("QueryTimeout = %v, want %v", cfg.QueryTimeout, tt.want)
			}
		})
	}
}

// A service file can carry keys into pgx behind the split's back: ours are
// refused there rather than sent to the server.
func TestParseConfigServiceFile(t *testing.T) {
	isolatePGEnv(t)
	path := filepath.Join(t.TempDir(), "pg_service.conf")
	conf := "[good]\nhost=svchost\nport=6000\n\n[bad]\nhost=svchost\nbreaker=off\n"
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGSERVICEFILE", path)

	cfg, err := ParseConfig("service=good breaker_failures=2 sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ConnConfig.Host != "svchost" || cfg.ConnConfig.Port != 6000 || cfg.BreakerFailures != 2 {
		t.Errorf("host, port, failures = %q, %d, %d", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.BreakerFailures)
	}

	_, err = ParseConfig("service=bad")
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Param != "breaker" || !errors.Is(err, errOutsideDSN) {
		t.Errorf("ParseConfig with our key in a service file: error = %v, want a *ConfigError for breaker", err)
	}
}

func TestDefaultConfig(t *testing.T) {
	want := Config{
		BreakerFailures:    5,
		BreakerCooldown:    time.Second,
		ConnectRetries:     3,
		ConnectBackoff:     100 * time.Millisecond,
		ConnectBackoffMax:  5 * time.Second,
		MonitorGrace:       time.Second,
		MonitorTimeout:     1500 * time.Millisecond,
		KeepalivesIdle:     10 * time.Second,
		KeepalivesInterval: 5 * time.Second,
		KeepalivesCount:    3,
		TCPUserTimeout:     25 * time.Second,
	}
	d := DefaultConfig()
	if d != want {
		t.Errorf("DefaultConfig() = %+v, want %+v", d, want)
	}
	if e := d.effective(); e != want {
		t.Errorf("DefaultConfig().effective() = %+v, want %+v", e, want)
	}
	if e := (&Config{}).effective(); e != want {
		t.Errorf("Config{}.effective() = %+v, want the defaults %+v", e, want)
	}
	if err := d.validate(); err != nil {
		t.Errorf("DefaultConfig().validate() = %v", err)
	}
}

func TestEffective(t *testing.T) {
	tests := []struct {
		name string
		in   Config
		want func(*Config) // changes from DefaultConfig
	}{
		{"no retries", Config{ConnectRetries: -1}, func(c *Config) { c.ConnectRetries = 0 }},
		{"explicit values kept",
			Config{DisableBreaker: true, BreakerFailures: 9, BreakerCooldown: time.Second, ConnectRetries: 7,
				ConnectBackoff: time.Millisecond, ConnectBackoffMax: time.Second, QueryTimeout: time.Minute, DisableTxAutoRollback: true},
			func(c *Config) {
				*c = Config{DisableBreaker: true, BreakerFailures: 9, BreakerCooldown: time.Second, ConnectRetries: 7,
					ConnectBackoff: time.Millisecond, ConnectBackoffMax: time.Second, QueryTimeout: time.Minute, DisableTxAutoRollback: true,
					KeepalivesIdle: c.KeepalivesIdle, KeepalivesInterval: c.KeepalivesInterval, KeepalivesCount: c.KeepalivesCount,
					TCPUserTimeout: c.TCPUserTimeout, MonitorGrace: c.MonitorGrace, MonitorTimeout: c.MonitorTimeout}
			}},
		{"max raised to backoff", Config{ConnectBackoff: 10 * time.Second}, func(c *Config) {
			c.ConnectBackoff = 10 * time.Second
			c.ConnectBackoffMax = 10 * time.Second
		}},
		{"invalid values made usable",
			Config{BreakerFailures: -1, BreakerCooldown: -1, ConnectRetries: 5000, ConnectBackoff: -1, ConnectBackoffMax: -1, QueryTimeout: -1},
			func(c *Config) { c.ConnectRetries = 1000 }},
		{"monitor off kept", Config{MonitorGrace: -1, MonitorTimeout: time.Minute}, func(c *Config) {
			c.MonitorGrace, c.MonitorTimeout = -1, time.Minute
		}},
		{"too many failures clamped", Config{BreakerFailures: 2_000_000}, func(c *Config) { c.BreakerFailures = 1_000_000 }},
		{"TCP settings kept", Config{DisableKeepalives: true, KeepalivesIdle: time.Minute, KeepalivesInterval: -1, KeepalivesCount: -1, TCPUserTimeout: time.Millisecond},
			func(c *Config) {
				c.DisableKeepalives = true
				c.KeepalivesIdle, c.KeepalivesInterval, c.KeepalivesCount, c.TCPUserTimeout = time.Minute, -1, -1, time.Millisecond
			}},
		{"TCP settings clamped", Config{KeepalivesIdle: 10 * time.Hour, KeepalivesInterval: 10 * time.Hour, KeepalivesCount: 1000, TCPUserTimeout: 1000 * time.Hour},
			func(c *Config) {
				c.KeepalivesIdle, c.KeepalivesInterval = 32767*time.Second, 32767*time.Second
				c.KeepalivesCount, c.TCPUserTimeout = 127, (1<<31-1)*time.Millisecond
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := DefaultConfig()
			tt.want(&want)
			if got := tt.in.effective(); got != want {
				t.Errorf("effective() = %+v\nwant          %+v", got, want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name  string
		in    Config
		param string // "" for valid
	}{
		{"zero", Config{}, ""},
		{"no retries", Config{ConnectRetries: -1}, ""},
		{"backoff equals max", Config{ConnectBackoff: time.Second, ConnectBackoffMax: time.Second}, ""},
		{"negative failures", Config{BreakerFailures: -1}, "breaker_failures"},
		{"too many failures", Config{BreakerFailures: 1_000_001}, "breaker_failures"},
		{"negative cooldown", Config{BreakerCooldown: -time.Second}, "breaker_cooldown"},
		{"too many retries", Config{ConnectRetries: 1001}, "connect_retries"},
		{"negative backoff", Config{ConnectBackoff: -1}, "connect_backoff"},
		{"negative max", Config{ConnectBackoffMax: -1}, "connect_backoff_max"},
		{"negative query timeout", Config{QueryTimeout: -1}, "query_timeout"},
		{"backoff above max", Config{ConnectBackoff: 2 * time.Second, ConnectBackoffMax: time.Second}, "connect_backoff"},
		{"backoff above default max", Config{ConnectBackoff: time.Minute}, "connect_backoff"},
		{"max below default backoff", Config{ConnectBackoffMax: time.Millisecond}, "connect_backoff"},
		{"TCP settings as dialled", Config{KeepalivesIdle: -1, KeepalivesInterval: -1, KeepalivesCount: -1, TCPUserTimeout: -1}, ""},
		{"keepalives idle too long", Config{KeepalivesIdle: 32768 * time.Second}, "keepalives_idle"},
		{"keepalives interval too long", Config{KeepalivesInterval: 32768 * time.Second}, "keepalives_interval"},
		{"keepalives count too many", Config{KeepalivesCount: 128}, "keepalives_count"},
		{"user timeout too long", Config{TCPUserTimeout: 1 << 31 * time.Millisecond}, "tcp_user_timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.in.validate()
			if tt.param == "" {
				if err != nil {
					t.Errorf("validate() = %v, want nil", err)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Param != tt.param {
				t.Errorf("validate() = %v, want a *ConfigError for %s", err, tt.param)
			}
		})
	}
}

// newerServerSettings are settings of PostgreSQL releases after the one the
// tests run (16 to 18), which pg_settings cannot list here.
var newerServerSettings = []string{
	"createrole_self_grant", "debug_io_direct", "icu_validation_level", "logical_replication_mode",
	"max_parallel_apply_workers_per_subscription", "reserved_connections", "scram_iterations",
	"send_abort_for_crash", "send_abort_for_kill", "vacuum_buffer_usage_limit", "allow_alter_system",
	"commit_timestamp_buffers", "event_triggers", "huge_pages_status", "io_combine_limit",
	"max_notify_queue_pages", "multixact_member_buffers", "multixact_offset_buffers", "notify_buffers",
	"restrict_nonsystem_relation_kind", "serializable_buffers", "subtransaction_buffers", "summarize_wal",
	"sync_replication_slots", "synchronized_standby_slots", "trace_connection_negotiation",
	"transaction_buffers", "transaction_timeout", "wal_summary_keep_time", "autovacuum_vacuum_max_threshold",
	"autovacuum_worker_slots", "data_checksums", "enable_distinct_reordering", "enable_self_join_elimination",
	"extension_control_path", "file_copy_method", "idle_replication_slot_timeout", "io_max_combine_limit",
	"io_max_concurrency", "io_method", "io_workers", "log_lock_failures", "max_active_replication_origins",
	"md5_password_warnings", "num_os_semaphores", "oauth_validator_libraries", "ssl_groups", "ssl_tls13_ciphers",
	"track_cost_delay_timing", "vacuum_max_eager_freeze_failure_rate", "vacuum_truncate",
}

// libpqKeywords are libpq's connection keywords (PostgreSQL 18), some of
// which pgx does not know.
var libpqKeywords = []string{
	"host", "hostaddr", "port", "dbname", "user", "password", "passfile", "require_auth", "channel_binding",
	"connect_timeout", "client_encoding", "options", "application_name", "fallback_application_name",
	"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
	"replication", "gssencmode", "sslmode", "sslnegotiation", "sslcompression", "sslcert", "sslkey",
	"sslkeylogfile", "sslpassword", "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni",
	"requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version", "min_protocol_version",
	"max_protocol_version", "krbsrvname", "gsslib", "gssdelegation", "scram_client_key", "scram_server_key",
	"service", "servicefile", "target_session_attrs", "load_balance_hosts", "oauth_issuer",
	"oauth_client_id", "oauth_client_secret", "oauth_scope", "requiressl", "tty", "authtype",
}

// No server setting (every one of the server the tests run, and those of
// later releases), no libpq keyword and no pgx keyword is taken for a typo
// of ours or of pgx's: they reach pgx, and the server, as before.
func TestNearMissServerSettings(t *testing.T) {
	c := needCluster(t)
	var settings []string
	if err := c.WithConn(t.Context(), func(conn *pgx.Conn) error {
		rows, err := conn.Query(t.Context(), "select name from pg_settings")
		if err != nil {
			return err
		}
		settings, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(settings) < 300 {
		t.Fatalf("only %d server settings", len(settings))
	}
	names := slices.Concat(settings, newerServerSettings, libpqKeywords, pgxKeys,
		[]string{"DateStyle", "TimeZone", "IntervalStyle", "search_path", "statement_timeout", "myapp.tenant"})
	for _, name := range names {
		if lookupParam(name) != nil {
			continue // libpq's TCP parameters are ours
		}
		if isReservedKey(name) {
			t.Errorf("%s is taken for one of ours (did you mean %s?)", name, suggest(name))
		}
		if !slices.Contains(pgxKeys, name) {
			if s := nearMiss(name, pgxKeys); s != "" {
				t.Errorf("%s is taken for a typo of pgx's %s", name, s)
			}
		}
	}
}
