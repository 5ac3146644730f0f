package pgresilient

import (
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
)

func TestUserInterceptorsOrder(t *testing.T) {
	var (
		log []string
		mu  sync.Mutex
	)
	db, mock, _ := openMock(t, "", WithInterceptor(recorder{name: "a", log: &log, mu: &mu}, recorder{name: "b", log: &log, mu: &mu}))
	mock.ExpectExec("x").WillReturnError(io.EOF)
	if _, err := db.Exec("x"); !errors.Is(err, ErrConnLost) {
		t.Fatalf("want ErrConnLost, got %v", err)
	}
	got := strings.Join(log, " ")
	if want := "a> b> <b lost=true <a lost=true"; got != want {
		t.Errorf("calls %q, want %q: first interceptor outermost, both seeing ErrConnLost", got, want)
	}
}
