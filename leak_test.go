package pgresilient

import (
	"fmt"
	"runtime"
	"strings"
	"time"
)

// leakMarkers name the code whose goroutines must all be gone when the tests
// end: ours, database/sql's (an unclosed *sql.DB keeps its opener), pgx's,
// go-sqlmock's.
var leakMarkers = []string{
	"github.com/pgresilient/pgresilient.",
	"github.com/pgresilient/pgresilient/internal/",
	"database/sql.",
	"github.com/jackc/pgx/",
	"github.com/DATA-DOG/go-sqlmock",
	"github.com/lib/pq",
}

// leakedGoroutines waits up to wait for goroutines of leakMarkers' code to
// finish, and returns the stacks of those that did not.
func leakedGoroutines(wait time.Duration) []string {
	deadline := time.Now().Add(wait)
	for {
		leaks := findLeaks()
		if len(leaks) == 0 || time.Now().After(deadline) {
			return leaks
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func findLeaks() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var leaks []string
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 {
			continue // the goroutine asking
		}
		if strings.Contains(g, "leakedGoroutines") || strings.Contains(g, "TestMain") {
			continue
		}
		for _, m := range leakMarkers {
			if strings.Contains(g, m) {
				leaks = append(leaks, g)
				break
			}
		}
	}
	return leaks
}

func reportLeaks(leaks []string) string {
	return fmt.Sprintf("%d goroutine(s) leaked by the tests:\n\n%s", len(leaks), strings.Join(leaks, "\n\n"))
}
