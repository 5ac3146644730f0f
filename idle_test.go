package pgresilient

import (
	"context"
	"database/sql"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/pgresilient/pgresilient/internal/selectone"
	"github.com/pgresilient/pgresilient/pgtest"
)

// writeCounter counts the writes of every connection dialled through it:
// with pgx, a query on a connection that has its statement cached is one
// write, and so is a ping. So writes beyond the queries are pings.
type writeCounter struct{ n atomic.Int64 }

type countedWrites struct {
	net.Conn
	n *atomic.Int64
}

func (c countedWrites) Write(b []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(b)
}

// NetConn returns the socket beneath, as tls.Conn's does, so that
// pgresilient's peek finds it.
func (c countedWrites) NetConn() net.Conn { return c.Conn }

// countedDB opens driverName's pool on the cluster with every write counted;
// for pgresilient it returns its Connector too.
func countedDB(t *testing.T, dsn, driverName string) (*sql.DB, *writeCounter, *Connector) {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	wc := new(writeCounter)
	d := &net.Dialer{KeepAlive: 5 * time.Minute}
	cfg.DialFunc = pgconn.DialFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countedWrites{Conn: nc, n: &wc.n}, nil
	})
	if driverName == "pgx" {
		db := stdlib.OpenDB(*cfg)
		t.Cleanup(func() { closeAndCheck(t, db) })
		return db, wc, nil
	}
	cn, err := NewConnectorConfig(Config{ConnConfig: cfg})
	if err != nil {
		t.Fatal(err)
	}
	return openDBConnector(t, cn), wc, cn
}

// TestIdleReusePing: 8 pooled connections idle for 1.2 s, then a burst uses
// all of them at once. Raw pgx pings each one idle over a second before
// handing it out, a round trip each. pgresilient pings only where nothing
// proves the server's address alive in the last second (idle.go): after a
// query on another connection just before the burst, none of the 7 idle
// ones is pinged; with no such query, or a connection opened to the
// address since, or an idle time over idleProofMax, they are, as with pgx.
func TestIdleReusePing(t *testing.T) {
	cl := needCluster(t)
	const conns = 8
	cases := []struct {
		name string
		// before runs between the idle time and the burst, after a query
		// on the most recently used connection unless cold.
		cold       bool
		before     func(t *testing.T, cn *Connector)
		proofMax   time.Duration
		pgxPings   int64
		ourPings   int64
		reasonOurs string
	}{
		{name: "proven", pgxPings: conns - 1, ourPings: 0,
			reasonOurs: "a query on another connection proved the address alive just before"},
		{name: "cold", cold: true, pgxPings: conns, ourPings: conns,
			reasonOurs: "nothing proved the address alive in the last second"},
		{name: "opened-since", pgxPings: conns - 1, ourPings: conns - 1,
			reasonOurs: "a connection to the address was opened since the idle ones were last used",
			before: func(t *testing.T, cn *Connector) {
				if cn == nil {
					return
				}
				dc, err := cn.Connect(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if err := dc.Close(); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "over-proof-max", proofMax: time.Second, pgxPings: conns - 1, ourPings: conns - 1,
			reasonOurs: "the idle ones idled longer than idleProofMax"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sideBySide(t, func(t *testing.T, name string) {
				ctx := context.Background()
				db, wc, cn := countedDB(t, cl.DSN(), name)
				db.SetMaxOpenConns(conns)
				db.SetMaxIdleConns(conns)
				if cn != nil && tc.proofMax > 0 {
					cn.idleProofMax = tc.proofMax
				}
				// Each connection dialled, reused (the first reuse is
				// always pinged) and with select 1 cached.
				for range 3 {
					if err := selectone.Burst(ctx, db, conns); err != nil {
						t.Fatal(err)
					}
				}
				time.Sleep(1200 * time.Millisecond)
				queries := int64(conns)
				w0 := wc.n.Load()
				var v0 int64
				if cn != nil {
					v0 = cn.Stats().Verifications
				}
				if !tc.cold {
					var n int
					if err := db.QueryRowContext(ctx, "select 1").Scan(&n); err != nil {
						t.Fatal(err)
					}
					queries++
				}
				prePings := wc.n.Load() - w0 - (queries - conns) // the single query's
				if tc.before != nil {
					tc.before(t, cn) // its writes are not pings
				}
				wb := wc.n.Load()
				if err := selectone.Burst(ctx, db, conns); err != nil {
					t.Fatal(err)
				}
				if n := db.Stats().OpenConnections; n != conns {
					t.Fatalf("%d connections open, want %d", n, conns)
				}
				burstPings := wc.n.Load() - wb - conns
				pings := prePings + burstPings
				if name == "pgx" {
					t.Logf("raw pgx pinged %d of the burst's %d connections (%d pings in all)", burstPings, conns, pings)
					if burstPings != tc.pgxPings {
						t.Errorf("raw pgx pinged %d of the burst's connections, want %d: has its rule changed?", burstPings, tc.pgxPings)
					}
					return
				}
				verified := cn.Stats().Verifications - v0
				t.Logf("pgresilient pinged %d of the burst's %d connections (%d verifications in all)", burstPings, conns, verified)
				if burstPings != tc.ourPings {
					t.Errorf("pgresilient pinged %d of the burst's connections, want %d: %s", burstPings, tc.ourPings, tc.reasonOurs)
				}
				if verified != pings {
					t.Errorf("Stats().Verifications rose by %d, want %d: one per ping", verified, pings)
				}
			})
		})
	}
}

// TestPeekHotReuse: a backend terminated while its connection sat in the
// pool. Reused after some milliseconds, the peek sees the FATAL waiting and
// database/sql retries on a new connection, where raw pgx returns the 57P01.
// Reused within peekAfter of the start of its previous use, as a connection
// in continuous use is, pgresilient does not peek (idle.go): the statement
// goes out and fails with ErrConnLost, as it would have had the close come
// a few microseconds later, while the statement ran. The test makes the
// connection look hot by setting the start of its previous use.
func TestPeekHotReuse(t *testing.T) {
	cl := needCluster(t)
	for _, hot := range []bool{false, true} {
		name := "idle-ms"
		if hot {
			name = "hot"
		}
		t.Run(name, func(t *testing.T) {
			sideBySide(t, func(t *testing.T, driverName string) {
				ctx := context.Background()
				db := openDB(t, driverName, cl.DSN())
				db.SetMaxOpenConns(1)
				var pid int
				for range 2 { // dialled, then reused: no first-reuse ping below
					if err := db.QueryRowContext(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
						t.Fatal(err)
					}
				}
				var bc *baseConn
				if driverName == DriverName {
					bc = statsBase(t, db)
				}
				ok, err := pgtest.QueryValue[bool](ctx, cl, "select pg_terminate_backend($1, 5000)", pid)
				if err != nil || !ok {
					t.Fatalf("terminate backend %d: %v %v", pid, ok, err)
				}
				var before Stats
				if bc != nil {
					// The FATAL is waiting on the socket, then the FIN.
					for deadline := time.Now().Add(5 * time.Second); bc.peek.state() == peekIdle; time.Sleep(time.Millisecond) {
						if time.Now().After(deadline) {
							t.Fatal("the terminated backend's FATAL did not reach the socket within 5s")
						}
					}
					before = bc.owner.Stats()
					if hot {
						bc.lastUse = monoNow()
					} else {
						time.Sleep(2 * bc.owner.peekAfter) // past peekAfter whatever the terminate took
					}
				} else {
					time.Sleep(50 * time.Millisecond) // the FATAL and the FIN reach the client
				}
				var n int
				err = db.QueryRowContext(ctx, "select 1").Scan(&n)
				t.Logf("%s, reused %s: %v", driverName, name, err)
				if bc == nil {
					if err == nil {
						t.Error("raw pgx reused the terminated connection without an error: has it started checking?")
					}
					return
				}
				after := bc.owner.Stats()
				caught := after.DiscardedIdle + after.DiscardedVerify - before.DiscardedIdle - before.DiscardedVerify
				if !hot {
					if err != nil {
						t.Errorf("reused after milliseconds in the pool: %v, want the peek to catch the close and a retry", err)
					}
					if caught != 1 {
						t.Errorf("%d connections discarded before reuse, want 1", caught)
					}
					return
				}
				wantConnLost(t, err)
				if caught != 0 {
					t.Errorf("%d connections discarded before reuse, want 0: a hot connection is not peeked", caught)
				}
			})
		})
	}
}
