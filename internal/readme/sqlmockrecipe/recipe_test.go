package sqlmockrecipe

import (
	"database/sql"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"

	"github.com/pgresilient/pgresilient"
)

func TestOrders(t *testing.T) {
	db0, mock, err := sqlmock.NewWithDSN("orders_test")
	if err != nil {
		t.Fatal(err)
	}
	defer db0.Close() // keep it open while db is used
	c, err := pgresilient.NewConnector("orders_test?breaker=off", pgresilient.WithDriver(db0.Driver()))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()

	mock.ExpectExec("insert into orders").WillReturnResult(sqlmock.NewResult(0, 1))
	if _, err := db.Exec("insert into orders (id) values ($1)", 42); err != nil {
		t.Fatal(err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}
