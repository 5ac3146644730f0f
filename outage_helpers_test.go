package pgresilient

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pgresilient/pgresilient/faultproxy"
	"github.com/pgresilient/pgresilient/pgtest"
)

// The helpers of the outage tests (outage_test.go): a pool with the
// breaker settings under test, stopping and resuming the server, calls and
// their timing.

// outageDB opens a pgresilient *sql.DB on a Connector of its own, so the test
// can read the breaker and the counters. Like openDB, it closes the DB at the
// end of the test and checks that no connection leaked.
func outageDB(t *testing.T, dsn string, opts ...Option) (*sql.DB, *Connector) {
	t.Helper()
	cn, err := NewConnector(dsn, opts...)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(cn)
	t.Cleanup(func() { closeAndCheck(t, db) })
	return db, cn
}

// outageStop stops the cluster (fast mode) and makes sure it runs again when
// the test ends, even if the test fails while it is stopped.
func outageStop(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	t.Cleanup(func() {
		if c.Running() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Resume(ctx); err != nil {
			t.Errorf("start the cluster again: %v", err)
		}
	})
	if err := c.Stop(context.Background(), pgtest.ModeFast); err != nil {
		t.Fatalf("stop the cluster: %v", err)
	}
}

// outageResume starts the stopped cluster again and returns when it accepts
// connections.
func outageResume(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Resume(ctx); err != nil {
		t.Fatalf("resume the cluster: %v", err)
	}
}

// outageResumed is what outageResumeLater's goroutine reports: when Resume
// returned, or why it failed.
type outageResumed struct {
	at  time.Time
	err error
}

// outageResumeLater resumes the stopped cluster after delay, in a goroutine
// the test owns: it is waited for at the end of the test, and cancelled if the
// test ends before delay. The channel yields Resume's outcome once.
func outageResumeLater(t *testing.T, c *pgtest.Cluster, delay time.Duration) <-chan outageResumed {
	t.Helper()
	out := make(chan outageResumed, 1)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		timer := time.NewTimer(delay)
		defer timer.Stop()
		select {
		case <-stop:
			return
		case <-timer.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err := c.Resume(ctx)
		out <- outageResumed{at: time.Now(), err: err}
	}()
	// Registered after outageStop's cleanup, so it runs first: the cluster
	// is resumed by one goroutine at a time.
	t.Cleanup(func() {
		close(stop)
		<-done
		select {
		case r := <-out: // the test did not get to read it
			if r.err != nil {
				t.Errorf("resume the cluster: %v", r.err)
			}
		default:
		}
	})
	return out
}

// outageSettle returns p.Accepted() once it has not changed for 100ms, or
// after at most max. pgx dials once more in the background after a failed
// startup read, to send a CancelRequest: those late dials must not be taken
// for calls made later.
func outageSettle(p *faultproxy.Proxy, max time.Duration) int64 {
	deadline := time.Now().Add(max)
	n := p.Accepted()
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		m := p.Accepted()
		if m == n {
			return n
		}
		n = m
	}
	return n
}

// outageSelect runs one query, the unit of work of these tests.
func outageSelect(db *sql.DB) error { return outageSelectWithin(db, outageCallTimeout) }

// outageSelectWithin runs one query under a deadline d away.
func outageSelectWithin(db *sql.DB, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var one int
	return db.QueryRowContext(ctx, "select 1").Scan(&one)
}

// outageTripTimeout is the deadline of outageTrip's calls: before the
// Connector's first working connection a call waits out refusals within
// its deadline (a database that starts after the application, issue 22),
// so each failing call takes about that long.
const outageTripTimeout = time.Second

// outageCalls runs n queries and returns each one's latency and error.
func outageCalls(db *sql.DB, n int) ([]time.Duration, []error) {
	lat := make([]time.Duration, n)
	errs := make([]error, n)
	for i := range n {
		began := time.Now()
		errs[i] = outageSelect(db)
		lat[i] = time.Since(began)
	}
	return lat, errs
}

// outageTrip makes failing calls until the breaker opens, and returns how
// many failed without being rejected. It stops after max calls.
func outageTrip(t *testing.T, db *sql.DB, cn *Connector, max int) int {
	t.Helper()
	for i := range max {
		err := outageSelectWithin(db, outageTripTimeout)
		if err == nil {
			t.Fatalf("call %d succeeded against a stopped server", i+1)
		}
		if errors.Is(err, ErrCircuitOpen) {
			return i
		}
		var ce *ConnectError
		if !errors.As(err, &ce) || ce.Permanent || !IsDisconnect(err) {
			t.Fatalf("call %d: want a transient *ConnectError (IsDisconnect), got %T: %v", i+1, err, err)
		}
		if cn.Stats().Breaker == BreakerOpen {
			return i + 1
		}
	}
	t.Fatalf("the breaker did not open after %d failed calls (state %v)", max, cn.Stats().Breaker)
	return 0
}

// outageMS formats d in milliseconds with microsecond precision, for the
// MEASURE lines.
func outageMS(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 3, 64) + "ms"
}

// outageMax returns the largest of d, 0 if d is empty.
func outageMax(d []time.Duration) time.Duration {
	var m time.Duration
	for _, v := range d {
		m = max(m, v)
	}
	return m
}

// outageLogBuffer is a bytes.Buffer for a logger that several goroutines may use.
type outageLogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *outageLogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *outageLogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// outageTransition is one call of a WithStateChange hook.
type outageTransition struct{ from, to BreakerState }

func (tr outageTransition) String() string { return tr.from.String() + "->" + tr.to.String() }

// rawPingFails checks that raw pgx's Ping fails at once during an outage
// (it has no retries) and logs how long it took as outage/<scenario>.
func rawPingFails(t *testing.T, raw *sql.DB, timeout time.Duration, scenario, during string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	began := time.Now()
	err := raw.PingContext(ctx)
	took := time.Since(began)
	if err == nil {
		t.Fatal("raw pgx: Ping succeeded " + during)
	}
	t.Logf("MEASURE outage/%s pgx ping_failed_after=%s", scenario, outageMS(took))
	t.Logf("pgx: %v", err)
}
