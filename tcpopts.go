package pgresilient

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// The TCP settings of each connection's socket: libpq's keepalives,
// keepalives_idle, keepalives_interval, keepalives_count and
// tcp_user_timeout, which pgx does not know (it would send them to the
// server, which refuses the first four and takes tcp_user_timeout as the
// setting of its own end of the connection).
//
// They are applied to the socket every dial returns, whatever DialFunc made
// it, so that a Config built around pgx's own ConnConfig gets them too; a
// connection that is not a *net.TCPConn (a Unix socket, a custom DialFunc's
// tunnel) is left alone. Keepalive settings go through Go's
// net.KeepAliveConfig, which sets them on Linux, the BSDs, macOS and Windows
// (Windows before 10 1709 and Solaris set fewer of them: see its doc);
// TCP_USER_TIMEOUT exists on Linux only (tcpopts_linux.go) and is ignored
// elsewhere, as libpq ignores it.

// tcpOptions is what apply sets on a socket.
type tcpOptions struct {
	keepalive   net.KeepAliveConfig // Enable false: keepalives off; a negative field: left as dialled
	userTimeout time.Duration       // negative: left as dialled
}

// newTCPOptions reads the TCP settings of an effective Config.
func newTCPOptions(c *Config) tcpOptions {
	keep := func(d time.Duration) time.Duration {
		if d < 0 {
			return -1
		}
		return d
	}
	o := tcpOptions{userTimeout: c.TCPUserTimeout}
	if !c.DisableKeepalives {
		count := c.KeepalivesCount
		if count < 0 {
			count = -1
		}
		o.keepalive = net.KeepAliveConfig{Enable: true, Idle: keep(c.KeepalivesIdle),
			Interval: keep(c.KeepalivesInterval), Count: count}
	}
	return o
}

// apply sets o on nc when it is a TCP connection.
func (o tcpOptions) apply(nc net.Conn) error {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return nil
	}
	var err error
	if o.keepalive.Enable {
		err = tc.SetKeepAliveConfig(o.keepalive)
	} else {
		err = tc.SetKeepAlive(false)
	}
	if err == nil && o.userTimeout >= 0 {
		err = setUserTimeout(tc, o.userTimeout)
	}
	if err != nil {
		return fmt.Errorf("pgresilient: setting TCP options: %w", err)
	}
	return nil
}

// systemDialer is the DialFunc ParseConfig gives pgx instead of pgx's own,
// which sets Go's keepalive defaults (15s idle, 15s interval, 9 probes): it
// leaves every TCP setting to the operating system, so that a parameter set
// to 0 ("the system's setting", as in libpq) really is the system's. timeout
// is pgx's connect_timeout, as pgx's dialer has it.
func systemDialer(timeout time.Duration) pgconn.DialFunc {
	d := &net.Dialer{
		Timeout:         timeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1},
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}
}
