package haproxy

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Check is the rhythm of HAProxy's health checks, the default-server
// settings inter, fall and rise. A server goes DOWN after Fall failed checks
// in a row, and UP after Rise passed ones; HAProxy checks each server every
// Inter, and Inter also bounds one check (no "timeout check" is set).
type Check struct {
	Inter time.Duration // between two checks of a server; 0 is PatroniCheck's
	Fall  int           // failed checks in a row that mark a server DOWN; 0 is PatroniCheck's
	Rise  int           // passed checks in a row that mark a server UP; 0 is PatroniCheck's
}

var (
	// PatroniCheck is what Patroni's documentation recommends for HAProxy:
	// inter 3s fall 3 rise 2. A Config whose Check is zero uses it: it is
	// what users run. HAProxy marks a new primary UP 3 to 6 s after it
	// passes its check, and the old one DOWN 6 to 9 s after it fails; from
	// then on the new one alone is routed to (measured: 5 to 8 s after
	// pgtest's Switchover returned).
	PatroniCheck = Check{Inter: 3 * time.Second, Fall: 3, Rise: 2}

	// FastCheck is inter 1s fall 2 rise 1, the setting issue 21 measured
	// with: HAProxy marks a new primary UP within 1 s of passing its check,
	// and the old one DOWN 1 to 2 s after it fails (measured: routed to
	// the new one alone within 1 s of Switchover's return), which keeps
	// failover tests short.
	FastCheck = Check{Inter: time.Second, Fall: 2, Rise: 1}
)

// Config chooses how HAProxy checks and forwards. Zero fields take the
// defaults noted.
type Config struct {
	// Check is the health checks' rhythm. Zero fields take PatroniCheck's.
	Check Check

	// CheckRequest is the health check's HTTP method and path, as "option
	// httpchk" takes them. A server passes when it answers 200 on its
	// CheckPort. "" is "OPTIONS /primary": Patroni's REST API answers 200
	// only on the running primary holding the leader lock.
	CheckRequest string

	// ConnectTimeout bounds connecting to a server (timeout connect);
	// 0 is 4 s.
	ConnectTimeout time.Duration

	// IdleTimeout is how long a connection may stay silent both ways
	// before HAProxy closes it (timeout client and timeout server, equal,
	// as HAProxy advises for TCP). 0 is 30 min, so that a long statement
	// is not cut. HAProxy 2.6 accepts no "infinite": 0 or no value
	// disables the timeout but warns at every start.
	IdleTimeout time.Duration

	// MaxConn is how many client connections HAProxy serves at once
	// (global and frontend maxconn); more wait in the kernel's accept
	// queue. 0 is 1000. Servers have no limit of their own: a full
	// PostgreSQL refuses with 53300 itself, as it would behind a real
	// HAProxy that does not queue.
	MaxConn int
}

// Defaults of Config's zero fields.
const (
	defaultCheckRequest   = "OPTIONS /primary"
	defaultConnectTimeout = 4 * time.Second
	defaultIdleTimeout    = 30 * time.Minute
	defaultMaxConn        = 1000
)

// withDefaults fills in zero fields and validates the rest.
func (c Config) withDefaults() (Config, error) {
	if c.Check.Inter == 0 {
		c.Check.Inter = PatroniCheck.Inter
	}
	if c.Check.Fall == 0 {
		c.Check.Fall = PatroniCheck.Fall
	}
	if c.Check.Rise == 0 {
		c.Check.Rise = PatroniCheck.Rise
	}
	if c.CheckRequest == "" {
		c.CheckRequest = defaultCheckRequest
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = defaultConnectTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = defaultIdleTimeout
	}
	if c.MaxConn == 0 {
		c.MaxConn = defaultMaxConn
	}
	var errs []error
	// HAProxy counts in milliseconds: a shorter duration would be written
	// as 0, which means something else.
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"Check.Inter", c.Check.Inter}, {"ConnectTimeout", c.ConnectTimeout}, {"IdleTimeout", c.IdleTimeout}} {
		if d.v < time.Millisecond {
			errs = append(errs, fmt.Errorf("%s %v: below 1ms", d.name, d.v))
		}
	}
	if c.Check.Fall < 0 || c.Check.Rise < 0 {
		errs = append(errs, fmt.Errorf("Check.Fall %d, Check.Rise %d: negative", c.Check.Fall, c.Check.Rise))
	}
	if c.MaxConn < 0 {
		errs = append(errs, fmt.Errorf("MaxConn %d: negative", c.MaxConn))
	}
	method, path, ok := strings.Cut(c.CheckRequest, " ")
	if !ok || !isToken(method) || !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \t\r\n\"'\\#") {
		errs = append(errs, fmt.Errorf("CheckRequest %q: want METHOD /path", c.CheckRequest))
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("pgtest/haproxy: invalid config: %w", err)
	}
	return c, nil
}

// Server is one server HAProxy forwards to, checked over HTTP on the same
// host at CheckPort.
type Server struct {
	Name      string // HAProxy's name for it, unique: letters, digits, '.', '_', '-'
	Addr      string // "host:port" connections are forwarded to
	CheckPort int    // port of the HTTP health check on Addr's host, such as Patroni's REST API
}

func validateServers(servers []Server) error {
	if len(servers) == 0 {
		return errors.New("pgtest/haproxy: no server")
	}
	seen := make(map[string]bool)
	var errs []error
	for _, s := range servers {
		if s.Name == "" || strings.Trim(s.Name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" {
			errs = append(errs, fmt.Errorf("server name %q: want letters, digits, '.', '_', '-'", s.Name))
		}
		if seen[s.Name] {
			errs = append(errs, fmt.Errorf("server name %q: twice", s.Name))
		}
		seen[s.Name] = true
		if h, p, err := net.SplitHostPort(s.Addr); err != nil || h == "" || !validPort(p) || strings.ContainsAny(h, " \t\r\n#\"'\\") {
			errs = append(errs, fmt.Errorf("server %q: address %q: want host:port", s.Name, s.Addr))
		}
		if s.CheckPort <= 0 || s.CheckPort > 65535 {
			errs = append(errs, fmt.Errorf("server %q: check port %d", s.Name, s.CheckPort))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pgtest/haproxy: %w", err)
	}
	return nil
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n > 0 && n <= 65535
}

// isToken reports whether s is an HTTP method token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r > 0x7e || r <= ' ' || strings.ContainsRune("\"(),/:;<=>?@[\\]{}", r) {
			return false
		}
	}
	return true
}

// backendName is the name of the listen section, which prefixes every
// server's name in HAProxy's messages: "pg/node1".
const backendName = "pg"

// ms writes a duration in HAProxy's default unit, milliseconds.
func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

// render writes haproxy.cfg. The health check is Patroni's recommendation:
// an HTTP check on each server's check port, 200 expected, and every
// session to a server closed when it is marked DOWN. Logs of server state
// changes (levels emerg to notice, not the per-connection info lines) go to
// file descriptor 3, a pipe read by the Proxy; HAProxy's own messages go to
// its standard error.
func render(cfg Config, port int, socket string, servers []Server) string {
	var b strings.Builder
	line := func(indent bool, f string, args ...any) {
		if indent {
			b.WriteString("    ")
		}
		fmt.Fprintf(&b, f, args...)
		b.WriteByte('\n')
	}
	line(false, "# written by pgtest/haproxy")
	line(false, "global")
	line(true, "maxconn %d", cfg.MaxConn)
	line(true, "stats socket %s mode 600 level admin", socket)
	line(true, "log fd@3 format raw local0 notice")
	line(false, "")
	line(false, "defaults")
	line(true, "mode tcp")
	line(true, "log global")
	line(true, "timeout connect %s", ms(cfg.ConnectTimeout))
	line(true, "timeout client %s", ms(cfg.IdleTimeout))
	line(true, "timeout server %s", ms(cfg.IdleTimeout))
	line(false, "")
	line(false, "listen %s", backendName)
	line(true, "bind %s", net.JoinHostPort(host, strconv.Itoa(port)))
	line(true, "maxconn %d", cfg.MaxConn)
	line(true, "option httpchk %s", cfg.CheckRequest)
	line(true, "http-check expect status 200")
	line(true, "default-server inter %s fall %d rise %d on-marked-down shutdown-sessions",
		ms(cfg.Check.Inter), cfg.Check.Fall, cfg.Check.Rise)
	for _, s := range servers {
		line(true, "server %s %s check port %d", s.Name, s.Addr, s.CheckPort)
	}
	return b.String()
}
