package pgresilient

import (
	"context"
	"database/sql"
	"time"
)

// Resolving a lost COMMIT: the transaction's id, read inside the
// transaction before COMMIT, is looked up after a reconnect with
// PostgreSQL's txid_status (pg_xact_status since 13: the same function
// under its new name). docs/transactions.md tells why each answer is
// trusted, and when it is not.

// TxID identifies a transaction for ResolveCommit: its transaction id, and
// what makes sure that a later answer about that id is about this
// transaction (the server's timeline and start, and how far its WAL went).
// Read it with ReadTxID inside the transaction, after its writes and before
// Commit. The zero TxID is a transaction that wrote nothing.
type TxID struct {
	xid string // the 64-bit transaction id (txid, xid8), "" if none was assigned
	// incarnation is the server's timeline, start time and end of its last
	// recovery, as text: a crash, a restart or a promotion changes it.
	incarnation string
	// lsn is the WAL insert position when the id was read: every WAL record
	// of the transaction so far ends at or before it.
	lsn string
}

// Wrote reports whether the transaction had written anything (it had a
// transaction id) when the TxID was read. A transaction that wrote nothing
// commits nothing: there is no outcome to resolve.
func (id TxID) Wrote() bool { return id.xid != "" }

// String returns the transaction id, or "" if the transaction wrote nothing.
func (id TxID) String() string { return id.xid }

// readTxIDQuery reads the transaction id only if one is assigned (no id is
// spent on a transaction that wrote nothing), and then the server's
// incarnation and WAL position. The txid_ functions exist since
// PostgreSQL 10, with the same 64-bit value as 13's pg_current_xact_id.
// A transaction with an id runs on a primary, where pg_walfile_name works.
const readTxIDQuery = `select x::text,
 case when x is null then null else concat_ws('/', substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8),
   extract(epoch from pg_postmaster_start_time())::text, pg_last_wal_replay_lsn()::text) end,
 case when x is null then null else pg_current_wal_insert_lsn()::text end
 from txid_current_if_assigned() x`

// ReadTxID reads the transaction id of tx, for ResolveCommit after a lost
// COMMIT. Call it after the transaction's last write, right before Commit:
// one round trip, and no transaction id is assigned by it (a transaction
// that wrote nothing gets a TxID whose Wrote is false). It works on
// PostgreSQL 10 and later, over any driver.
func ReadTxID(ctx context.Context, tx *sql.Tx) (TxID, error) {
	var xid, inc, lsn sql.NullString
	if err := tx.QueryRowContext(ctx, readTxIDQuery).Scan(&xid, &inc, &lsn); err != nil {
		return TxID{}, err
	}
	return TxID{xid: xid.String, incarnation: inc.String, lsn: lsn.String}, nil
}

// resolveQuery asks a server about a transaction id. On a standby (in
// recovery) it asks nothing: a standby behind the primary answers "in
// progress" for a committed transaction. $2 is the TxID's incarnation, $3
// its WAL position.
const resolveQuery = `select r,
 case when r then null else concat_ws('/', substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8),
   extract(epoch from pg_postmaster_start_time())::text, pg_last_wal_replay_lsn()::text) = $2 end,
 case when r then null else coalesce(pg_last_wal_replay_lsn() >= $3::pg_lsn, false) end,
 case when r then null else pg_last_wal_replay_lsn() is null
   and substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8) = split_part($2, '/', 1) end,
 case when r then null else coalesce(pg_last_wal_replay_lsn() < $3::pg_lsn, false) end,
 case when r then null else txid_status($1::bigint) end
 from pg_is_in_recovery() r`

// DefaultResolveWait bounds ResolveCommit's retries when ctx has no
// deadline.
const DefaultResolveWait = 10 * time.Second

// The waits between ResolveCommit's tries: full jitter, doubling.
const (
	resolveBackoff    = 20 * time.Millisecond
	resolveBackoffMax = 500 * time.Millisecond
)

// UnresolvedError is ResolveCommit's error when no server could say whether
// the transaction committed. It matches ErrConnLost: the outcome is still
// unknown.
type UnresolvedError struct {
	XID    string // the transaction id asked about
	Reason string // why it is still unknown
	Err    error  // the last error met, if any
}

// Error says why the outcome is still unknown.
func (e *UnresolvedError) Error() string {
	s := "pgresilient: outcome of transaction " + e.XID + " still unknown: " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns ErrConnLost and the last error.
func (e *UnresolvedError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrConnLost}
	}
	return []error{ErrConnLost, e.Err}
}

// ResolveCommit asks the database whether the transaction id read with
// ReadTxID committed, after its COMMIT's outcome was lost. It asks through
// db, a pool of the same database (a pgresilient pool reconnects, and with
// target_session_attrs=read-write finds the new primary after a failover),
// trying again with backoff until ctx ends (DefaultResolveWait when ctx has
// no deadline) while the server cannot be reached, is a standby, or says the
// transaction is still in progress.
//
// It returns true when the transaction committed, false when it did not
// (it was aborted; or the answering server never saw it, as after a
// failover to a standby that had not received it: there it did not commit,
// and running it again is safe), and an *UnresolvedError, matching
// ErrConnLost, when the outcome is still unknown: ctx ended first, only a
// standby answered, the transaction is still in progress (a COMMIT waiting
// for a synchronous standby, say), its status is too old to be known, or
// the server restarted or was promoted since, without having replayed the
// transaction's WAL, so that its "committed" may be about another
// transaction that reused the id. A TxID whose Wrote is false resolves to
// false at once: the transaction had nothing to commit.
func ResolveCommit(ctx context.Context, db *sql.DB, id TxID) (bool, error) {
	committed, err := resolveCommit(ctx, db, id)
	if cn, ok := ConnectorOf(db); ok {
		switch {
		case err != nil:
			cn.stats.unresolved.Add(1)
		case committed:
			cn.stats.resolvedCommitted.Add(1)
		default:
			cn.stats.resolvedAborted.Add(1)
		}
	}
	return committed, err
}

func resolveCommit(ctx context.Context, db *sql.DB, id TxID) (bool, error) {
	if !id.Wrote() {
		return false, nil
	}
	if err := ctx.Err(); err != nil {
		return false, &UnresolvedError{XID: id.xid, Reason: "no time left to ask", Err: err}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultResolveWait)
		defer cancel()
	}
	var why, target string
	var last error
	for try := 0; ; try++ {
		committed, known, reason, err := resolveOnce(ctx, db, id, &target)
		if known {
			return committed, nil
		}
		why, last = reason, err
		if reason == reasonTooOld || reason == reasonReused {
			break // asking again changes nothing
		}
		wait := backoff(try, resolveBackoff, resolveBackoffMax)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= wait {
			break
		}
		if txSleep(ctx, wait) != nil {
			break
		}
	}
	if last == nil {
		last = ctx.Err()
	}
	return false, &UnresolvedError{XID: id.xid, Reason: why, Err: last}
}

// The reasons an outcome stays unknown.
const (
	reasonUnreachable = "no server answered"
	reasonStandby     = "only a standby answered (it may be behind the primary)"
	reasonInProgress  = "the transaction is still in progress"
	reasonTooOld      = "its status is too old to be known (the id was truncated or wrapped around)"
	reasonReused      = "the server restarted or was promoted since the transaction began, without having replayed its WAL: its answer may be about another transaction with the same id"
	// reasonUnreplicated: committed on the primary, where a synchronous
	// standby is configured that has not confirmed it. A COMMIT whose wait
	// for the standby was canceled (a cancel request, a terminated
	// backend) commits locally; a failover to the standby would lose it.
	reasonUnreplicated = "it committed on the primary, but no synchronous standby has confirmed it yet (its wait for the standby was cut short)"
)

// resolveOnce asks once: known says whether committed is the answer;
// otherwise reason (and err) say why not.
func resolveOnce(ctx context.Context, db *sql.DB, id TxID, target *string) (committed, known bool, reason string, err error) {
	var inRecovery bool
	// same: the server that ran the transaction, still up; replayed: one
	// whose recovery went past the transaction's WAL; cleanStart: restarted
	// on the same timeline without any recovery (a clean shutdown: its
	// transaction ids went on where they were); endedBefore: one whose
	// recovery ended before the transaction began (a standby promoted
	// without it: the transaction is not in its history).
	var same, replayed, cleanStart, endedBefore sql.NullBool
	var status sql.NullString
	err = db.QueryRowContext(ctx, resolveQuery, id.xid, id.incarnation, id.lsn).Scan(&inRecovery, &same, &replayed,
		&cleanStart, &endedBefore, &status)
	if err != nil {
		if neverSeen(err) {
			// A primary (the query asks nothing of a standby) whose
			// transaction ids have not reached this one: it never saw the
			// transaction, so on this server, whose history is now the
			// database's, it did not commit.
			return false, true, "", nil
		}
		return false, false, reasonUnreachable, err
	}
	switch {
	case inRecovery:
		return false, false, reasonStandby, nil
	case endedBefore.Bool && !same.Bool:
		// This primary's history stops before the transaction began: it
		// never committed there, whatever the id says now (another
		// transaction may have it).
		return false, true, "", nil
	case !status.Valid:
		return false, false, reasonTooOld, nil
	}
	switch status.String {
	case "aborted":
		// Trusted on any primary of the database: had this transaction
		// committed in the history the server has, its WAL would be there
		// and the id would be its own.
		return false, true, "", nil
	case "committed":
		if !same.Bool && !replayed.Bool && !cleanStart.Bool {
			return false, false, reasonReused, nil
		}
		if ok, err := replicated(ctx, db, target); err != nil || !ok {
			return false, false, reasonUnreplicated, err
		}
		return true, true, "", nil
	}
	return false, false, reasonInProgress, nil
}

// replicatedQuery: whether the primary's WAL, up to target (its flush
// position when the transaction was first found committed; $1, "" the first
// time), is on a synchronous standby; true when none is configured. It
// returns the target it compared with.
const replicatedQuery = `with t as (select coalesce(nullif($1, '')::pg_lsn, pg_current_wal_flush_lsn()) lsn)
 select t.lsn::text, current_setting('synchronous_standby_names') = ''
   or exists (select 1 from pg_stat_replication r where r.sync_state in ('sync', 'quorum') and r.flush_lsn >= t.lsn)
 from t`

// replicated reports whether a committed transaction is confirmed where
// synchronous replication says it must be: on at least one synchronous
// standby (an ANY n or FIRST n rule wanting more is not parsed), or
// anywhere when none is configured. target keeps the WAL position compared
// with across tries: at or past the transaction's commit record, since
// the commit happened before the first try.
func replicated(ctx context.Context, db *sql.DB, target *string) (bool, error) {
	var ok bool
	if err := db.QueryRowContext(ctx, replicatedQuery, *target).Scan(target, &ok); err != nil {
		return false, err
	}
	return ok, nil
}

// resolvedNotCommitted is the error of an attempt whose COMMIT lost its
// connection and that the server then said did not commit: RunTx runs it
// again. It matches ErrNotCommitted, not ErrConnLost: the lost COMMIT's
// error is kept as text only.
type resolvedNotCommitted struct {
	xid   string
	cause error
}

func (e *resolvedNotCommitted) Error() string {
	if e.xid == "" {
		return "pgresilient: connection lost during COMMIT of a transaction that wrote nothing: " + errString(e.cause)
	}
	return "pgresilient: connection lost during COMMIT, and the server says transaction " + e.xid +
		" did not commit: " + errString(e.cause)
}

func (e *resolvedNotCommitted) Unwrap() error { return ErrNotCommitted }
