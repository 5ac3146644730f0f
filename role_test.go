package pgresilient

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgresilient/pgresilient/pgtest"
)

// rolePair is two independent servers behind one multi-host DSN, the
// first writable and the second read-only: a primary and a server that
// refuses writes, which the test then swaps (a demotion without a failover
// manager, as a managed database's maintenance or a misdirected endpoint
// does it).
type rolePair struct {
	a, b *pgtest.Cluster
}

func startRolePair(t *testing.T) rolePair {
	t.Helper()
	pgtest.Require(t, cluster) // fails with the install message, or skips on request
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var p rolePair
	for _, c := range []**pgtest.Cluster{&p.a, &p.b} {
		cl, err := pgtest.Start(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Close() })
		*c = cl
	}
	p.setReadOnly(t, p.b, true)
	return p
}

// dsn is a multi-host URL over a then b, with target_session_attrs.
func (p rolePair) dsn(attrs string) string {
	return fmt.Sprintf("postgres://%s@%s,%s/%s?sslmode=disable&target_session_attrs=%s",
		pgtest.Superuser, p.a.Addr(), p.b.Addr(), pgtest.Database, attrs)
}

// setReadOnly turns default_transaction_read_only on or off for the whole
// server, with a reload (pgtest's SetReadOnly, which returns once new
// sessions see it): every existing session sees it at its next statement.
func (p rolePair) setReadOnly(t *testing.T, c *pgtest.Cluster, on bool) {
	t.Helper()
	if err := c.SetReadOnly(context.Background(), on); err != nil {
		t.Fatal(err)
	}
}

// table creates t (id int) on both servers.
func (p rolePair) table(t *testing.T, name string) {
	t.Helper()
	for _, c := range []*pgtest.Cluster{p.a, p.b} {
		if err := c.Exec(context.Background(), "begin read write; drop table if exists "+name+"; create table "+name+" (id int); commit"); err != nil {
			t.Fatal(err)
		}
	}
}

func countOn(t *testing.T, c *pgtest.Cluster, q string) int {
	t.Helper()
	n, err := pgtest.QueryValue[int](context.Background(), c, q)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDemotion: a warm pool of 8 on A, with target_session_attrs=read-write;
// A turns read-only, B writable; then 200 inserts. Raw pgx keeps its
// connections on A and fails every insert with 25006; pgresilient moves to
// B without a failed insert, and leaves no connection on A.
func TestDemotion(t *testing.T) {
	p := startRolePair(t)
	type result struct{ failed, onA, onB, connsOnA int }
	results := map[string]result{}
	sideBySide(t, func(t *testing.T, name string) {
		table := "tdemote_" + map[string]string{"pgx": "pgx", DriverName: "pgr"}[name]
		p.table(t, table)
		p.setReadOnly(t, p.a, false)
		p.setReadOnly(t, p.b, true)
		db := openDB(t, name, p.dsn("read-write"))
		warmPool(t, db, 8)
		p.setReadOnly(t, p.a, true)
		p.setReadOnly(t, p.b, false)
		var r result
		var first error
		for i := range 200 {
			if _, err := db.Exec("insert into "+table+" values ($1)", i); err != nil {
				r.failed++
				if first == nil {
					first = err
				}
			}
		}
		r.onA = countOn(t, p.a, "select count(*)::int from "+table)
		r.onB = countOn(t, p.b, "select count(*)::int from "+table)
		r.connsOnA = countOn(t, p.a, "select count(*)::int from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()")
		results[name] = r
		t.Logf("%s: %d of 200 inserts failed (first: %v); rows on A %d, on B %d; connections left on A %d",
			name, r.failed, first, r.onA, r.onB, r.connsOnA)
		switch name {
		case DriverName:
			if r.failed != 0 || r.onB != 200 || r.onA != 0 || r.connsOnA != 0 {
				t.Errorf("pgresilient: want 0 failed, 200 rows on B, none on A, no connection left on A")
			}
		case "pgx":
			if r.failed == 0 {
				t.Errorf("raw pgx failed no insert: the demotion did not happen")
			}
		}
	})
	t.Logf("demotion, 200 inserts: failed: pgx %d, pgresilient %d; rows on the new primary: pgx %d, pgresilient %d; connections left on the old: pgx %d, pgresilient %d",
		results["pgx"].failed, results[DriverName].failed, results["pgx"].onB, results[DriverName].onB,
		results["pgx"].connsOnA, results[DriverName].connsOnA)
}

// TestDemotionInTx: a transaction whose insert a demoted server refuses
// gets ErrRoleChanged, not ErrConnLost (nothing committed: running it
// again is safe), its Commit says the same, and running it again lands on
// the new primary.
func TestDemotionInTx(t *testing.T) {
	p := startRolePair(t)
	p.table(t, "tdemote_tx")
	db := openDB(t, DriverName, p.dsn("read-write"))
	warmPool(t, db, 2)
	p.setReadOnly(t, p.a, true)
	p.setReadOnly(t, p.b, false)
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec("insert into tdemote_tx values (1)")
	if !errors.Is(err, ErrRoleChanged) || errors.Is(err, ErrConnLost) || errors.Is(err, driver.ErrBadConn) {
		t.Fatalf("insert in a transaction on a demoted server: %v; want ErrRoleChanged, not ErrConnLost nor ErrBadConn", err)
	}
	if err := tx.Commit(); !errors.Is(err, ErrRoleChanged) {
		t.Errorf("commit after the refusal: %v, want ErrRoleChanged", err)
	}
	// The transaction again, as ErrRoleChanged says is safe.
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("insert into tdemote_tx values (2)"); err != nil {
		t.Fatalf("the transaction again: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if n := countOn(t, p.b, "select count(*)::int from tdemote_tx where id = 2"); n != 1 {
		t.Errorf("rows on the new primary: %d, want 1", n)
	}
	if n := countOn(t, p.a, "select count(*)::int from tdemote_tx"); n != 0 {
		t.Errorf("rows on the demoted server: %d, want 0", n)
	}

	// Several statements in one string, by the simple protocol: a part
	// could have committed before the refused one, so the refusal is the
	// caller's to see, never retried. The connection is pinned (no reuse
	// check) so that the refusal comes from the statement itself.
	sc, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	var port int
	if err := sc.QueryRowContext(ctx, "select inet_server_port()").Scan(&port); err != nil {
		t.Fatal(err)
	}
	on, other := p.a, p.b
	if port == p.b.Port() {
		on, other = p.b, p.a
	}
	p.setReadOnly(t, other, false)
	p.setReadOnly(t, on, true)
	// pg_reload_conf returns before every backend has reloaded: wait
	// until this session sees the change (it raced the insert below).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var ro string
		if err := sc.QueryRowContext(ctx, "show default_transaction_read_only").Scan(&ro); err != nil {
			t.Fatal(err)
		}
		if ro == "on" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the session does not see default_transaction_read_only=on after 10s")
		}
	}
	_, err = sc.ExecContext(ctx, "insert into tdemote_tx values (3); insert into tdemote_tx values (4)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" || errors.Is(err, driver.ErrBadConn) || errors.Is(err, ErrRoleChanged) {
		t.Errorf("two statements refused by a demoted server: %v; want the server's 25006 as is", err)
	}
	for _, c := range []*pgtest.Cluster{p.a, p.b} {
		if n := countOn(t, c, "select count(*)::int from tdemote_tx where id in (3, 4)"); n != 0 {
			t.Errorf("rows of the refused string on %s: %d, want 0", c.Addr(), n)
		}
	}
}

func TestSingleStatement(t *testing.T) {
	for _, tc := range []struct {
		q    string
		want bool
	}{
		{"", true},
		{"insert into t values ($1)", true},
		{"insert into t values (1);", true},
		{"insert into t values (1) ; \n", true},
		{"insert into t values (1); insert into t values (2)", false},
		{"begin; insert into t values (1); commit", false},
		{"select ';'", false}, // a literal counts: on the safe side
	} {
		if got := singleStatement(tc.q); got != tc.want {
			t.Errorf("singleStatement(%q) = %v, want %v", tc.q, got, tc.want)
		}
	}
}

func TestTargetRole(t *testing.T) {
	for attrs, want := range map[string]wantRole{
		"":               roleAny,
		"any":            roleAny,
		"read-write":     roleReadWrite,
		"primary":        rolePrimary,
		"standby":        roleStandby,
		"prefer-standby": roleStandby,
		"read-only":      roleStandby,
	} {
		dsn := "host=db"
		if attrs != "" {
			dsn += " target_session_attrs=" + attrs
		}
		cfg, err := ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		if got := targetRole(cfg.ConnConfig); got != want {
			t.Errorf("target_session_attrs=%q: role %d, want %d", attrs, got, want)
		}
	}
	// A value pgx refuses: pgx's reason, and nothing of the DSN.
	_, err := ParseConfig("postgres://app:s3cret99@db/x?target_session_attrs=writable")
	if err == nil || strings.Contains(err.Error(), "s3cret99") {
		t.Errorf("a bad target_session_attrs: %v", err)
	}
}

// TestReadOnlyOnPurpose: sessions read-only on purpose are never churned:
// a DSN aimed at the read-only server with target_session_attrs=read-only,
// and SET TRANSACTION READ ONLY without target_session_attrs. Their
// refused writes are the caller's errors, and the connection stays.
func TestReadOnlyOnPurpose(t *testing.T) {
	p := startRolePair(t)
	p.table(t, "tro")
	ctx := context.Background()
	t.Run("target_session_attrs=read-only", func(t *testing.T) {
		cn, err := NewConnector(p.dsn("read-only"))
		if err != nil {
			t.Fatal(err)
		}
		db := openDBConnector(t, cn)
		for range 5 {
			var one int
			if err := db.QueryRow("select 1").Scan(&one); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := db.Exec("insert into tro values (1)"); errors.Is(err, ErrRoleChanged) || err == nil {
			t.Errorf("a write on a read-only DSN: %v, want the server's 25006 as is", err)
		}
		if s := cn.Stats(); s.DiscardedRole != 0 || s.Opened != 1 {
			t.Errorf("read-only on purpose: %d discarded for their role, %d opened; want 0 and 1", s.DiscardedRole, s.Opened)
		}
	})
	t.Run("set transaction read only", func(t *testing.T) {
		cn, err := NewConnector(p.a.DSN())
		if err != nil {
			t.Fatal(err)
		}
		db := openDBConnector(t, cn)
		db.SetMaxOpenConns(1)
		for range 3 {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec("set transaction read only"); err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec("insert into tro values (1)"); err == nil || errors.Is(err, ErrRoleChanged) {
				t.Errorf("a write in a read-only transaction: %v, want the server's 25006 as is", err)
			}
			_ = tx.Rollback()
		}
		if s := cn.Stats(); s.DiscardedRole != 0 || s.Opened != 1 {
			t.Errorf("read-only on purpose: %d discarded for their role, %d opened; want 0 and 1", s.DiscardedRole, s.Opened)
		}
	})
}

// TestHostOrder: with a multi-host DSN whose first host refuses writes,
// new connections try the host that served last first: one attempt each
// on B, not A then B.
func TestHostOrder(t *testing.T) {
	p := startRolePair(t)
	p.setReadOnly(t, p.a, true)
	p.setReadOnly(t, p.b, false)
	dialled := map[string]int{}
	cn, err := NewConnector(p.dsn("read-write"), WithBeforeConnect(func(_ context.Context, cc *pgx.ConnConfig) error {
		dialled[fmt.Sprintf("%s:%d", cc.Host, cc.Port)]++
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	db := openDBConnector(t, cn)
	for range 5 {
		sc, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
	}
	if dialled[p.b.Addr()] != 4 || dialled[p.a.Addr()] != 1 {
		t.Errorf("first host tried, by host: %v; want A once (the first connection), then B first for the other 4", dialled)
	}
}
