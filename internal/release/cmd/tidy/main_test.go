package main

import "testing"

// TestKeepDriverLines: the driver's lines of a go.sum leave it before go mod
// tidy and come back where the go command sorts them, whatever tidy wrote
// for the driver in between.
func TestKeepDriverLines(t *testing.T) {
	const (
		driver   = "github.com/pgresilient/pgresilient v0.1.0 h1:released=\ngithub.com/pgresilient/pgresilient v0.1.0/go.mod h1:released=\n"
		stand    = "github.com/pgresilient/pgresilient v0.1.0 h1:worktree=\ngithub.com/pgresilient/pgresilient v0.1.0/go.mod h1:worktree=\n"
		before   = "github.com/jackc/pgx/v5 v5.12.0 h1:a=\n"
		after    = "github.com/prometheus/client_golang v1.25.0 h1:b=\n"
		lastLine = "google.golang.org/protobuf v1.36.12 h1:c=\n"
	)
	cases := []struct {
		name, sum, tidied, want string
	}{
		{"none before the release", before + after, before + stand + after, before + after},
		{"kept after the release", before + driver + after, before + stand + after, before + driver + after},
		{"first", driver + after, stand + after, driver + after},
		{"last", before + driver, before + stand, before + driver},
		{"tidy dropped a neighbour", before + driver + after + lastLine, before + stand + lastLine, before + driver + lastLine},
		{"empty", "", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kept, _ := splitSum([]byte(tc.sum))
			_, others := splitSum([]byte(tc.tidied))
			if got := string(insertSorted(others, kept)); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}
