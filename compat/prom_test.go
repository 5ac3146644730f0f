package compat

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/XSAM/otelsql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgresilient/pgresilient"
	"github.com/pgresilient/pgresilient/pgresilientprom"
)

// scrapeMetrics serves one scrape of reg as promhttp.Handler does, and
// returns its status and body.
func scrapeMetrics(reg *prometheus.Registry) (int, string) {
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Code, rec.Body.String()
}

// newCollector calls pgresilientprom.NewCollector and returns what it
// panicked with, if it did.
func newCollector(src pgresilientprom.Source) (c *pgresilientprom.Collector, panicked any) {
	defer func() { panicked = recover() }()
	return pgresilientprom.NewCollector(src), nil
}

// TestOtelsqlPrometheus: the README's Prometheus recipe over a pool opened
// with otelsql.Open. pgresilient.ConnectorOf reports false, and a nil
// Connector, since the pool's driver is otelsql's; NewCollector refuses that
// nil Connector at once (a Collector of it would fail every scrape, with
// database/sql's own gauges). With the Connector of pgresilient.NewConnector
// and the pool opened by otelsql.OpenDB, both collectors are scraped.
func TestOtelsqlPrometheus(t *testing.T) {
	c := requireCluster(t)
	wrapped, _ := openOtel(t, pgresilient.DriverName, c.DSN())
	connector, ok := pgresilient.ConnectorOf(wrapped)
	if ok {
		t.Fatal("ConnectorOf found pgresilient's Connector beneath otelsql.Open's driver")
	}
	if coll, panicked := newCollector(connector); panicked == nil {
		reg := prometheus.NewRegistry()
		reg.MustRegister(coll, collectors.NewDBStatsCollector(wrapped, "orders"))
		code, body := scrapeMetrics(reg)
		t.Errorf("NewCollector accepted ConnectorOf's nil Connector; a scrape returns %d:\n%.400s", code, body)
	} else if msg := fmt.Sprint(panicked); !strings.Contains(msg, "otelsql.OpenDB") {
		t.Errorf("NewCollector's panic does not say what to do instead: %s", msg)
	} else {
		t.Logf("NewCollector(ConnectorOf(otelsql.Open's pool)) panics: %s", msg)
	}

	cn, err := pgresilient.NewConnector(c.DSN())
	if err != nil {
		t.Fatal(err)
	}
	db := otelsql.OpenDB(cn)
	t.Cleanup(func() { db.Close() })
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		pgresilientprom.NewCollector(cn, pgresilientprom.WithConstLabels(prometheus.Labels{"db_name": "orders"})),
		collectors.NewDBStatsCollector(db, "orders"),
	)
	code, body := scrapeMetrics(reg)
	if code != http.StatusOK {
		t.Fatalf("scrape: %d:\n%s", code, body)
	}
	for _, want := range []string{
		`pgresilient_connections_opened_total{db_name="orders"} 1` + "\n",
		`go_sql_open_connections{db_name="orders"} 1` + "\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the scrape lacks %q:\n%s", want, body)
		}
	}
}
