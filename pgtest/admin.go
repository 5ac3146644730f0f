package pgtest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgresilient/pgresilient/pgtest/internal/proc"
)

// terminateWait is how long TerminateBackends waits for each backend to exit.
const terminateWait = 5 * time.Second

// notAdmin selects the client backends of pg_stat_activity that are not ours:
// WithConn's connections name themselves proc.AdminApp, and one just closed
// may linger for a moment before its backend exits.
const notAdmin = `backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name <> '` + proc.AdminApp + `'`

// WithConn opens a superuser connection, passes it to fn and closes it. Each
// call opens its own connection, so it works across restarts; fn must not
// keep conn.
func (c *Cluster) WithConn(ctx context.Context, fn func(conn *pgx.Conn) error) error {
	cfg, err := pgx.ParseConfig(c.DSN())
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	cfg.ConnectTimeout = 5 * time.Second
	cfg.RuntimeParams["application_name"] = proc.AdminApp
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("pgtest: connect: %w", err)
	}
	err = fn(conn)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	return errors.Join(err, conn.Close(cctx))
}

// Exec runs sql with args as the superuser on a connection of its own. Without
// args, sql may hold several statements separated by semicolons.
func (c *Cluster) Exec(ctx context.Context, sql string, args ...any) error {
	return c.WithConn(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sql, args...)
		return err
	})
}

// QueryValue runs sql with args as the superuser on a connection of its own
// and returns the single column of its single row, such as a count.
func QueryValue[T any](ctx context.Context, c *Cluster, sql string, args ...any) (T, error) {
	var v T
	err := c.WithConn(ctx, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, sql, args...).Scan(&v)
	})
	return v, err
}

// ClientBackends returns how many client connections the server has, in any
// database, not counting the Cluster's own. A connection closed by its client
// may linger for a moment before its backend exits: poll for a leak check.
func (c *Cluster) ClientBackends(ctx context.Context) (int, error) {
	return QueryValue[int](ctx, c, "SELECT count(*)::int FROM pg_stat_activity WHERE "+notAdmin)
}

// TerminateBackends terminates every client connection, in every database,
// except the Cluster's own, as pg_terminate_backend does: each client gets
// FATAL 57P01 "terminating connection due to administrator command". It
// returns once they have all exited (waiting up to 5 s for each) and reports
// how many it terminated.
func (c *Cluster) TerminateBackends(ctx context.Context) (int, error) {
	var n int
	err := c.WithConn(ctx, func(conn *pgx.Conn) error {
		var version int
		if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
			return err
		}
		if version < 140000 {
			var err error
			n, err = terminateAndPoll(ctx, conn)
			return err
		}
		// The timeout form waits for the backend to exit. It returns false,
		// with a warning, when the backend was already gone or outlived
		// the timeout; only the latter is an error.
		rows, err := conn.Query(ctx, `SELECT pid, pg_terminate_backend(pid, $1) FROM pg_stat_activity
			WHERE `+notAdmin, terminateWait.Milliseconds())
		if err != nil {
			return err
		}
		var missed []int
		for rows.Next() {
			var pid int
			var done bool
			if err := rows.Scan(&pid, &done); err != nil {
				return err
			}
			if done {
				n++
			} else {
				missed = append(missed, pid)
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(missed) == 0 {
			return nil
		}
		var alive int
		if err := conn.QueryRow(ctx, "SELECT count(*)::int FROM pg_stat_activity WHERE pid = ANY($1)", missed).Scan(&alive); err != nil {
			return err
		}
		if alive > 0 {
			return fmt.Errorf("pgtest: %d terminated backends still alive after %v", alive, terminateWait)
		}
		return nil
	})
	return n, err
}

// terminateAndPoll serves servers before PostgreSQL 14, whose
// pg_terminate_backend only signals: it polls until the backends are gone.
func terminateAndPoll(ctx context.Context, conn *pgx.Conn) (int, error) {
	var pids []int
	if err := conn.QueryRow(ctx, `SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_activity
		WHERE `+notAdmin+` AND pg_terminate_backend(pid)`).Scan(&pids); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, terminateWait)
	defer cancel()
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		var alive int
		if err := conn.QueryRow(ctx, "SELECT count(*)::int FROM pg_stat_activity WHERE pid = ANY($1)", pids).Scan(&alive); err != nil {
			return len(pids), err
		}
		if alive == 0 {
			return len(pids), nil
		}
		select {
		case <-ctx.Done():
			return len(pids), fmt.Errorf("pgtest: %d terminated backends still alive after %v", alive, terminateWait)
		case <-t.C:
		}
	}
}
