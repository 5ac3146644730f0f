package pgresilient

import (
	"context"
	"database/sql"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/pgresilient/pgresilient/pgtest"
)

// TestConnectHooks: pgx's before- and after-connect hooks run through the
// connector: the first supplies the password (as an IAM token provider
// would), the second sets a session parameter.
func TestConnectHooks(t *testing.T) {
	c := needCluster(t)
	var before, after int
	cn, err := NewConnector(c.PasswordDSN(c.Addr(), "not-the-password"),
		WithBeforeConnect(func(_ context.Context, cfg *pgx.ConnConfig) error {
			before++
			cfg.Password = pgtest.Password
			return nil
		}),
		WithAfterConnect(func(ctx context.Context, conn *pgx.Conn) error {
			after++
			_, err := conn.Exec(ctx, "set application_name = 'from-after-connect'")
			return err
		}))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(cn)
	t.Cleanup(func() { closeAndCheck(t, db) })
	var app, user string
	if err := db.QueryRow("select current_setting('application_name'), current_user").Scan(&app, &user); err != nil {
		t.Fatal(err)
	}
	if app != "from-after-connect" || user != pgtest.PasswordUser || before != 1 || after != 1 {
		t.Errorf("application_name %q, user %q, hooks ran %d and %d times", app, user, before, after)
	}
}
