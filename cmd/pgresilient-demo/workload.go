package main

import (
	"context"
	"database/sql"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgresilient/pgresilient"
)

// errKind is what the application learnt from one transfer.
type errKind uint8

const (
	kindOK      errKind = iota // acknowledged: the transfer committed
	kindLost                   // pgresilient.ErrConnLost: the connection broke, outcome unknown
	kindOpen                   // pgresilient.ErrCircuitOpen: failed fast, nothing sent
	kindAborted                // pgresilient.ErrTxAborted: an earlier statement of the transaction failed
	kindTimeout                // the operation's deadline passed (context.DeadlineExceeded)
	kindDisconn                // any other disconnect (pgresilient.IsDisconnect): reset, refused, 57P01...
	kindSQL                    // an SQL error answered by the server (*pgconn.PgError)
	kindOther                  // anything else
	numKinds
)

// kindNames are the column headings of the error breakdown.
var kindNames = [numKinds]string{"ok", "lost", "open", "abort", "tmo", "disc", "sql", "other"}

func (k errKind) String() string { return kindNames[k] }

// classify sorts an error into the kinds above, asking the questions the
// pgresilient documentation tells applications to ask, in that order.
func classify(err error) errKind {
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return kindOK
	case errors.Is(err, pgresilient.ErrCircuitOpen):
		return kindOpen
	case errors.Is(err, pgresilient.ErrConnLost):
		return kindLost
	case errors.Is(err, pgresilient.ErrTxAborted):
		return kindAborted
	case errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err):
		return kindTimeout
	case pgresilient.IsDisconnect(err):
		return kindDisconn
	case errors.As(err, &pgErr):
		return kindSQL
	}
	return kindOther
}

// shape is how a worker writes its transfers.
type shape uint8

const (
	shapeTx   shape = iota // a sql.Tx: insert, two updates, commit (extended protocol, bind parameters)
	shapeStmt              // one autocommit statement, values inline (pgx sends it with the simple protocol)
)

// attempt is one transfer as the application saw it. Times are offsets from
// the start of the workload.
type attempt struct {
	start, end time.Duration
	req        int64 // the transfer's request id, generated here
	phase      uint8 // index of the phase current when it ended
	kind       errKind
	shape      shape
	overdraft  bool // a deliberate failure inside a transaction (phase "aborted tx")
}

func (a *attempt) latency() time.Duration { return a.end - a.start }

// pool is one of the two *sql.DB under test, its ledger and what its workers
// recorded.
type pool struct {
	name string // "pgx" or "pgresilient"
	led  *ledger

	db    atomic.Pointer[sql.DB]
	mu    sync.Mutex
	conns []*pgresilient.Connector // every pgresilient Connector opened, for Stats

	ok, failed atomic.Int64 // running totals, for the progress line
	poisoned   atomic.Int64 // transfers other than the deliberate overdrafts that failed with 25P02

	recs [][]attempt // one slice per worker, written only by that worker until the workload stops

	samples  sync.Map // sampleKey -> string: the first error message of each kind in each phase
	abortObs abortObservations
}

type sampleKey struct {
	phase uint8
	kind  errKind
}

// sample keeps err's message if it is the first of its kind in its phase.
func (p *pool) sample(phase uint8, kind errKind, err error) {
	k := sampleKey{phase, kind}
	if _, ok := p.samples.Load(k); ok {
		return
	}
	p.samples.LoadOrStore(k, oneLine(err.Error()))
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// abortObservations is what the deliberate failures of phase "aborted tx"
// showed: the server's view of the session right after the failed statement,
// and what the application got for its next statement and its Commit.
type abortObservations struct {
	mu       sync.Mutex
	attempts int
	states   map[string]int // pg_stat_activity.state of the session after the failure
	next     map[string]int // the next statement's outcome, by kind or SQLSTATE
	commit   map[string]int // Commit's outcome
}

func (o *abortObservations) add(state string, next, commit error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.states == nil {
		o.states, o.next, o.commit = map[string]int{}, map[string]int{}, map[string]int{}
	}
	o.attempts++
	o.states[state]++
	o.next[outcomeLabel(next)]++
	o.commit[outcomeLabel(commit)]++
}

// outcomeLabel names an error briefly: nil, a kind, and the SQLSTATE when the
// server answered.
func outcomeLabel(err error) string {
	if err == nil {
		return "nil (success)"
	}
	if errors.Is(err, pgx.ErrTxCommitRollback) {
		return "pgx.ErrTxCommitRollback"
	}
	label := classify(err).String()
	if errors.Is(err, pgresilient.ErrTxAborted) {
		label = "ErrTxAborted"
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		label += " " + pgErr.Code
	}
	return label
}

// workload runs the workers of both pools.
type workload struct {
	cfg   *config
	pools []*pool
	t0    time.Time

	gate      sync.RWMutex // workers hold it for reading during a transfer; a phase takes it to swap pools
	phase     atomic.Uint32
	overdraft atomic.Bool // phase "aborted tx": transaction workers insert deliberate failures
	mark      atomic.Pointer[progressMark]
	obs       *observer

	stop chan struct{}
	wg   sync.WaitGroup
}

// start launches cfg.workers workers per pool. They run until halt.
func (w *workload) start(ctx context.Context) {
	w.stop = make(chan struct{})
	w.t0 = time.Now()
	for _, p := range w.pools {
		p.recs = make([][]attempt, w.cfg.workers)
		for i := range w.cfg.workers {
			w.wg.Go(func() { w.worker(ctx, p, i) })
		}
	}
}

// halt stops the workers and waits for them: a transfer under way finishes
// (within the operation timeout) first.
func (w *workload) halt() {
	close(w.stop)
	w.wg.Wait()
}

func (w *workload) since() time.Duration { return time.Since(w.t0) }

// worker issues one transfer every cfg.interval (later if the previous one
// took longer), like a request handler serving steady traffic. Even workers
// use transactions, odd ones single statements. Both pools' workers with the
// same index draw the same transfers.
func (w *workload) worker(ctx context.Context, p *pool, id int) {
	rng := rand.New(rand.NewPCG(uint64(id)+1, 0x5eed))
	sh := shapeTx
	if id%2 == 1 {
		sh = shapeStmt
	}
	recs := make([]attempt, 0, 1024)
	defer func() { p.recs[id] = recs }()
	var buf []byte
	next := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for seq := int64(1); ; seq++ {
		if d := time.Until(next); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-w.stop:
				return
			case <-ctx.Done():
				return
			}
		}
		select {
		case <-w.stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		next = next.Add(w.cfg.interval)
		if now := time.Now(); next.Before(now) {
			next = now // late: no burst to catch up
		}

		n := w.cfg.accounts
		src := 1 + rng.IntN(n)
		dst := 1 + rng.IntN(n-1)
		if dst >= src {
			dst++
		}
		t := transfer{
			req:    int64(id+1)<<40 | seq,
			src:    src,
			dst:    dst,
			amount: 1 + rng.Int64N(10),
		}

		w.gate.RLock()
		t.phase = uint8(w.phase.Load())
		db := p.db.Load()
		a := attempt{req: t.req, phase: t.phase, shape: sh, start: w.since()}
		var err error
		switch {
		case sh == shapeStmt:
			buf = p.led.stmtSQL(buf[:0], t)
			err = w.exec(ctx, db, string(buf))
		case w.overdraft.Load() && seq%3 == 0:
			a.overdraft = true
			err = w.overdraftTx(ctx, p, db, t)
		default:
			err = w.tx(ctx, p, db, t)
		}
		a.end = w.since()
		// The attempt belongs to the phase in which it ended: one caught
		// in flight by a fault is that fault's victim.
		a.phase = uint8(w.phase.Load())
		w.gate.RUnlock()

		a.kind = classify(err)
		if err != nil {
			p.failed.Add(1)
			p.sample(a.phase, a.kind, err)
			var pgErr *pgconn.PgError
			if !a.overdraft && errors.As(err, &pgErr) && pgErr.Code == "25P02" {
				p.poisoned.Add(1)
			}
		} else {
			p.ok.Add(1)
		}
		recs = append(recs, a)
	}
}

// transfer is one movement of money between two accounts.
type transfer struct {
	req      int64
	phase    uint8
	src, dst int
	amount   int64
}

// exec runs one autocommit statement under the operation timeout.
func (w *workload) exec(ctx context.Context, db *sql.DB, query string) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.opTimeout)
	defer cancel()
	_, err := db.ExecContext(ctx, query)
	return err
}

// tx runs a transfer as a transaction: the record, then the two balances in
// account order (so that concurrent transfers cannot deadlock), then Commit.
func (w *workload) tx(ctx context.Context, p *pool, db *sql.DB, t transfer) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.opTimeout)
	defer cancel()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := p.led.txBody(ctx, tx, t); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// overdraftTx is the application bug of phase "aborted tx": a transfer far
// larger than any balance, inside a transaction. The debit breaks the
// balance >= 0 check; the application ignores the error and carries on with
// the credit and the Commit, as sloppy code does. It records what the server
// and the application saw, and returns Commit's error.
func (w *workload) overdraftTx(ctx context.Context, p *pool, db *sql.DB, t transfer) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.opTimeout)
	defer cancel()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	var pid int
	if err := tx.QueryRowContext(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
		_ = tx.Rollback()
		return err
	}
	t.amount = overdraftAmount
	if _, err := tx.ExecContext(ctx, p.led.insertSQL, t.req, t.phase, t.src, t.dst, t.amount); err != nil {
		_ = tx.Rollback()
		return err
	}
	if _, err := tx.ExecContext(ctx, p.led.debitSQL, t.amount, t.src); err == nil {
		_ = tx.Rollback()
		return errors.New("the overdraft was accepted: the ledger has no balance check")
	}
	state, err := w.obs.sessionState(ctx, pid)
	if err != nil {
		state = "unknown (" + oneLine(err.Error()) + ")"
	}
	_, next := tx.ExecContext(ctx, p.led.creditSQL, t.amount, t.dst)
	commit := tx.Commit()
	p.abortObs.add(state, next, commit)
	if commit == nil {
		return errors.New("an aborted transaction committed")
	}
	return commit
}
