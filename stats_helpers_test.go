package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ngrok/sqlmw"
)

// The helpers of the Stats tests (stats_test.go): expected growth of each
// counter, and provoking faults on chosen connections.

// statsSpan is the range a counter's growth must fall in.
type statsSpan struct{ lo, hi int64 }

func exactly(n int64) statsSpan { return statsSpan{n, n} }

func atLeast(n int64) statsSpan { return statsSpan{n, math.MaxInt64} }

// idleVerify is the growth of Verifications in cases about something else
// that reuse a connection: a reuse more than a second after the previous one
// is verified, and a loaded machine may pause that long between two
// statements.
var idleVerify = statsSpan{0, 1}

func (s statsSpan) String() string {
	switch {
	case s.lo == s.hi:
		return strconv.FormatInt(s.lo, 10)
	case s.hi == math.MaxInt64:
		return "at least " + strconv.FormatInt(s.lo, 10)
	}
	return fmt.Sprintf("%d to %d", s.lo, s.hi)
}

// statsWant is the growth a fault must cause, by Stats field name. A counter
// it does not name must not move.
type statsWant map[string]statsSpan

// statsCounters are the names of Stats's counters: its int64 fields, found
// by reflection so that a counter added later is checked too (it must stay
// still in every case that does not name it).
var statsCounters = func() []string {
	var names []string
	st := reflect.TypeFor[Stats]()
	for i := range st.NumField() {
		if f := st.Field(i); f.Type == reflect.TypeFor[int64]() { // not BreakerOpenDuration: it grows while open
			names = append(names, f.Name)
		}
	}
	return names
}()

func statsGet(s Stats, name string) int64 {
	return reflect.ValueOf(s).FieldByName(name).Int()
}

// checkStats compares after-before with want, and checks that Discarded is
// the sum of its reasons in both snapshots.
func checkStats(t *testing.T, before, after Stats, want statsWant) {
	t.Helper()
	for name := range want {
		if !slices.Contains(statsCounters, name) {
			t.Fatalf("statsWant names %q, which is not a counter of Stats", name)
		}
	}
	bad := false
	for _, name := range statsCounters {
		got := statsGet(after, name) - statsGet(before, name)
		w := want[name] // the zero span: must not move
		if got < w.lo || got > w.hi {
			t.Errorf("%s grew by %d, want %v", name, got, w)
			bad = true
		}
	}
	for _, s := range []Stats{before, after} {
		if sum := discardReasonsSum(s); s.Discarded != sum {
			t.Errorf("Discarded = %d, but its reasons add up to %d: %+v", s.Discarded, sum, s)
			bad = true
		}
	}
	if bad {
		t.Logf("before: %+v", before)
		t.Logf("after:  %+v", after)
	}
}

// statsBase returns the baseConn of a connection of db, taken and put back at
// once (dialling it if the pool is empty): the test may then peek at its
// socket while database/sql holds it, or while nobody uses db.
func statsBase(t *testing.T, db *sql.DB) *baseConn {
	t.Helper()
	sc, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	var bc *baseConn
	if err := sc.Raw(func(dc any) error {
		c, ok := dc.(*conn)
		if !ok {
			return fmt.Errorf("Raw gave a %T, want a *conn", dc)
		}
		bc = c.base
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return bc
}

// statsWaitDead waits until the socket of each connection has seen the
// proxy's reset, so the fault is in place before the next step, whatever the
// scheduler does.
func statsWaitDead(t *testing.T, bcs ...*baseConn) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, bc := range bcs {
		for bc.peek.state() != peekDead {
			if time.Now().After(deadline) {
				t.Fatal("a connection's socket did not see the proxy's reset within 5s")
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// statsWarm gives db one connection, dialled and then reused once (a first
// reuse is always verified): the statements that follow reuse it without a
// verification.
func statsWarm(t *testing.T, db *sql.DB) {
	t.Helper()
	db.SetMaxOpenConns(1)
	for range 2 {
		if _, err := db.Exec("select 1"); err != nil {
			t.Fatal(err)
		}
	}
}

// statsKill ends pid, a backend left running a pg_sleep by a client that is
// gone, so that it does not linger into later tests that count backends.
func statsKill(t *testing.T, pid int) {
	t.Helper()
	if err := cluster.Exec(context.Background(), "select pg_terminate_backend($1, 5000)", pid); err != nil {
		t.Errorf("terminate backend %d: %v", pid, err)
	}
}

// statsMerge returns a copy of base with over's entries set.
func statsMerge(base, over statsWant) statsWant {
	out := statsWant{}
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		out[k] = v
	}
	return out
}

// statsResetBefore is an interceptor that, on the first statement containing
// marker, has the proxy reset the connection and waits until its socket has
// seen the reset, before passing the statement on: nothing of it can be
// written.
type statsResetBefore struct {
	sqlmw.NullInterceptor
	marker string
	once   *sync.Once
	fault  func()
}

func (i statsResetBefore) ConnExecContext(ctx context.Context, conn driver.ExecerContext, query string, args []driver.NamedValue) (driver.Result, error) {
	if strings.Contains(query, i.marker) {
		i.once.Do(i.fault)
	}
	return conn.ExecContext(ctx, query, args)
}

// discardReasonsSum adds every Discarded* field of s but Discarded itself,
// found by name: a reason added to Stats joins the sum without anyone
// listing it (a hand-written sum once left DiscardedRole out, so the check
// could not fail for it).
func discardReasonsSum(s Stats) int64 {
	var sum int64
	v := reflect.ValueOf(s)
	for i := range v.NumField() {
		if name := v.Type().Field(i).Name; strings.HasPrefix(name, "Discarded") && name != "Discarded" {
			sum += v.Field(i).Int()
		}
	}
	return sum
}

// TestDiscardReasonsSum: the sum sees every reason, DiscardedRole included,
// so checkStats fails when Discarded leaves one out.
func TestDiscardReasonsSum(t *testing.T) {
	s := Stats{DiscardedLost: 1, DiscardedIdle: 2, DiscardedVerify: 4, DiscardedRollback: 8, DiscardedRole: 16}
	if got := discardReasonsSum(s); got != 31 {
		t.Errorf("the reasons add up to %d, want 31: a Discarded* field is left out", got)
	}
}
