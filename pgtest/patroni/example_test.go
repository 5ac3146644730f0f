package patroni_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/pgresilient/pgresilient/pgtest/patroni"
)

// A 2-node cluster for one test, closed when it ends: writes go to whichever
// node leads, through every node's address; the test fails the leader over.
func ExampleNewT() {
	var t *testing.T // the test's
	pat := patroni.NewT(t, 2)
	db, err := sql.Open("pgx", pat.DSN()+"&target_session_attrs=read-write")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leader, err := pat.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := pat.KillNode(ctx, leader); err != nil {
		t.Fatal(err)
	}
	newLeader, err := pat.WaitLeader(ctx, leader) // within about patroni.TTL
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s took over from %s", newLeader, leader)
}

// A cluster outside a test, such as a program's: the caller closes it.
func ExampleStart() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pat, err := patroni.Start(ctx, 2)
	if err != nil {
		panic(err) // errors.Is(err, patroni.ErrNotFound) without patroni or etcd
	}
	defer pat.Close()
	newLeader, err := pat.Switchover(ctx)
	if err != nil {
		panic(err)
	}
	_ = pat.Node(newLeader).DSN()
}
