package pgresilient

import (
	"database/sql"
	"errors"
	"testing"
)

// TestPoolInvalidation: when one connection learns the server is gone, the
// other pooled connections are verified before their next use. On a frozen
// network nothing tells the second connection it is dead (the socket peek
// sees nothing); without the verification its statement would be sent into
// the void and come back as ErrConnLost.
func TestPoolInvalidation(t *testing.T) {
	c := needCluster(t)
	p := newProxy(t, c)
	cn, err := NewConnector(c.DSNAt(p.Addr()) + "&query_timeout=300ms&breaker=off&connect_retries=0")
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(cn)
	t.Cleanup(func() { closeAndCheck(t, db) })
	warmPool(t, db, 2)
	p.Freeze()
	defer p.Thaw()

	// The first connection meets the blackhole mid-statement.
	if _, err := db.Exec("select 1"); !errors.Is(err, ErrConnLost) {
		t.Fatalf("first call: want ErrConnLost, got %v", err)
	}
	before := cn.Stats()
	if before.Invalidations == 0 {
		t.Fatal("no pool invalidation after a lost connection")
	}
	// The second is verified, fails verification, and is discarded before
	// anything is sent: the call then fails to connect, safely.
	_, err = db.Exec("select 1")
	after := cn.Stats()
	t.Logf("second call: %v; verifications %d, discarded %d", err, after.Verifications-before.Verifications, after.DiscardedVerify-before.DiscardedVerify)
	if errors.Is(err, ErrConnLost) {
		t.Errorf("the second pooled connection was used without verification: %v", err)
	}
	if after.Verifications <= before.Verifications || after.DiscardedVerify <= before.DiscardedVerify {
		t.Errorf("want a verification and a discard, got %+v -> %+v", before, after)
	}
}
