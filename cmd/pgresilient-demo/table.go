package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// printResults prints the tables: per phase and pool, then the ledgers, then
// what each fault did and what the aborted transactions showed. Every line
// fits 79 columns.
func printResults(w io.Writer, d *demo, res *results) {
	fmt.Fprintf(w, "\nresults after %v of workload, per phase and pool (see docs/demo.md)\n\n",
		res.workload.Round(100*time.Millisecond))
	fmt.Fprintln(w, mainHeader)
	for i, rw := range res.rows {
		fmt.Fprintln(w, mainLine(rw, i == 0 || res.rows[i-1].run != rw.run))
	}

	fmt.Fprintf(w, "\nerrors by kind (lost: ErrConnLost, open: ErrCircuitOpen, abort: ErrTxAborted,\n"+
		"tmo: deadline, disc: other disconnect, sql: server error)\n\n")
	fmt.Fprintln(w, kindHeader)
	for i, rw := range res.rows {
		fmt.Fprintln(w, kindLine(rw, i == 0 || res.rows[i-1].run != rw.run))
	}

	fmt.Fprintf(w, "\nledger check\n\n")
	for _, l := range ledgerLines(res.pools) {
		fmt.Fprintln(w, l)
	}

	fmt.Fprintf(w, "\nfaults\n\n")
	for _, r := range d.runs {
		switch {
		case !r.ran():
			fmt.Fprintf(w, "  %-10s %s\n", r.def.name, wrap("skipped: "+r.skipped, 65, "             "))
		case r.detail != "":
			fmt.Fprintf(w, "  %-10s %s\n", r.def.name, wrap(r.detail, 65, "             "))
		}
	}
	if lines := failoverLines(res.rows); len(lines) > 0 {
		fmt.Fprintf(w, "\nfailover: when each pool served again, its first transfer begun after the\n"+
			"primary was down and acknowledged (by the new primary); negative: before\n"+
			"the promotion returned\n\n")
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
	}
	if lines := abortLines(res.pools); len(lines) > 0 {
		fmt.Fprintf(w, "\naborted tx: the application's overdrafts, what followed the failed debit\n\n")
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
	}
	for _, p := range res.pools {
		if p.stats == nil {
			continue
		}
		s := p.stats
		fmt.Fprintf(w, "\n%s counters:\n  %s\n", p.name, wrap(fmt.Sprintf(
			"%d connections opened, %d discarded (%d lost, %d dead in the pool, %d failed verification), "+
				"%d retries handed to database/sql as ErrBadConn (nothing sent), %d ErrConnLost, "+
				"%d breaker transitions, %d calls rejected by the open breaker, %d connect attempts failed",
			s.Opened, s.Discarded, s.DiscardedLost, s.DiscardedIdle, s.DiscardedVerify,
			s.BadConnRetries, s.ConnLost, s.BreakerTransitions, s.BreakerRejected, s.ConnectFailures),
			77, "  "))
	}
}

const mainHeader = "phase      pool            ok    err  dup lost unkn     p50     p99  recover"

// mainLine is one row of the main table; the phase name only on its first
// pool's line.
func mainLine(rw row, first bool) string {
	name := ""
	if first {
		name = rw.run.def.name
	}
	p50, p99, rec := "-", "-", "-"
	if rw.failed > 0 {
		p50, p99 = fmtLatency(rw.p50), fmtLatency(rw.p99)
	}
	if rw.run.def.name != "baseline" {
		rec = fmtRecovery(rw)
	}
	return fmt.Sprintf("%-10s %-11s %6d %6d %4d %4d %4d %7s %7s %8s",
		name, rw.pool, rw.ok, rw.errs, rw.dup, rw.lost, rw.unknown, p50, p99, rec)
}

var kindHeader = func() string {
	var b strings.Builder
	b.WriteString("phase      pool       ")
	for k := kindLost; k < numKinds; k++ {
		fmt.Fprintf(&b, " %6s", k)
	}
	return b.String()
}()

func kindLine(rw row, first bool) string {
	name := ""
	if first {
		name = rw.run.def.name
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-10s %-11s", name, rw.pool)
	for k := kindLost; k < numKinds; k++ {
		fmt.Fprintf(&b, " %6d", rw.kinds[k])
	}
	return b.String()
}

// fmtLatency formats d in at most 7 columns: 850µs, 12.3ms, 1000ms, 2.35s.
func fmtLatency(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return strconv.FormatInt(d.Microseconds(), 10) + "µs"
	case d < 100*time.Millisecond:
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + "ms"
	case d < 10*time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
}

// fmtRecovery formats a recovery time, or ">4.0s" when the pool had not
// recovered when the phase ended.
func fmtRecovery(rw row) string {
	if !rw.recovered {
		return ">" + strconv.FormatFloat(rw.limit.Seconds(), 'f', 1, 64) + "s"
	}
	return strconv.FormatFloat(rw.recovery.Seconds(), 'f', 1, 64) + "s"
}

// ledgerLines is the ledger check, one column per pool.
func ledgerLines(pools []poolResult) []string {
	yes := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "NO"
	}
	type line struct {
		label string
		val   func(p poolResult) string
	}
	lines := []line{
		{"money conserved (sum of balances)", func(p poolResult) string {
			return yes(p.money == p.want) + " " + strconv.FormatInt(p.money, 10)
		}},
		{"balances agree with the transfers", func(p poolResult) string {
			return yes(p.mismatched == 0)
		}},
		{"transfers acknowledged", func(p poolResult) string { return strconv.Itoa(p.ok) }},
		{"transfers failed", func(p poolResult) string { return strconv.Itoa(p.errs) }},
		{"rows in the transfers table", func(p poolResult) string { return strconv.Itoa(p.rowCount) }},
		{"duplicated (id present > once)", func(p poolResult) string { return strconv.Itoa(p.dup) }},
		{"  of which single statements", func(p poolResult) string { return strconv.Itoa(p.dupStmt) }},
		{"lost (acknowledged, absent)", func(p poolResult) string { return strconv.Itoa(p.lost) }},
		{"failed, yet committed", func(p poolResult) string { return strconv.Itoa(p.unknown) }},
		{"rows no transfer wrote", func(p poolResult) string { return strconv.Itoa(p.orphans) }},
		{"later transfers failing 25P02", func(p poolResult) string { return strconv.FormatInt(p.poisoned, 10) }},
	}
	out := []string{fmt.Sprintf("%-34s", "")}
	for _, p := range pools {
		out[0] += fmt.Sprintf(" %-20s", p.name)
	}
	out[0] = strings.TrimRight(out[0], " ")
	for _, l := range lines {
		s := fmt.Sprintf("%-34s", l.label)
		for _, p := range pools {
			s += fmt.Sprintf(" %-20s", l.val(p))
		}
		out = append(out, strings.TrimRight(s, " "))
	}
	return out
}

// failoverLines says, per pool, when phase "failover" served again: the
// first transfer begun once the primary had stopped and acknowledged, timed
// from the stop's end and from the promotion's.
func failoverLines(rows []row) []string {
	out := []string{"                 after the stop  after the promotion"}
	for _, rw := range rows {
		r := rw.run
		if r.promoted == 0 {
			continue
		}
		down, prom := "never", "never"
		if rw.hasServed {
			down = fmtMillis(rw.served - r.down)
			prom = fmtMillis(rw.served - r.promoted)
		}
		out = append(out, fmt.Sprintf("  %-11s %18s %20s", rw.pool, down, prom))
	}
	if len(out) == 1 {
		return nil
	}
	return out
}

// fmtMillis formats d in milliseconds, with its sign: "350ms", "-40ms".
func fmtMillis(d time.Duration) string {
	return strconv.FormatInt(d.Round(time.Millisecond).Milliseconds(), 10) + "ms"
}

// abortLines summarizes phase "aborted tx" per pool.
func abortLines(pools []poolResult) []string {
	var out []string
	for _, p := range pools {
		o := p.abort
		o.mu.Lock()
		if o.attempts == 0 {
			o.mu.Unlock()
			continue
		}
		out = append(out, fmt.Sprintf("%s: %d overdrafts, each failing its debit with 23514", p.name, o.attempts))
		out = append(out, "  session state:  "+wrap(countList(o.states), 60, "                  "))
		out = append(out, "  next statement: "+wrap(countList(o.next), 60, "                  "))
		out = append(out, "  commit:         "+wrap(countList(o.commit), 60, "                  "))
		o.mu.Unlock()
	}
	return out
}

// countList formats counts as "a ×3, b ×1", most frequent first.
func countList(m map[string]int) string {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s ×%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
