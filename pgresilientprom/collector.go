// Package pgresilientprom exports a pgresilient Connector's Stats as
// Prometheus metrics.
//
//	connector, err := pgresilient.NewConnector(dsn)
//	...
//	db := sql.OpenDB(connector)
//	prometheus.MustRegister(pgresilientprom.NewCollector(connector,
//		pgresilientprom.WithConstLabels(prometheus.Labels{"db_name": "orders"})))
//
// Every scrape reads one Stats snapshot and reports it as constant metrics:
// the collector starts no goroutine and holds no state besides its
// descriptors. database/sql's own pool gauges (open, in use, idle, waits) come
// from client_golang's collectors.NewDBStatsCollector; register both (see the
// example).
//
// The metrics, with the default namespace "pgresilient":
//
//	pgresilient_connections_opened_total                counter  Stats.Opened
//	pgresilient_connections_closed_total                counter  Stats.Closed
//	pgresilient_connections_discarded_total{reason}     counter  Stats.DiscardedLost, Idle, Verify, Rollback, Role (reason "lost", "idle", "verify", "rollback", "role")
//	pgresilient_connection_verifications_total          counter  Stats.Verifications
//	pgresilient_badconn_retries_total                   counter  Stats.BadConnRetries
//	pgresilient_conn_lost_total                         counter  Stats.ConnLost
//	pgresilient_pool_invalidations_total                counter  Stats.Invalidations
//	pgresilient_connect_failures_total                  counter  Stats.ConnectFailures
//	pgresilient_connect_retries_total                   counter  Stats.ConnectRetries
//	pgresilient_tx_autorollbacks_total                  counter  Stats.AutoRollbacks
//	pgresilient_pool_rollbacks_total                    counter  Stats.PoolRollbacks
//	pgresilient_stale_statement_retries_total           counter  Stats.StaleStatementRetries
//	pgresilient_commits_not_committed_total             counter  Stats.CommitsNotCommitted
//	pgresilient_commits_resolved_committed_total        counter  Stats.ResolvedCommitted
//	pgresilient_commits_resolved_aborted_total          counter  Stats.ResolvedAborted
//	pgresilient_commits_unresolved_total                counter  Stats.Unresolved
//	pgresilient_statements_canceled_total               counter  Stats.Canceled
//	pgresilient_host_checks_total                       counter  Stats.HostChecks
//	pgresilient_silent_servers_total                    counter  Stats.SilentServers
//	pgresilient_not_yet_waits_total                     counter  Stats.NotYetWaits
//	pgresilient_connect_attempt_waits_total             counter  Stats.AttemptWaits
//	pgresilient_exec_mode_switches_total                counter  Stats.ExecModeSwitches
//	pgresilient_breaker_state{state}                    gauge    1 for Stats.Breaker's state ("closed", "half-open", "open"), 0 for the others
//	pgresilient_breaker_transitions_total               counter  Stats.BreakerTransitions
//	pgresilient_breaker_rejected_total                  counter  Stats.BreakerRejected
//	pgresilient_breaker_probes_total                    counter  Stats.Probes
//	pgresilient_breaker_probe_failures_total            counter  Stats.ProbeFailures
//	pgresilient_breaker_open_seconds_total              counter  Stats.BreakerOpenDuration, in seconds
//
// With breaker=off there is no breaker: pgresilient_breaker_state is not
// exported, and the breaker counters stay 0.
//
// docs/observability.md in the pgresilient repository says when each one
// moves and what to alert on.
package pgresilientprom

import (
	"fmt"
	"reflect"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgresilient/pgresilient"
)

// DefaultNamespace is the prefix of every metric name unless WithNamespace
// changes it.
const DefaultNamespace = "pgresilient"

// Source is what a Collector reads: *pgresilient.Connector implements it.
type Source interface {
	Stats() pgresilient.Stats
}

var _ Source = (*pgresilient.Connector)(nil)

// Option sets a setting of NewCollector.
type Option func(*options)

type options struct {
	namespace   string
	constLabels prometheus.Labels
}

// WithNamespace sets the prefix of the metric names (default "pgresilient";
// "" leaves the names without one). Names are checked when the Collector is
// registered.
func WithNamespace(ns string) Option {
	return func(o *options) { o.namespace = ns }
}

// WithConstLabels adds labels with fixed values to every metric, such as
// {"db_name": "orders"} (the label client_golang's DBStatsCollector uses),
// so that the Collectors of several Connectors can be registered side by
// side. Calling it again adds to the labels. Names are checked when the
// Collector is registered: "reason" and "state", the Collector's own label
// names, are refused then.
func WithConstLabels(labels prometheus.Labels) Option {
	return func(o *options) {
		if o.constLabels == nil {
			o.constLabels = prometheus.Labels{}
		}
		for k, v := range labels {
			o.constLabels[k] = v
		}
	}
}

// counterSpec is one counter: its name without the namespace, its help, and
// the Stats field it reports.
type counterSpec struct {
	name, help string
	get        func(pgresilient.Stats) int64
}

// counterSpecs are the counters without variable labels, in the order they
// are described and collected.
var counterSpecs = []counterSpec{
	{"connections_opened_total", "Connections opened to the server.",
		func(s pgresilient.Stats) int64 { return s.Opened }},
	{"connections_closed_total", "Connections closed: by database/sql (SetConnMaxLifetime, SetConnMaxIdleTime, SetMaxIdleConns, DB.Close) or after pgresilient discarded them.",
		func(s pgresilient.Stats) int64 { return s.Closed }},
	{"connection_verifications_total", "Pooled connections pinged before reuse: on their first reuse, after over 1s idle, with unread bytes pending, or after a pool invalidation.",
		func(s pgresilient.Stats) int64 { return s.Verifications }},
	{"badconn_retries_total", "Failures returned to database/sql as driver.ErrBadConn because nothing had been sent: database/sql retried the operation on another connection.",
		func(s pgresilient.Stats) int64 { return s.BadConnRetries }},
	{"conn_lost_total", "Connections lost during an operation whose outcome is unknown, counted once each: the caller got ErrConnLost, and the statement or COMMIT may have reached the server.",
		func(s pgresilient.Stats) int64 { return s.ConnLost }},
	{"pool_invalidations_total", "Pool invalidations: a connection learned that the server went away, so every pooled connection is verified before its next use.",
		func(s pgresilient.Stats) int64 { return s.Invalidations }},
	{"connect_failures_total", "Failed connection attempts, retried or not.",
		func(s pgresilient.Stats) int64 { return s.ConnectFailures }},
	{"connect_retries_total", "Connection attempts that were retries of a transient failure (connect_retries).",
		func(s pgresilient.Stats) int64 { return s.ConnectRetries }},
	{"tx_autorollbacks_total", "Transactions rolled back on the server as soon as one of their statements failed (tx_autorollback).",
		func(s pgresilient.Stats) int64 { return s.AutoRollbacks }},
	{"pool_rollbacks_total", "Connections returned to the pool inside a transaction block and rolled back on the way in.",
		func(s pgresilient.Stats) int64 { return s.PoolRollbacks }},
	{"stale_statement_retries_total", "Statements refused as stale cached plans (0A000, 26000: a schema change) and run again on a fresh plan.",
		func(s pgresilient.Stats) int64 { return s.StaleStatementRetries }},
	{"commits_not_committed_total", "Commits that lost their connection but certainly did not commit (COMMIT never written, or refused before it ran): the caller got ErrNotCommitted.",
		func(s pgresilient.Stats) int64 { return s.CommitsNotCommitted }},
	{"commits_resolved_committed_total", "Lost COMMITs that ResolveCommit (RunTx calls it) found committed on the primary: RunTx returned success without running the transaction again.",
		func(s pgresilient.Stats) int64 { return s.ResolvedCommitted }},
	{"commits_resolved_aborted_total", "Lost COMMITs that ResolveCommit found not committed: RunTx ran the transaction again.",
		func(s pgresilient.Stats) int64 { return s.ResolvedAborted }},
	{"commits_unresolved_total", "Lost COMMITs whose outcome ResolveCommit could not learn (deadline, only a standby, an id possibly reused): the caller got ErrConnLost with the reason.",
		func(s pgresilient.Stats) int64 { return s.Unresolved }},
	{"statements_canceled_total", "Statements a deadline (query_timeout or the caller's) ended that the server canceled when asked: the caller got ErrCanceled, and the connection was kept.",
		func(s pgresilient.Stats) int64 { return s.Canceled }},
	{"host_checks_total", "Checks of a server's address by the host monitor, started while statements waited on it past monitor_grace.",
		func(s pgresilient.Stats) int64 { return s.HostChecks }},
	{"silent_servers_total", "Servers the host monitor declared silent: the statements waiting on them ended with ErrConnLost.",
		func(s pgresilient.Stats) int64 { return s.SilentServers }},
	{"not_yet_waits_total", "Statements PgBouncer refused before forwarding them (login failing, query_wait_timeout), held until it served again before database/sql's retry.",
		func(s pgresilient.Stats) int64 { return s.NotYetWaits }},
	{"connect_attempt_waits_total", "Connection attempts that waited for one of the Connector's slots (at most 8 attempts under way at once).",
		func(s pgresilient.Stats) int64 { return s.AttemptWaits }},
	{"exec_mode_switches_total", "Switches of new connections to default_query_exec_mode=exec after a transaction pooler refused pgx's cached statements (42P05, 26000): at most 1.",
		func(s pgresilient.Stats) int64 { return s.ExecModeSwitches }},
	{"breaker_transitions_total", "Circuit breaker state changes.",
		func(s pgresilient.Stats) int64 { return s.BreakerTransitions }},
	{"breaker_rejected_total", "Calls failed at once with ErrCircuitOpen by the open circuit breaker, without dialling or sending anything.",
		func(s pgresilient.Stats) int64 { return s.BreakerRejected }},
	{"breaker_probes_total", "Background probes of the server while the circuit breaker was open: a connection, startup included, closed again. The first that succeeds closes the breaker.",
		func(s pgresilient.Stats) int64 { return s.Probes }},
	{"breaker_probe_failures_total", "Background probes that found the server still unreachable.",
		func(s pgresilient.Stats) int64 { return s.ProbeFailures }},
}

// discardReasons are the values of the reason label, with the Stats field
// each one reports.
var discardReasons = []struct {
	reason string
	get    func(pgresilient.Stats) int64
}{
	{"lost", func(s pgresilient.Stats) int64 { return s.DiscardedLost }},
	{"idle", func(s pgresilient.Stats) int64 { return s.DiscardedIdle }},
	{"verify", func(s pgresilient.Stats) int64 { return s.DiscardedVerify }},
	{"rollback", func(s pgresilient.Stats) int64 { return s.DiscardedRollback }},
	{"role", func(s pgresilient.Stats) int64 { return s.DiscardedRole }},
}

// breakerStates are the values of the state label.
var breakerStates = []pgresilient.BreakerState{
	pgresilient.BreakerClosed,
	pgresilient.BreakerHalfOpen,
	pgresilient.BreakerOpen,
}

// Collector is a prometheus.Collector for one Connector's Stats. It is safe
// for concurrent use.
type Collector struct {
	src       Source
	counters  []*prometheus.Desc // one per counterSpecs entry
	discarded *prometheus.Desc
	breaker   *prometheus.Desc
	openSecs  *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector that reads src, usually a
// *pgresilient.Connector, once per scrape. It panics if src is nil or a nil
// pointer, such as the *pgresilient.Connector that pgresilient.ConnectorOf
// returns with false: a Collector that would fail every scrape, and take the
// other collectors' metrics of that scrape down with it, is refused when it
// is made.
func NewCollector(src Source, opts ...Option) *Collector {
	if isNil(src) {
		if _, ok := src.(*pgresilient.Connector); ok {
			panic("pgresilientprom: NewCollector: nil *pgresilient.Connector: pgresilient.ConnectorOf returns one, " +
				"with false, for a pool whose driver is not pgresilient's own, such as one opened with otelsql.Open; " +
				"create the Connector with pgresilient.NewConnector, open the pool with sql.OpenDB or otelsql.OpenDB, " +
				"and pass that Connector")
		}
		panic(fmt.Sprintf("pgresilientprom: NewCollector: nil Source (%T)", src))
	}
	o := options{namespace: DefaultNamespace}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	name := func(n string) string { return prometheus.BuildFQName(o.namespace, "", n) }
	c := &Collector{src: src}
	for _, s := range counterSpecs {
		c.counters = append(c.counters, prometheus.NewDesc(name(s.name), s.help, nil, o.constLabels))
	}
	c.discarded = prometheus.NewDesc(name("connections_discarded_total"),
		"Connections pgresilient took out of use, each counted once, by reason: lost (broke during use), "+
			"idle (seen closed or reset by the socket peek on reuse), verify (failed the ping before reuse: "+
			"terminated by the server while idle, or a silent network), rollback (left inside a transaction block whose rollback failed), "+
			"role (its server changed role: a demoted primary).",
		[]string{"reason"}, o.constLabels)
	c.breaker = prometheus.NewDesc(name("breaker_state"),
		"Circuit breaker state: 1 for the current state, 0 for the others. Not exported with breaker=off.",
		[]string{"state"}, o.constLabels)
	c.openSecs = prometheus.NewDesc(name("breaker_open_seconds_total"),
		"Seconds the circuit breaker has spent open (calls refused), the current open period included.",
		nil, o.constLabels)
	return c
}

// isNil reports whether src is nil or a nil pointer: no Connector, or no
// other source, to read.
func isNil(src Source) bool {
	if src == nil {
		return true
	}
	v := reflect.ValueOf(src)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

// Describe sends the descriptors of every metric the Collector exports.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.counters {
		ch <- d
	}
	ch <- c.discarded
	ch <- c.breaker
	ch <- c.openSecs
}

// Collect reads one Stats snapshot and sends it as constant metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Stats()
	for i, spec := range counterSpecs {
		send(ch, c.counters[i], prometheus.CounterValue, float64(spec.get(s)))
	}
	for _, r := range discardReasons {
		send(ch, c.discarded, prometheus.CounterValue, float64(r.get(s)), r.reason)
	}
	send(ch, c.openSecs, prometheus.CounterValue, s.BreakerOpenDuration.Seconds())
	if s.Breaker == pgresilient.BreakerDisabled {
		return
	}
	for _, st := range breakerStates {
		v := 0.0
		if s.Breaker == st {
			v = 1
		}
		send(ch, c.breaker, prometheus.GaugeValue, v, st.String())
	}
}

// send sends one constant metric, or an invalid one carrying the error (an
// invalid descriptor, which registration reports first).
func send(ch chan<- prometheus.Metric, d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}
