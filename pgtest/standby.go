package pgtest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// StartStandby makes a streaming hot standby of primary: pg_basebackup -R
// into a fresh temporary directory, started on its own free 127.0.0.1 port.
// It returns once the standby accepts (read-only) connections; WaitStreaming
// on the primary tells when it has caught up and streams. primary may itself
// be a standby (cascading replication).
//
// The standby is a Cluster like Start's: the same DSN, Stop, Restart and Close,
// reaped the same way when its test process dies. Closing one of the two
// servers leaves the other running; each needs its own Close.
//
// The copy inherits what ALTER SYSTEM set on primary, SetReadOnly's and
// SetSynchronous's settings included: a standby of a synchronous primary,
// once promoted, waits for a standby of its own at each commit until
// SetSynchronous(ctx, false).
func StartStandby(ctx context.Context, primary *Cluster) (*Cluster, error) {
	if primary == nil {
		return nil, errors.New("pgtest: StartStandby: nil primary")
	}
	c, err := newCluster(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.createStandby(ctx, primary); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

func (c *Cluster) createStandby(ctx context.Context, primary *Cluster) error {
	bctx, cancel := withDefaultTimeout(ctx, defaultWait)
	defer cancel()
	// -R writes standby.signal and primary_conninfo; -X stream copies the
	// WAL written meanwhile; -c fast checkpoints at once.
	if _, err := c.run.Run(bctx, c.dir, "pg_basebackup",
		"-h", host, "-p", strconv.Itoa(primary.Port()), "-U", Superuser,
		"-D", c.data, "-R", "-X", "stream", "-c", "fast", "--no-sync"); err != nil {
		return err
	}
	// The copy's pgtest.conf names the primary's port and socket directory:
	// startOnFreePort rewrites it for ours.
	return c.startOnFreePort(ctx)
}

// Promote promotes a standby to a primary with pg_promote and returns once it
// accepts writes: it is out of recovery and transaction_read_only is off
// (unless default_transaction_read_only is on, see SetReadOnly). ctx bounds
// the wait. Promoting a primary is an error.
func (c *Cluster) Promote(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx, defaultWait)
	defer cancel()
	secs := waitSeconds(ctx)
	ok, err := QueryValue[bool](ctx, c, "SELECT pg_promote(true, "+secs+")")
	if err != nil {
		return fmt.Errorf("pgtest: promote: %w", err)
	}
	if !ok {
		return fmt.Errorf("pgtest: promote: not done within %s s", secs)
	}
	return c.poll(ctx, "promoted server accepting writes", func(conn *pgx.Conn) (bool, error) {
		var inRecovery bool
		err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
		return !inRecovery, err
	})
}

// InHotStandby reports whether the server is a standby in recovery, as
// pg_is_in_recovery() says.
func (c *Cluster) InHotStandby(ctx context.Context) (bool, error) {
	return QueryValue[bool](ctx, c, "SELECT pg_is_in_recovery()")
}

// IsPrimary reports whether the server accepts writes from a new session: it
// is not in recovery and transaction_read_only is off. This is what libpq's
// and pgx's target_session_attrs=read-write check; a primary demoted with
// SetReadOnly(ctx, true) is not one.
func (c *Cluster) IsPrimary(ctx context.Context) (bool, error) {
	return QueryValue[bool](ctx, c,
		"SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'")
}

// SetReadOnly sets default_transaction_read_only for the whole server with
// ALTER SYSTEM and pg_reload_conf, and returns once new sessions see it. On,
// it demotes a primary without a failover: new transactions are read-only
// (existing sessions follow at their next statement) and clients checking
// target_session_attrs=read-write look elsewhere. Off undoes it. The setting is
// kept in postgresql.auto.conf, so it survives Restart, and a standby made
// later with StartStandby inherits it.
func (c *Cluster) SetReadOnly(ctx context.Context, on bool) error {
	val := "off"
	if on {
		val = "on"
	}
	return c.alterSystem(ctx, "default_transaction_read_only", val)
}

// SetSynchronous turns synchronous replication on or off on a primary: on
// sets synchronous_standby_names to '*' and synchronous_commit to on, so a
// commit is acknowledged only once a standby has flushed it; off resets
// synchronous_standby_names. With it on and no standby streaming, commits
// wait. It returns once new sessions see the setting; WaitStreaming tells
// when a standby is synchronous.
func (c *Cluster) SetSynchronous(ctx context.Context, on bool) error {
	if !on {
		return c.alterSystem(ctx, "synchronous_standby_names", "")
	}
	// pgtest.conf turns synchronous_commit off, which would not wait.
	if err := c.alterSystem(ctx, "synchronous_commit", "on"); err != nil {
		return err
	}
	return c.alterSystem(ctx, "synchronous_standby_names", "*")
}

// WaitStreaming waits until at least n standbys stream from the server and,
// when synchronous_standby_names is set, one of them is synchronous. ctx
// bounds the wait.
func (c *Cluster) WaitStreaming(ctx context.Context, n int) error {
	ctx, cancel := withDefaultTimeout(ctx, defaultWait)
	defer cancel()
	return c.poll(ctx, strconv.Itoa(n)+" streaming standbys", func(conn *pgx.Conn) (bool, error) {
		var streaming, sync int
		var names string
		err := conn.QueryRow(ctx, `SELECT count(*)::int,
				count(*) FILTER (WHERE sync_state IN ('sync', 'quorum'))::int,
				current_setting('synchronous_standby_names')
			FROM pg_stat_replication WHERE state = 'streaming'`).Scan(&streaming, &sync, &names)
		return err == nil && streaming >= n && (names == "" || n == 0 || sync > 0), err
	})
}

// alterSystem sets name to val with ALTER SYSTEM (empty val: RESET), reloads
// the configuration and waits until a new session sees it.
func (c *Cluster) alterSystem(ctx context.Context, name, val string) error {
	ctx, cancel := withDefaultTimeout(ctx, defaultWait)
	defer cancel()
	stmt := "ALTER SYSTEM SET " + name + " = " + quoteConf(val)
	if val == "" {
		stmt = "ALTER SYSTEM RESET " + name
	}
	// ALTER SYSTEM refuses to run in a transaction block: one statement each.
	if err := c.Exec(ctx, stmt); err != nil {
		return err
	}
	if err := c.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return err
	}
	return c.poll(ctx, name+" = "+quoteConf(val), func(conn *pgx.Conn) (bool, error) {
		var got string
		err := conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&got)
		return got == val, err
	})
}

// poll calls cond on a new connection each time until it returns true, and
// fails with what's description and cond's last error when ctx ends first.
func (c *Cluster) poll(ctx context.Context, what string, cond func(*pgx.Conn) (bool, error)) error {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		var ok bool
		err := c.WithConn(ctx, func(conn *pgx.Conn) error {
			var err error
			ok, err = cond(conn)
			return err
		})
		if ok && err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return fmt.Errorf("pgtest: waiting for %s: %w", what, err)
		case <-t.C:
		}
	}
}
