package haproxy_test

import (
	"context"
	"database/sql"
	"net"
	"strconv"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/pgresilient/pgresilient/pgtest/haproxy"
	"github.com/pgresilient/pgresilient/pgtest/patroni"
)

// HAProxy in front of a Patroni cluster: writes go to the leader through
// it, and after a switchover the test learns when HAProxy moved.
func ExampleNewPatroniT() {
	var t *testing.T // the test's
	pat := patroni.NewT(t, 2)
	px := haproxy.NewPatroniT(t, pat, haproxy.Config{Check: haproxy.FastCheck})
	db, err := sql.Open("pgx", px.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	switched := time.Now()
	newLeader, err := pat.Switchover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	routed, err := px.WaitRouted(ctx, newLeader)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("HAProxy routed to %s %v after the switchover began", newLeader, routed.Sub(switched))
}

// Any servers with an HTTP health check: here a replica check, so HAProxy
// balances among the standbys.
func ExampleStart() {
	var pat *patroni.Cluster // a running cluster
	ctx := context.Background()
	var servers []haproxy.Server
	for _, n := range pat.Nodes() {
		servers = append(servers, haproxy.Server{Name: n.Name, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(n.Port)), CheckPort: n.APIPort})
	}
	px, err := haproxy.Start(ctx, haproxy.Config{CheckRequest: "OPTIONS /replica", Check: haproxy.FastCheck}, servers...)
	if err != nil {
		panic(err)
	}
	defer px.Close()
	_ = px.DSN()
}
