package pgtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// connect opens a pgx connection closed at the end of the test.
func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func selectOne(ctx context.Context, conn *pgx.Conn) error {
	var n int
	if err := conn.QueryRow(ctx, "select 1").Scan(&n); err != nil {
		return err
	}
	if n != 1 {
		return errors.New("select 1 returned something else")
	}
	return nil
}

// waitNoClients waits until the earlier tests' connections have gone.
func waitNoClients(t *testing.T, c *Cluster) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := c.ClientBackends(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d client backends still connected", n)
		}
		time.Sleep(pollEvery)
	}
}

func TestSelect(t *testing.T) {
	c := Require(t, cluster)
	conn := connect(t, c.DSN())
	if err := selectOne(t.Context(), conn); err != nil {
		t.Fatal(err)
	}
	// The server runs on our data directory, not on some other one.
	dataDir, err := QueryValue[string](t.Context(), c, "show data_directory")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(c.Dir(), "data"); dataDir != want {
		t.Errorf("data_directory = %q, want %q", dataDir, want)
	}
	if !c.Running() {
		t.Error("Running() = false")
	}
	if c.Host() != "127.0.0.1" || c.Port() == 0 || c.Addr() != "127.0.0.1:"+strconv.Itoa(c.Port()) {
		t.Errorf("Host, Port, Addr = %q, %d, %q", c.Host(), c.Port(), c.Addr())
	}
}

func TestRestart(t *testing.T) {
	c := Require(t, cluster)
	before := connect(t, c.DSN())
	if err := c.Restart(context.Background(), ModeFast); err != nil {
		t.Fatal(err)
	}
	if err := selectOne(t.Context(), before); err == nil {
		t.Error("a connection from before the restart still works")
	}
	after := connect(t, c.DSN())
	if err := selectOne(t.Context(), after); err != nil {
		t.Fatal(err)
	}
}

func TestTerminateBackends(t *testing.T) {
	c := Require(t, cluster)
	waitNoClients(t, c)
	conn := connect(t, c.DSN())
	if err := selectOne(t.Context(), conn); err != nil {
		t.Fatal(err)
	}
	n, err := c.TerminateBackends(t.Context())
	if err != nil || n != 1 {
		t.Fatalf("TerminateBackends = %d, %v; want 1, nil", n, err)
	}
	err = selectOne(t.Context(), conn)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" {
		t.Fatalf("query after termination: %v; want 57P01", err)
	}
	if n, err := c.ClientBackends(t.Context()); err != nil || n != 0 {
		t.Errorf("ClientBackends = %d, %v; want 0", n, err)
	}
}

func TestStopResume(t *testing.T) {
	c := Require(t, cluster)
	if err := c.Stop(context.Background(), "sudden"); err == nil {
		t.Error("Stop accepted an invalid mode")
	}
	if err := c.Stop(context.Background(), ModeFast); err != nil {
		t.Fatal(err)
	}
	if c.Running() {
		t.Error("Running() = true after Stop")
	}
	_, err := pgx.Connect(t.Context(), c.DSN())
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connect to a stopped server: %v; want connection refused", err)
	}
	if err := c.Stop(context.Background(), ModeFast); err == nil {
		t.Error("stopping a stopped server succeeded")
	}
	if err := c.Resume(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := selectOne(t.Context(), connect(t, c.DSN())); err != nil {
		t.Fatal(err)
	}
	if err := c.Resume(t.Context()); err == nil {
		t.Error("resuming a running server succeeded")
	}
}

func TestPasswordDSN(t *testing.T) {
	c := Require(t, cluster)
	conn := connect(t, c.PasswordDSN(c.Addr(), Password))
	var user string
	if err := conn.QueryRow(t.Context(), "select current_user").Scan(&user); err != nil {
		t.Fatal(err)
	}
	if user != PasswordUser {
		t.Errorf("current_user = %q, want %q", user, PasswordUser)
	}
	if _, err := conn.Exec(t.Context(), "create table pw_t(i int); drop table pw_t"); err != nil {
		t.Errorf("%s cannot create a table: %v", PasswordUser, err)
	}

	for _, pw := range []string{"wrong", "", "s3cret-Pw-0f-pgtes"} {
		_, err := pgx.Connect(t.Context(), c.PasswordDSN(c.Addr(), pw))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
			t.Errorf("password %q: %v; want 28P01 invalid_password", pw, err)
		}
	}
}

func TestClose(t *testing.T) {
	if SkipRequested() {
		t.Skip(SkipEnv + "=1")
	}
	c, err := Start(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir()); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close, %s: %v; want it gone", c.Dir(), err)
	}
	if c.Running() {
		t.Error("Running() = true after Close")
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := c.Resume(t.Context()); err == nil {
		t.Error("Resume after Close succeeded")
	}
	var nilCluster *Cluster
	if err := nilCluster.Close(); err != nil {
		t.Errorf("Close on nil: %v", err)
	}
}
