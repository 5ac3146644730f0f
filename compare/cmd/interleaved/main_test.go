package main

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgresilient/pgresilient/pgtest"
)

// TestQuick runs the program end to end in -quick mode (its own cluster,
// every workload, every driver), so that it cannot rot: about 10 s.
func TestQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	if pgtest.SkipRequested() {
		t.Skip(pgtest.SkipEnv + "=1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errs bytes.Buffer
	if err := run(ctx, []string{"-quick"}, &out, &errs); err != nil {
		t.Fatalf("run -quick: %v\nstderr:\n%s", err, errs.String())
	}
	got := out.String()
	t.Logf("output:\n%s", got)
	for _, w := range workloads {
		// One line per driver in each of the two timing tables, one in the
		// allocation table.
		if n := strings.Count(got, w.name); n != 3 {
			t.Errorf("workload %s appears %d times in the output, want 3 (two timing tables, one allocation table)", w.name, n)
		}
	}
	for _, d := range drivers {
		if !strings.Contains(got, d.name) {
			t.Errorf("driver %s missing from the output", d.name)
		}
	}
	// The allocation row of select 1: pgx's own count (14 with pgx v5.12)
	// stays low only while the operations run under a context that never
	// ends, and pgresilient's target is at most 1 more (issue 16).
	for _, line := range strings.Split(got, "\n") {
		f := strings.Fields(line)
		if len(f) != 5 || f[0] != "select1-1conn" || f[1] != "query" {
			continue
		}
		pgx, err1 := strconv.ParseFloat(f[2], 64)
		res, err2 := strconv.ParseFloat(f[3], 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("allocation row %q: %v %v", line, err1, err2)
		}
		if pgx > 18 {
			t.Errorf("pgx allocates %.1f per select 1: do the operations run under a cancellable context?", pgx)
		}
		if res-pgx > 1 {
			t.Errorf("pgresilient allocates %.1f per select 1, pgx %.1f: more than 1 extra", res, pgx)
		}
	}
	for _, title := range []string{"wall time per op", "client CPU per op", "allocations per op"} {
		if !strings.Contains(got, title) {
			t.Errorf("table %q missing", title)
		}
	}
}

func TestMedianCI(t *testing.T) {
	// The classic table: n=21 gives the 6th and 16th order statistics
	// (coverage 97.3 %), n=5 has no 95 % interval.
	for _, tc := range []struct{ n, lo, hi int }{{21, 5, 15}, {31, 9, 21}, {6, 0, 5}, {5, 0, 4}} {
		lo, hi := medianCI(tc.n)
		if lo != tc.lo || hi != tc.hi {
			t.Errorf("medianCI(%d) = %d, %d; want %d, %d", tc.n, lo, hi, tc.lo, tc.hi)
		}
	}
}

func TestParseFlags(t *testing.T) {
	var errs bytes.Buffer
	c, err := parseFlags([]string{"-quick", "-rounds", "50"}, &errs)
	if err != nil {
		t.Fatal(err)
	}
	if c.rounds != 3 || c.batch != 64 {
		t.Errorf("-quick: rounds %d batch %d, want 3 and 64", c.rounds, c.batch)
	}
	if _, err := parseFlags([]string{"-rounds", "0"}, &errs); err == nil {
		t.Error("-rounds 0 accepted")
	}
}
