// Package haproxy starts a throwaway HAProxy in front of PostgreSQL servers
// for integration tests, such as the nodes of a pgtest/patroni cluster, with
// the health check Patroni's documentation recommends:
//
//	listen pg
//	    mode tcp
//	    option httpchk OPTIONS /primary
//	    http-check expect status 200
//	    default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions
//	    server node1 127.0.0.1:PORT1 check port APIPORT1
//	    server node2 127.0.0.1:PORT2 check port APIPORT2
//
// Patroni's REST API answers OPTIONS /primary with 200 only on the running
// primary holding the leader lock, so HAProxy routes every new connection
// to the leader, closes every session to a node it marks DOWN, and, while no
// node passes, accepts connections and closes them at once.
//
// A test starts it like an httptest.Server, after the Patroni cluster:
//
//	pat := patroni.NewT(t, 2)
//	px := haproxy.NewPatroniT(t, pat, haproxy.Config{Check: haproxy.FastCheck})
//	db, err := sql.Open("pgx", px.DSN())
//	...
//	newLeader, err := pat.Switchover(ctx)
//	routed, err := px.WaitRouted(ctx, newLeader)
//	// writes that fail after routed are the client's doing, not the proxy's
//
// Config's zero value checks at Patroni's documented rhythm (PatroniCheck:
// inter 3s fall 3 rise 2), which is what users run; FastCheck (inter 1s
// fall 2 rise 1) routes to a new primary within a second or two and keeps
// tests short. Connections may stay idle 30 minutes (timeout client and
// server), so a long statement is not cut.
//
// WaitRouted and Routed tell when HAProxy began to route every new
// connection to a server: the moment of the log message that left that
// server alone UP. Events lists those messages, each timed as HAProxy wrote
// it to a pipe the Proxy reads. Servers and Command read HAProxy's stats
// socket.
//
// Start runs Debian's haproxy (apt-get install haproxy; HAProxy 2.6 on Debian
// 12), found on PATH or in /usr/sbin, as a child of the test process
// (haproxy -f haproxy.cfg -db), never the system's service, on a free
// 127.0.0.1 port. Close stops it; NewT also closes it on SIGINT and
// SIGTERM, and on Linux the kernel kills it when the test process dies
// without Close (the next Start removes the directory it left). When
// haproxy is missing, Start's error
// matches ErrNotFound and says how to install it, and NewT fails the
// test, unless PGRESILIENT_SKIP_INTEGRATION=1, which skips it.
package haproxy
