package main

import (
	"context"
	"database/sql"
	"strconv"

	"github.com/jackc/pgx/v5"
)

const (
	initialBalance  = 10_000
	overdraftAmount = 1_000_000_000 // more than all the money in the ledger
)

// ledger is one pool's pair of tables: accounts with a balance that may not go
// negative, and one row per transfer. The request id of a transfer is
// deliberately not unique: a transfer run twice shows up as two rows instead
// of being hidden by a constraint error.
type ledger struct {
	accounts, transfers string
	n                   int

	insertSQL, debitSQL, creditSQL string
	stmtPrefix                     string // how every single-statement transfer starts, for the fault proxy to match
}

// newLedger names the tables prefix_accounts_pool and prefix_transfers_pool.
func newLedger(prefix, poolName string, n int) *ledger {
	l := &ledger{
		accounts:  prefix + "_accounts_" + poolName,
		transfers: prefix + "_transfers_" + poolName,
		n:         n,
	}
	l.insertSQL = "insert into " + l.transfers + " (request_id, phase, src, dst, amount) values ($1, $2, $3, $4, $5)"
	l.debitSQL = "update " + l.accounts + " set balance = balance - $1 where id = $2"
	l.creditSQL = "update " + l.accounts + " set balance = balance + $1 where id = $2"
	l.stmtPrefix = "with t as (insert into " + l.transfers + " "
	return l
}

// total is the money the ledger holds, before and after any number of transfers.
func (l *ledger) total() int64 { return int64(l.n) * initialBalance }

// txBody writes a transfer inside tx: the record, then the two balances in
// account order, so that concurrent transfers lock rows in the same order and
// never deadlock.
func (l *ledger) txBody(ctx context.Context, tx *sql.Tx, t transfer) error {
	if _, err := tx.ExecContext(ctx, l.insertSQL, t.req, t.phase, t.src, t.dst, t.amount); err != nil {
		return err
	}
	first, second := l.debitSQL, l.creditSQL
	a, b := t.src, t.dst
	if t.dst < t.src {
		first, second = second, first
		a, b = b, a
	}
	if _, err := tx.ExecContext(ctx, first, t.amount, a); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, second, t.amount, b)
	return err
}

// stmtSQL appends to buf the single-statement form of t: the record and both
// balances in one autocommit statement. The values are integers made here,
// written inline, so the statement has no bind parameters and pgx sends it
// with the simple protocol, as it sends every statement without arguments.
func (l *ledger) stmtSQL(buf []byte, t transfer) []byte {
	buf = append(buf, l.stmtPrefix...)
	buf = append(buf, "(request_id, phase, src, dst, amount) values ("...)
	buf = strconv.AppendInt(buf, t.req, 10)
	buf = append(buf, ", "...)
	buf = strconv.AppendInt(buf, int64(t.phase), 10)
	buf = append(buf, ", "...)
	buf = strconv.AppendInt(buf, int64(t.src), 10)
	buf = append(buf, ", "...)
	buf = strconv.AppendInt(buf, int64(t.dst), 10)
	buf = append(buf, ", "...)
	buf = strconv.AppendInt(buf, t.amount, 10)
	buf = append(buf, ")) update "...)
	buf = append(buf, l.accounts...)
	buf = append(buf, " set balance = balance + case when id = "...)
	buf = strconv.AppendInt(buf, int64(t.src), 10)
	buf = append(buf, " then -"...)
	buf = strconv.AppendInt(buf, t.amount, 10)
	buf = append(buf, " else "...)
	buf = strconv.AppendInt(buf, t.amount, 10)
	buf = append(buf, " end where id in ("...)
	buf = strconv.AppendInt(buf, int64(min(t.src, t.dst)), 10)
	buf = append(buf, ", "...)
	buf = strconv.AppendInt(buf, int64(max(t.src, t.dst)), 10)
	return append(buf, ')')
}

// create (re)creates both tables and fills the accounts.
func (l *ledger) create(ctx context.Context, obs *observer) error {
	return obs.exec(ctx, l.dropSQL()+
		"; create table "+l.accounts+" (id int primary key, balance bigint not null check (balance >= 0))"+
		"; create table "+l.transfers+" (request_id bigint not null, phase int not null, src int not null,"+
		" dst int not null, amount bigint not null, at timestamptz not null default clock_timestamp())"+
		"; insert into "+l.accounts+" select g, "+strconv.Itoa(initialBalance)+" from generate_series(1, "+strconv.Itoa(l.n)+") g")
}

func (l *ledger) dropSQL() string {
	return "drop table if exists " + l.accounts + ", " + l.transfers
}

// ledgerState is what the tables hold after the run.
type ledgerState struct {
	total      int64         // sum of the balances
	mismatched int           // accounts whose balance differs from initial + what the transfers table says
	rows       map[int64]int // request id -> rows with that id
	rowCount   int
}

// read returns the ledger's state: the money, the accounts that disagree with
// the transfers table, and how many rows each request id has.
func (l *ledger) read(ctx context.Context, obs *observer) (ledgerState, error) {
	st := ledgerState{rows: map[int64]int{}}
	err := obs.with(ctx, func(c *pgx.Conn) error {
		if err := c.QueryRow(ctx, "select coalesce(sum(balance), 0)::bigint from "+l.accounts).Scan(&st.total); err != nil {
			return err
		}
		q := "select count(*)::int from " + l.accounts + " a left join (" +
			"select id, sum(delta) as delta from (" +
			"select src as id, -amount as delta from " + l.transfers +
			" union all select dst, amount from " + l.transfers + ") d group by id) m using (id)" +
			" where a.balance <> " + strconv.Itoa(initialBalance) + " + coalesce(m.delta, 0)"
		if err := c.QueryRow(ctx, q).Scan(&st.mismatched); err != nil {
			return err
		}
		rows, err := c.Query(ctx, "select request_id, count(*)::int from "+l.transfers+" group by request_id")
		if err != nil {
			return err
		}
		var id int64
		var n int
		_, err = pgx.ForEachRow(rows, []any{&id, &n}, func() error {
			st.rows[id] = n
			st.rowCount += n
			return nil
		})
		return err
	})
	return st, err
}
