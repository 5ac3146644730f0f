package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgresilient/pgresilient"
	"github.com/pgresilient/pgresilient/faultproxy"
	"github.com/pgresilient/pgresilient/pgtest"
)

// appNamePrefix starts the application_name of every connection of the two
// pools, so that the demo terminates its own backends and nobody else's.
const appNamePrefix = "pgresilient-demo-"

// env is where the demo runs: a throwaway cluster it controls, or a server
// given with -dsn; and the fault proxy in front of it, when it can have one.
type env struct {
	cluster *pgtest.Cluster   // nil with -dsn
	standby *pgtest.Cluster   // nil with -dsn: a streaming standby of cluster, promoted in phase "failover"
	proxy   *faultproxy.Proxy // nil when the server is not on a loopback address
	direct  string            // DSN reaching the server without the proxy
	base    string            // DSN the pools use: through the proxy when there is one
	noProxy string            // why there is no proxy
	obs     *observer
}

// startCluster starts a throwaway cluster and a proxy in front of it.
func startCluster(ctx context.Context) (*env, error) {
	cl, err := pgtest.Start(ctx)
	if err != nil {
		if errors.Is(err, pgtest.ErrNotFound) {
			return nil, fmt.Errorf("cannot start a throwaway PostgreSQL: %w\n(or point the demo at a server you already run: -dsn postgres://user@host/db)", err)
		}
		return nil, fmt.Errorf("cannot start a throwaway PostgreSQL: %w", err)
	}
	// Started now, on an idle primary, rather than in phase "failover":
	// the copy takes a few seconds, which would hold up the workload. Until
	// that phase it streams asynchronously and no pool knows it.
	sb, err := pgtest.StartStandby(ctx, cl)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("cannot start the standby: %w", err), cl.Close())
	}
	p, err := faultproxy.New(cl.Addr())
	if err != nil {
		return nil, errors.Join(err, sb.Close(), cl.Close())
	}
	e := &env{
		cluster: cl,
		standby: sb,
		proxy:   p,
		direct:  cl.DSN(),
		base:    cl.DSNAt(p.Addr()),
	}
	e.obs = &observer{dsn: e.direct}
	return e, nil
}

// useServer prepares to run against the server of dsn. The fault proxy is put
// in front of it if its address is a loopback one.
func useServer(ctx context.Context, dsn string) (*env, error) {
	cfg, err := pgresilient.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("-dsn: %w", err)
	}
	if cfg.ConnConfig.ConnString() != dsn {
		return nil, errors.New("-dsn: give a plain pgx DSN, without pgresilient's parameters: the demo sets them itself")
	}
	e := &env{direct: dsn, base: dsn}
	e.obs = &observer{dsn: dsn}
	if err := e.obs.with(ctx, func(*pgx.Conn) error { return nil }); err != nil {
		return nil, fmt.Errorf("-dsn: cannot connect: %w", err)
	}
	cc := &cfg.ConnConfig.Config
	if e.noProxy = noProxyReason(cc); e.noProxy != "" {
		return e, nil
	}
	p, err := faultproxy.New(net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port))))
	if err != nil {
		return nil, err
	}
	e.proxy = p
	e.base, err = withParams(dsn, p.Host(), p.Port(), nil)
	if err != nil {
		return nil, errors.Join(err, p.Close())
	}
	return e, nil
}

// noProxyReason says why the fault proxy cannot stand in front of the server
// of cc, or "".
func noProxyReason(cc *pgconn.Config) string {
	for _, fb := range cc.Fallbacks {
		// pgx adds a fallback per TLS mode (sslmode=prefer) for the
		// same address; another address is another server.
		if fb.Host != cc.Host || fb.Port != cc.Port {
			return "the DSN names several hosts"
		}
	}
	switch {
	case strings.HasPrefix(cc.Host, "/"):
		return "the server is reached through a Unix socket"
	case !isLoopback(cc.Host):
		return "the server is not on a loopback address, and the fault proxy only forwards to one"
	}
	return ""
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// close closes the proxy and the cluster: the server is stopped and its
// directory removed.
func (e *env) close() error {
	var errs []error
	if e.proxy != nil {
		errs = append(errs, e.proxy.Close())
	}
	if e.cluster != nil {
		errs = append(errs, e.cluster.Close())
	}
	errs = append(errs, e.standby.Close()) // safe on nil
	return errors.Join(errs...)
}

// withParams returns dsn, in URL or keyword/value form, with the address
// replaced by host:port (unless host is empty) and params added, replacing
// any of the same name. params is a list of key, value pairs.
func withParams(dsn, host string, port int, params []string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", errors.New("-dsn: not a valid URL")
		}
		q := u.Query()
		if host != "" {
			u.Host = net.JoinHostPort(host, strconv.Itoa(port))
			q.Del("host")
			q.Del("port")
		}
		for i := 0; i+1 < len(params); i += 2 {
			q.Set(params[i], params[i+1])
		}
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// keyword/value: a later key wins.
	var b strings.Builder
	b.WriteString(dsn)
	if host != "" {
		b.WriteString(" host=" + host + " port=" + strconv.Itoa(port))
	}
	for i := 0; i+1 < len(params); i += 2 {
		b.WriteString(" " + params[i] + "='" + strings.ReplaceAll(params[i+1], "'", `\'`) + "'")
	}
	return b.String(), nil
}

// withStandby returns dsn, a URL over one host, as a multi-host URL over that
// host and then addr, asking for a read-write session: pgx, and pgresilient
// after it, try the hosts in order and keep the first that accepts writes.
func withStandby(dsn, addr string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil || u.Host == "" {
		return "", errors.New("not a single-host URL: " + dsn)
	}
	u.Host += "," + addr
	q := u.Query()
	q.Set("target_session_attrs", "read-write")
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// observer reaches the server directly, never through the proxy, on a
// connection of its own for each check: it reads the ledgers and the
// sessions' states, and terminates the pools' backends.
type observer struct {
	mu  sync.Mutex
	dsn string
}

// setDSN points the observer at another server: the new primary after a
// failover.
func (o *observer) setDSN(dsn string) {
	o.mu.Lock()
	o.dsn = dsn
	o.mu.Unlock()
}

const observerTimeout = 10 * time.Second

func (o *observer) with(ctx context.Context, f func(*pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(ctx, observerTimeout)
	defer cancel()
	o.mu.Lock()
	dsn := o.dsn
	o.mu.Unlock()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	return f(c)
}

func (o *observer) exec(ctx context.Context, sql string) error {
	return o.with(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, sql)
		return err
	})
}

// sessionState returns pg_stat_activity's state of backend pid.
func (o *observer) sessionState(ctx context.Context, pid int) (string, error) {
	var state string
	err := o.with(ctx, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, "select coalesce(state, '') from pg_stat_activity where pid = $1", pid).Scan(&state)
	})
	return state, err
}

// poolBackends is the condition matching the pools' backends.
const poolBackends = "application_name like '" + appNamePrefix + "%' and pid <> pg_backend_pid()"

// terminate terminates every backend of the two pools at once, as
// pg_terminate_backend does (each client gets FATAL 57P01), then waits up to
// 5 s for them to exit. It returns how many it terminated.
func (o *observer) terminate(ctx context.Context) (int, error) {
	var pids []int32
	err := o.with(ctx, func(c *pgx.Conn) error {
		err := c.QueryRow(ctx, "select coalesce(array_agg(pid), '{}') from pg_stat_activity where "+
			poolBackends+" and pg_terminate_backend(pid)").Scan(&pids)
		if err != nil {
			return err
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			var alive int
			if err := c.QueryRow(ctx, "select count(*)::int from pg_stat_activity where pid = any($1)", pids).Scan(&alive); err != nil {
				return err
			}
			if alive == 0 {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%d terminated backends still alive after 5s", alive)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	return len(pids), err
}

// waitBackendsGone waits until the pools have no backend left, so that a
// statement whose client is gone has finished before the ledgers are read.
func (o *observer) waitBackendsGone(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		var n int
		err := o.with(ctx, func(c *pgx.Conn) error {
			return c.QueryRow(ctx, "select count(*)::int from pg_stat_activity where "+poolBackends).Scan(&n)
		})
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d backends of the pools still busy after %v", n, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
