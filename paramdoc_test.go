package pgresilient

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// docParam is one row of a parameter table as a document shows it.
type docParam struct{ name, def, doc string }

// wantParams is paramTable as every document must show it, in its order.
func wantParams() []docParam {
	want := make([]docParam, len(paramTable))
	for i, p := range paramTable {
		want[i] = docParam{p.name, p.def, p.doc}
	}
	return want
}

// markdownParams reads the first Markdown table of path whose header starts
// "| parameter | default | meaning |": its first three columns, backquotes
// removed.
func markdownParams(t *testing.T, path string) []docParam {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rows []docParam
	in := false
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "| parameter | default | meaning |"):
			in = true
		case in && strings.HasPrefix(line, "|---"):
		case in && strings.HasPrefix(line, "|"):
			cells := strings.Split(strings.Trim(line, "|"), " | ")
			if len(cells) < 3 {
				t.Fatalf("%s: short row %q", path, line)
			}
			clean := func(s string) string { return strings.TrimSpace(strings.ReplaceAll(s, "`", "")) }
			rows = append(rows, docParam{clean(cells[0]), clean(cells[1]), clean(cells[2])})
		case in:
			return rows
		}
	}
	return rows
}

// docGoParams reads the table of doc.go's "DSN parameters" section: three
// columns, separated by two spaces or more (default and meaning by one
// space at least, when the default fills its column).
func docGoParams(t *testing.T) []docParam {
	t.Helper()
	b, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile(`^//\t(\S+)\s+(\S+)\s+(.+)$`)
	var rows []docParam
	in := false
	for line := range strings.Lines(string(b)) {
		line = strings.TrimRight(line, "\n")
		m := row.FindStringSubmatch(line)
		switch {
		case m != nil && m[1] == "parameter":
			in = true
		case in && m != nil:
			rows = append(rows, docParam{m[1], m[2], m[3]})
		case in:
			return rows
		}
	}
	return rows
}

// TestParamDocs holds README.md, doc.go and docs/configuration.md to
// paramTable: the same parameters in the same order, each with the same
// default and the same meaning, word for word.
func TestParamDocs(t *testing.T) {
	want := wantParams()
	for _, tc := range []struct {
		name string
		got  func(*testing.T) []docParam
	}{
		{"README.md", func(t *testing.T) []docParam { return markdownParams(t, "README.md") }},
		{"docs/configuration.md", func(t *testing.T) []docParam { return markdownParams(t, "docs/configuration.md") }},
		{"doc.go", docGoParams},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.got(t)
			if len(got) != len(want) {
				t.Fatalf("%d parameters documented, want %d:\n got %q\nwant %q", len(got), len(want), got, want)
			}
			for i := range want {
				if got[i] != want[i] {
					t.Errorf("row %d:\n got %q\nwant %q (paramTable in config.go)", i+1, got[i], want[i])
				}
			}
		})
	}
}

// TestParamDefaults checks that the default each parameter documents is
// the default: setting it explicitly changes nothing.
func TestParamDefaults(t *testing.T) {
	for _, p := range paramTable {
		t.Run(p.name, func(t *testing.T) {
			cfg, err := ParseConfig("host=db " + p.name + "=" + p.def)
			if err != nil {
				t.Fatal(err)
			}
			dflt, err := ParseConfig("host=db")
			if err != nil {
				t.Fatal(err)
			}
			got, want := cfg.effective(), dflt.effective()
			got.ConnConfig, want.ConnConfig = nil, nil
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s=%s is not the default:\n got %+v\nwant %+v", p.name, p.def, got, want)
			}
		})
	}
}

// Every parameter is caught by the reserved prefixes, and pgx's own
// connect_timeout is not.
func TestParamTable(t *testing.T) {
	for _, p := range paramTable {
		if !isReservedKey(p.name) {
			t.Errorf("%s is not covered by reservedPrefixes", p.name)
		}
	}
	for _, k := range []string{"connect_timeout", "statement_timeout", "application_name", "transaction_isolation",
		"idle_in_transaction_session_timeout", "tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count",
		"search_path", "myapp.tenant", "myapp.query_timeout"} {
		if isReservedKey(k) {
			t.Errorf("%s is taken for ours", k)
		}
	}
}
