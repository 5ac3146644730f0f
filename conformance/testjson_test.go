package conformance

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// run is what the inner go test -json reported.
type run struct {
	Tests    map[string]*testResult // by full name, subtests included
	Order    []string               // full names, in the order they started
	Output   []string               // lines outside any test: the package's result, a timeout's panic, build errors
	Passed   bool                   // the package passed
	Finished bool                   // the package reported a result at all
}

// testResult is one test's or subtest's outcome.
type testResult struct {
	Name   string
	Action string   // "pass", "fail", "skip", or "" when it never ended (a timeout or a crash)
	Output []string // its lines, "=== RUN" and "--- PASS" lines included
}

// event is a line of go test -json (cmd/test2json), build events included.
type event struct {
	Action     string
	Package    string
	ImportPath string
	Test       string
	Output     string
}

// parseRun reads go test -json output. Lines that are not JSON (the go
// command's own messages) join Output.
func parseRun(out []byte) *run {
	r := &run{Tests: map[string]*testResult{}}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			if s := strings.TrimRight(string(line), "\n"); s != "" {
				r.Output = append(r.Output, s)
			}
			continue
		}
		if e.Test == "" {
			switch e.Action {
			case "output", "build-output":
				r.Output = append(r.Output, strings.TrimRight(e.Output, "\n"))
			case "pass", "fail", "skip": // the package's result; build events carry ImportPath instead
				if e.ImportPath == "" {
					r.Passed, r.Finished = e.Action == "pass", true
				}
			}
			continue
		}
		t := r.Tests[e.Test]
		if t == nil {
			t = &testResult{Name: e.Test}
			r.Tests[e.Test] = t
			r.Order = append(r.Order, e.Test)
		}
		switch e.Action {
		case "output":
			t.Output = append(t.Output, strings.TrimRight(e.Output, "\n"))
		case "pass", "fail", "skip":
			t.Action = e.Action
		}
	}
	return r
}

// message returns what the test itself logged: its output without go test's
// own "=== RUN", "--- FAIL" lines, the file:line prefix removed.
func (t *testResult) message() []string {
	var m []string
	for _, l := range t.Output {
		s := strings.TrimSpace(l)
		if s == "" || strings.HasPrefix(s, "=== ") || strings.HasPrefix(s, "--- ") {
			continue
		}
		m = append(m, fileLine.ReplaceAllString(s, ""))
	}
	return m
}

var fileLine = regexp.MustCompile(`^[\w.-]+\.go:\d+: `)

// pgxVersionSkip is the reason skipPostgreSQLVersionLessThan gives.
var pgxVersionSkip = regexp.MustCompile(`^Test requires PostgreSQL v(\d+)\+$`)

// expectedSkip reports whether pgx's skip with reason is expected on a server
// of major version serverMajor. The only one is pgx's check of the server
// version, when the server really is older; on PostgreSQL no other skip of
// pgx's (CockroachDB's) can be right.
func expectedSkip(reason string, serverMajor int) bool {
	m := pgxVersionSkip.FindStringSubmatch(reason)
	if m == nil {
		return false
	}
	need, err := strconv.Atoi(m[1])
	return err == nil && serverMajor < need
}

// verdict is the judgement of a run.
type verdict struct {
	Passed     []string // every test and subtest that passed
	PgxSkipped []string // "name: reason", expected skips of pgx's own
	Failed     []string // tests and subtests that failed, hung or should not have run, "name: why"
	NotRun     []string // tests that should have run and did not
	Problems   []string // what else is wrong with the run
	Details    []string // the relevant lines of the inner output
}

func (v *verdict) ok() bool { return len(v.Failed)+len(v.NotRun)+len(v.Problems) == 0 }

// judge decides a run: want are the top-level tests that must run and pass,
// notApplicable those that must not run, minRan the least number of tests
// and subtests a real run passes or skips as expected, serverMajor the
// server's PostgreSQL major version.
func judge(r *run, want []string, notApplicable map[string]bool, minRan, serverMajor int) *verdict {
	v := &verdict{}
	fail := func(name, why string, lines []string) {
		v.Failed = append(v.Failed, name+": "+why)
		if len(lines) > 0 {
			v.Details = append(v.Details, "--- "+name+" ("+why+")")
			v.Details = append(v.Details, head(lines, 60)...)
		}
	}
	for _, name := range r.Order {
		t := r.Tests[name]
		top, _, _ := strings.Cut(name, "/")
		switch {
		case notApplicable[top]:
			fail(name, "ran, but it is listed as not applicable", nil)
		case t.Action == "pass":
			v.Passed = append(v.Passed, name)
		case t.Action == "skip":
			reason := strings.Join(t.message(), " / ")
			if expectedSkip(reason, serverMajor) {
				v.PgxSkipped = append(v.PgxSkipped, name+": "+reason)
			} else {
				fail(name, fmt.Sprintf("skipped by pgx (%q), not expected on PostgreSQL %d", reason, serverMajor), nil)
			}
		case t.Action == "fail" && hasFailedSubtest(r, name):
			fail(name, "failed (a subtest failed)", nil) // its own lines are its subtests'
		case t.Action == "fail":
			fail(name, "failed", relevant(t.Output))
		default:
			fail(name, "started and never finished: a timeout or a crash", relevant(t.Output))
		}
	}
	for _, name := range want {
		if _, ok := r.Tests[name]; !ok {
			v.NotRun = append(v.NotRun, name)
		}
	}
	if n := len(v.Passed) + len(v.PgxSkipped); n < minRan {
		v.Problems = append(v.Problems, fmt.Sprintf("%d tests and subtests passed or were skipped as expected, a real run has at least %d", n, minRan))
	}
	switch {
	case !r.Finished:
		v.Problems = append(v.Problems, "go test reported no result for the package")
	case !r.Passed && v.ok():
		v.Problems = append(v.Problems, "go test failed the package, no test failed")
	}
	if pkg := relevant(r.Output); !v.ok() && len(pkg) > 0 {
		v.Details = append(v.Details, "--- package output")
		v.Details = append(v.Details, head(pkg, 80)...)
	}
	return v
}

func hasFailedSubtest(r *run, name string) bool {
	return slices.ContainsFunc(r.Order, func(n string) bool {
		return strings.HasPrefix(n, name+"/") && r.Tests[n].Action == "fail"
	})
}

// relevant picks the lines worth showing from a test's or the package's
// output: what was logged, build errors, FAIL lines, and from a panic or
// timeout on, panicLines'.
func relevant(lines []string) []string {
	var keep []string
	for i, l := range lines {
		s := strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(s, "panic: "), strings.HasPrefix(s, "fatal error: "):
			return append(keep, panicLines(lines[i:])...)
		case s == "" || s == "PASS" || strings.HasPrefix(s, "=== ") || strings.HasPrefix(s, "--- ") || strings.HasPrefix(s, "go: downloading"):
		default:
			keep = append(keep, s)
		}
	}
	return keep
}

// panicLines keeps a panic's message ("running tests:" and the tests, for a
// timeout) and the goroutines whose stacks pass through the tests or
// pgresilient: where a hang is.
func panicLines(out []string) []string {
	var keep, g []string
	flush := func() {
		if slices.ContainsFunc(g, isOurFrame) {
			keep = append(keep, g...)
		}
		g = nil
	}
	i := 0
	for ; i < len(out) && !strings.HasPrefix(strings.TrimSpace(out[i]), "goroutine "); i++ {
		if l := strings.TrimSpace(out[i]); l != "" {
			keep = append(keep, l)
		}
	}
	for ; i < len(out); i++ {
		l := strings.TrimSpace(out[i])
		switch {
		case strings.HasPrefix(l, "goroutine "):
			flush()
			g = append(g, l)
		case strings.HasPrefix(l, "FAIL") || strings.HasPrefix(l, "exit status"):
			flush()
			keep = append(keep, l)
		case l != "" && g != nil:
			g = append(g, l)
		}
	}
	flush()
	return head(keep, 120)
}

// isOurFrame reports whether a stack line is in pgx's rewritten tests or in
// pgresilient.
func isOurFrame(l string) bool {
	return strings.Contains(l, innerModulePath+"_test.") || strings.Contains(l, "github.com/pgresilient/pgresilient")
}

func head(lines []string, n int) []string {
	if len(lines) <= n {
		return lines
	}
	return append(slices.Clip(lines[:n]), fmt.Sprintf("... (%d more lines)", len(lines)-n))
}

// TestJudge feeds judge the go test -json streams of the runs it must tell
// apart: one that passes, and each way of failing.
func TestJudge(t *testing.T) {
	type ev = event
	out := func(test, s string) ev { return ev{Action: "output", Test: test, Output: s + "\n"} }
	pass := []ev{
		{Action: "run", Test: "TestA"}, out("TestA", "=== RUN   TestA"),
		{Action: "run", Test: "TestA/exec"}, out("TestA/exec", "=== RUN   TestA/exec"),
		out("TestA/exec", "--- PASS: TestA/exec (0.00s)"), {Action: "pass", Test: "TestA/exec"},
		out("TestA", "--- PASS: TestA (0.00s)"), {Action: "pass", Test: "TestA"},
		{Action: "run", Test: "TestB"}, {Action: "pass", Test: "TestB"},
	}
	pkgPass := ev{Action: "pass"}
	pkgFail := ev{Action: "fail"}
	skip := func(test, reason string) []ev {
		return []ev{{Action: "run", Test: test}, out(test, "    sql_test.go:79: "+reason), out(test, "--- SKIP: "+test+" (0.00s)"), {Action: "skip", Test: test}}
	}
	cat := func(evs ...[]ev) []ev { return slices.Concat(evs...) }

	for _, tc := range []struct {
		name        string
		events      []ev
		want        []string
		na          string
		minRan      int
		major       int
		ok          bool
		passed      int
		pgxSkipped  int
		failed      []string // prefixes of v.Failed, in order
		notRun      []string
		problem     string // in v.Problems
		detail      string // in v.Details
		notInDetail string
	}{
		{name: "all pass", events: cat(pass, []ev{pkgPass}), want: []string{"TestA", "TestB"}, minRan: 3, ok: true, passed: 3},
		{name: "subtest fails", events: cat(pass[:4], []ev{
			out("TestA/exec", "    sql_test.go:50: Received unexpected error: boom"), {Action: "fail", Test: "TestA/exec"},
			{Action: "fail", Test: "TestA"}, pkgFail}),
			want: []string{"TestA"}, failed: []string{"TestA: failed (a subtest failed)", "TestA/exec: failed"},
			detail: "sql_test.go:50: Received unexpected error: boom"},
		{name: "version skip on an older server", events: cat(pass, skip("TestM", "Test requires PostgreSQL v14+"), []ev{pkgPass}),
			want: []string{"TestA", "TestB", "TestM"}, minRan: 4, major: 13, ok: true, passed: 3, pgxSkipped: 1},
		{name: "version skip on a newer server", events: cat(pass, skip("TestM", "Test requires PostgreSQL v14+"), []ev{pkgPass}),
			want: []string{"TestA", "TestB", "TestM"}, major: 15, passed: 3, failed: []string{`TestM: skipped by pgx ("Test requires PostgreSQL v14+")`}},
		{name: "CockroachDB skip", events: cat(pass, skip("TestC", "Server does not support cardinality function"), []ev{pkgPass}),
			want: []string{"TestA", "TestB", "TestC"}, major: 13, passed: 3, failed: []string{"TestC: skipped by pgx"}},
		{name: "not applicable test ran", events: cat(pass, []ev{pkgPass}), want: []string{"TestA"}, na: "TestB",
			passed: 2, failed: []string{"TestB: ran, but it is listed as not applicable"}},
		{name: "test missing", events: cat(pass, []ev{pkgPass}), want: []string{"TestA", "TestB", "TestC"}, passed: 3, notRun: []string{"TestC"}},
		{name: "too few ran", events: cat(pass, []ev{pkgPass}), want: []string{"TestA"}, minRan: 4, passed: 3, problem: "3 tests and subtests passed"},
		{name: "nothing ran", events: []ev{pkgPass}, minRan: 1, problem: "0 tests and subtests passed"},
		{name: "no package result", events: pass, want: []string{"TestA"}, passed: 3, problem: "no result for the package"},
		{name: "build failure", events: []ev{
			{Action: "build-output", ImportPath: "x_test [x.test]", Output: "./sql_test.go:32:17: undefined: pgx\n"},
			{Action: "build-fail", ImportPath: "x_test [x.test]"}, {Action: "fail"}},
			want: []string{"TestA"}, notRun: []string{"TestA"}, detail: "./sql_test.go:32:17: undefined: pgx"},
		{name: "timeout", events: cat(pass, []ev{
			{Action: "run", Test: "TestH"}, {Action: "run", Test: "TestH/exec"},
			out("TestH/exec", "panic: test timed out after 3m0s"),
			out("TestH/exec", "\trunning tests:"), out("TestH/exec", "\t\tTestH/exec (3m0s)"), out("TestH/exec", ""),
			out("TestH/exec", "goroutine 7 [running]:"), out("TestH/exec", "testing.(*M).startAlarm.func1()"), out("TestH/exec", ""),
			out("TestH/exec", "goroutine 9 [select]:"), out("TestH/exec", "github.com/pgresilient/pgresilient.(*rows).Next(...)"),
			out("TestH/exec", "pgxstdlibconformance_test.TestH.func1(...)"),
			{Action: "output", Output: "FAIL\tpgxstdlibconformance\t180.009s\n"}, pkgFail}),
			want: []string{"TestA", "TestB", "TestH", "TestI"}, passed: 3,
			failed: []string{"TestH: started and never finished", "TestH/exec: started and never finished"}, notRun: []string{"TestI"},
			detail: "github.com/pgresilient/pgresilient.(*rows).Next(...)", notInDetail: "startAlarm"},
		{name: "package fails, no test does", events: cat(pass, []ev{{Action: "output", Output: "leaked goroutines\n"}, pkgFail}),
			want: []string{"TestA"}, passed: 3, problem: "failed the package, no test failed", detail: "leaked goroutines"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			for _, e := range tc.events {
				if e.Action != "build-output" && e.Action != "build-fail" {
					e.Package = "pgxstdlibconformance"
				}
				j, err := json.Marshal(e)
				if err != nil {
					t.Fatal(err)
				}
				b.Write(j)
				b.WriteString("\n")
			}
			b.WriteString("go: downloading example.com/m v1.0.0\n") // the go command's own line
			na := map[string]bool{tc.na: tc.na != ""}
			v := judge(parseRun([]byte(b.String())), tc.want, na, tc.minRan, tc.major)
			details := strings.Join(v.Details, "\n")
			if v.ok() != tc.ok {
				t.Errorf("ok() = %v, want %v (failed %q, not run %q, problems %q)", v.ok(), tc.ok, v.Failed, v.NotRun, v.Problems)
			}
			if len(v.Passed) != tc.passed || len(v.PgxSkipped) != tc.pgxSkipped {
				t.Errorf("passed %d, skipped by pgx %d; want %d, %d", len(v.Passed), len(v.PgxSkipped), tc.passed, tc.pgxSkipped)
			}
			if len(v.Failed) != len(tc.failed) {
				t.Errorf("failed %q, want %q", v.Failed, tc.failed)
			} else {
				for i, f := range tc.failed {
					if !strings.HasPrefix(v.Failed[i], f) {
						t.Errorf("failed[%d] = %q, want it to start with %q", i, v.Failed[i], f)
					}
				}
			}
			if !slices.Equal(v.NotRun, tc.notRun) {
				t.Errorf("not run %q, want %q", v.NotRun, tc.notRun)
			}
			if tc.problem != "" && !slices.ContainsFunc(v.Problems, func(p string) bool { return strings.Contains(p, tc.problem) }) {
				t.Errorf("problems %q, want one containing %q", v.Problems, tc.problem)
			}
			if tc.detail != "" && !strings.Contains(details, tc.detail) {
				t.Errorf("details lack %q:\n%s", tc.detail, details)
			}
			if tc.notInDetail != "" && strings.Contains(details, tc.notInDetail) {
				t.Errorf("details have %q:\n%s", tc.notInDetail, details)
			}
		})
	}
}
