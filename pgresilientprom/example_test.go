package pgresilientprom_test

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

// Register pgresilient's metrics next to database/sql's own pool gauges
// (go_sql_*), for a database named "orders". Both carry the label
// db_name="orders", so their series can be joined; give each *sql.DB its
// own value.
func Example() {
	connector, err := pgresilient.NewConnector("postgres://app@db.internal/orders?query_timeout=5s")
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()

	prometheus.MustRegister(
		pgresilientprom.NewCollector(connector,
			pgresilientprom.WithConstLabels(prometheus.Labels{"db_name": "orders"})),
		collectors.NewDBStatsCollector(db, "orders"),
	)
	http.Handle("/metrics", promhttp.Handler())
	log.Fatal(http.ListenAndServe(":9090", nil))
}
