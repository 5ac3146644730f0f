// Package patroni starts a throwaway Patroni cluster for integration tests:
// one etcd member and Patroni nodes, each managing a PostgreSQL server, all on
// 127.0.0.1 at free ports, all data in one temporary directory. Tests own it:
// they switch the leader over, kill a node and start it again.
//
// A test starts it like an httptest.Server:
//
//	pat := patroni.NewT(t, 2)
//	db, err := sql.Open("pgx", pat.DSN()+"&target_session_attrs=read-write")
//	...
//	newLeader, err := pat.Switchover(ctx) // planned: the old leader follows as a replica
//	err = pat.KillNode(ctx, newLeader)    // unplanned: Patroni and its server, SIGKILL
//	leader, err := pat.WaitLeader(ctx, newLeader)
//
// The cluster runs with Patroni's synchronous_mode, so a commit the leader
// acknowledged is on the synchronous standby too and survives a failover. A
// leader key ttl of TTL (10 s; loop_wait 1 s, retry_timeout 4 s) makes the
// failover after KillNode take seconds, not the half minute of Patroni's
// defaults. DSN lists every node's server (add target_session_attrs to reach
// the leader), Node(name).DSN one of them, and pgtest/haproxy puts HAProxy
// with Patroni's health check in front of them.
//
// Start runs Debian's patroni and etcd (apt-get install patroni
// etcd-server; Patroni 3.0 and etcd 3.4 on Debian 12), found on PATH, over the
// PostgreSQL binaries pgtest.BinDir finds, as children of the test process,
// never the system's services; as root, they run as the "postgres" account.
// Close kills everything. When the test process dies without Close, on Linux
// the kernel kills etcd and Patroni, and the process's watchdog (see
// pgtest.Start) kills the servers Patroni detached and removes the
// directory; NewT also closes the cluster on SIGINT and SIGTERM.
// When patroni or etcd is missing, Start's error matches ErrNotFound and
// says how to install them, and NewT fails the test, unless
// PGRESILIENT_SKIP_INTEGRATION=1, which skips it.
package patroni
