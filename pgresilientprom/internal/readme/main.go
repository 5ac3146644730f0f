package main

import (
	"database/sql"
	"log"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgresilient/pgresilient"
	"github.com/pgresilient/pgresilient/pgresilientprom"
)

func main() {
	db, err := sql.Open("pgresilient", "postgres://app@db.internal/orders?query_timeout=5s")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	connector, ok := pgresilient.ConnectorOf(db) // the pool's Connector: its Stats feed the collector
	if !ok {
		// Another driver's pool, or pgresilient's behind a wrapper (otelsql.Open) that hides the
		// Connector: create it with pgresilient.NewConnector, open the pool with sql.OpenDB or
		// otelsql.OpenDB, and pass it to NewCollector.
		log.Fatal("the pool's driver is not pgresilient")
	}
	prometheus.MustRegister(
		pgresilientprom.NewCollector(connector, pgresilientprom.WithConstLabels(prometheus.Labels{"db_name": "orders"})),
		collectors.NewDBStatsCollector(db, "orders"), // database/sql's own pool gauges
	)
	http.Handle("/metrics", promhttp.Handler())
	log.Fatal(http.ListenAndServe("127.0.0.1:9090", nil))
}
