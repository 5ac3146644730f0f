package pgresilient

import (
	"errors"
	"maps"
	"testing"
)

func TestSplitDSN(t *testing.T) {
	tests := []struct {
		name       string
		dsn        string
		wantRest   string
		wantParams map[string]string
		wantErr    string // the ConfigError's Param, when an error is expected
		foreign    bool   // not a pgx form: only splitDSN (not splitPgxDSN) strips it
	}{
		{name: "empty", dsn: "", wantRest: ""},

		// URL form
		{name: "url without params is untouched",
			dsn:      "postgres://u:p@h:5432/db?sslmode=disable&application_name=x",
			wantRest: "postgres://u:p@h:5432/db?sslmode=disable&application_name=x"},
		{name: "url first", dsn: "postgres://h/db?breaker=off&sslmode=disable&x=1",
			wantRest: "postgres://h/db?sslmode=disable&x=1", wantParams: map[string]string{"breaker": "off"}},
		{name: "url middle", dsn: "postgres://h/db?sslmode=disable&breaker_failures=3&x=1",
			wantRest: "postgres://h/db?sslmode=disable&x=1", wantParams: map[string]string{"breaker_failures": "3"}},
		{name: "url last", dsn: "postgresql://h/db?sslmode=disable&query_timeout=2s",
			wantRest: "postgresql://h/db?sslmode=disable", wantParams: map[string]string{"query_timeout": "2s"}},
		{name: "url only ours drops the question mark", dsn: "postgres://h/db?breaker=off&tx_autorollback=off",
			wantRest: "postgres://h/db", wantParams: map[string]string{"breaker": "off", "tx_autorollback": "off"}},
		{name: "url query without path", dsn: "postgres://h?breaker=off&sslmode=disable",
			wantRest: "postgres://h?sslmode=disable", wantParams: map[string]string{"breaker": "off"}},
		{name: "url keeps other pieces byte for byte",
			dsn:        "postgres://h/db?application_name=a%20b&breaker=on&options=-c%20x%3Dy&search_path=a,b",
			wantRest:   "postgres://h/db?application_name=a%20b&options=-c%20x%3Dy&search_path=a,b",
			wantParams: map[string]string{"breaker": "on"}},
		{name: "url escaped key and value", dsn: "postgres://h/db?%62reaker_cooldown=1%73&x=1",
			wantRest: "postgres://h/db?x=1", wantParams: map[string]string{"breaker_cooldown": "1s"}},
		{name: "url key with spaces around, which libpq skips", dsn: "postgres://h/db?x=1& breaker =off",
			wantRest: "postgres://h/db?x=1", wantParams: map[string]string{"breaker": "off"}},
		{name: "url key with encoded spaces is a look-alike", dsn: "postgres://h/db?%20breaker=off",
			wantRest: "postgres://h/db", wantParams: map[string]string{" breaker": "off"}},
		{name: "url multi-host", dsn: "postgres://u:p@h1:5432,h2:5433,[::1]:5434/db?connect_retries=1&target_session_attrs=read-write",
			wantRest:   "postgres://u:p@h1:5432,h2:5433,[::1]:5434/db?target_session_attrs=read-write",
			wantParams: map[string]string{"connect_retries": "1"}},
		{name: "url password with our key in it is not ours", dsn: "postgres://u:breaker=off@h/db?x=1",
			wantRest: "postgres://u:breaker=off@h/db?x=1"},
		{name: "url question mark in an IPv6 bracket is host data", dsn: "postgres://[a?breaker=off]/db?breaker=on",
			wantRest: "postgres://[a?breaker=off]/db", wantParams: map[string]string{"breaker": "on"}},
		{name: "url @ before any slash ends the userinfo, as in libpq", dsn: "postgres://h?breaker=off&x=a@b/db",
			wantRest: "postgres://h?breaker=off&x=a@b/db"},
		{name: "url hash is data, not a fragment", dsn: "postgres://h/db?application_name=a#b&breaker=off",
			wantRest: "postgres://h/db?application_name=a#b", wantParams: map[string]string{"breaker": "off"}},
		{name: "url trailing ampersand", dsn: "postgres://h/db?x=1&breaker=off&",
			wantRest: "postgres://h/db?x=1&", wantParams: map[string]string{"breaker": "off"}},
		{name: "url look-alike is taken, for parseParams to refuse", dsn: "postgres://h/db?Breaker_Failure=3",
			wantRest: "postgres://h/db", wantParams: map[string]string{"Breaker_Failure": "3"}},
		{name: "url connect_timeout is pgx's", dsn: "postgres://h/db?connect_timeout=5&connect_backoff=1s",
			wantRest: "postgres://h/db?connect_timeout=5", wantParams: map[string]string{"connect_backoff": "1s"}},
		{name: "url unterminated bracket left to pgx", dsn: "postgres://[::1/db?breaker=off",
			wantRest: "postgres://[::1/db?breaker=off"},
		{name: "url undecodable key left to pgx", dsn: "postgres://h/db?br%zzeaker=off&breaker=on",
			wantRest: "postgres://h/db?br%zzeaker=off", wantParams: map[string]string{"breaker": "on"}},
		{name: "url duplicate", dsn: "postgres://h/db?breaker=off&%62reaker=on", wantErr: "breaker"},
		{name: "url missing value", dsn: "postgres://h/db?breaker&x=1", wantErr: "breaker"},
		{name: "url undecodable value", dsn: "postgres://h/db?breaker=o%zz", wantErr: "breaker"},

		// keyword/value form
		{name: "kv without params is untouched", dsn: "  host=h   port=5432 user=u ",
			wantRest: "  host=h   port=5432 user=u "},
		{name: "kv first", dsn: "breaker=off host=h user=u",
			wantRest: "host=h user=u", wantParams: map[string]string{"breaker": "off"}},
		{name: "kv middle keeps spacing", dsn: "host = h  breaker_failures = 3  user=u",
			wantRest: "host = h  user=u", wantParams: map[string]string{"breaker_failures": "3"}},
		{name: "kv last", dsn: "host=h user=u query_timeout=1s",
			wantRest: "host=h user=u", wantParams: map[string]string{"query_timeout": "1s"}},
		{name: "kv only ours", dsn: " breaker=off tx_autorollback=on ",
			wantRest: "", wantParams: map[string]string{"breaker": "off", "tx_autorollback": "on"}},
		{name: "kv quoted and escaped", dsn: `password='a \'b\' \\c' breaker_cooldown='2s' application_name=x\ y`,
			wantRest:   `password='a \'b\' \\c' application_name=x\ y`,
			wantParams: map[string]string{"breaker_cooldown": "2s"}},
		{name: "kv escaped unquoted value", dsn: `host=h connect_backoff=1\0ms`,
			wantRest: "host=h", wantParams: map[string]string{"connect_backoff": "10ms"}},
		{name: "kv quoted value glued to the next key", dsn: `host='h'breaker=off user=u`,
			wantRest: "host='h' user=u", wantParams: map[string]string{"breaker": "off"}},
		{name: "kv value with our key in it is not ours", dsn: "application_name=breaker=off host=h",
			wantRest: "application_name=breaker=off host=h"},
		{name: "kv empty value then spaces takes the next pair, as libpq does", dsn: "application_name= breaker=off",
			wantRest: "application_name= breaker=off"},
		{name: "kv our key swallowing the next pair", dsn: "breaker_cooldown= password=secret1", wantErr: "breaker_cooldown"},
		{name: "kv our key with an empty quoted value", dsn: "breaker_cooldown='' host=h",
			wantRest: "host=h", wantParams: map[string]string{"breaker_cooldown": ""}},
		{name: "kv tabs and newlines", dsn: "host=h\n\tbreaker=off\tuser=u",
			wantRest: "host=h\n\tuser=u", wantParams: map[string]string{"breaker": "off"}},
		{name: "kv unterminated quote left to pgx", dsn: "breaker=off password='x",
			wantRest: "breaker=off password='x"},
		{name: "kv duplicate", dsn: "breaker=off host=h breaker=on", wantErr: "breaker"},

		// foreign names
		{name: "sqlmock name", dsn: "sqlmock_db_1", wantRest: "sqlmock_db_1"},
		{name: "name and query", dsn: "db?breaker_failures=2&x=1", foreign: true,
			wantRest: "db?x=1", wantParams: map[string]string{"breaker_failures": "2"}},
		{name: "name and only ours", dsn: "mydb?breaker=off", foreign: true,
			wantRest: "mydb", wantParams: map[string]string{"breaker": "off"}},
		{name: "name, query and fragment", dsn: "file:test.db?cache=shared&breaker=off#frag", foreign: true,
			wantRest: "file:test.db?cache=shared#frag", wantParams: map[string]string{"breaker": "off"}},
		{name: "only ours and fragment", dsn: "db?breaker=off#frag", foreign: true,
			wantRest: "db#frag", wantParams: map[string]string{"breaker": "off"}},
		{name: "mysql style", dsn: "u:p@tcp(localhost:3306)/db?parseTime=true&query_timeout=3s", foreign: true,
			wantRest: "u:p@tcp(localhost:3306)/db?parseTime=true", wantParams: map[string]string{"query_timeout": "3s"}},
		{name: "name with plus in value", dsn: "db?query_timeout=1s&x=a+b", foreign: true,
			wantRest: "db?x=a+b", wantParams: map[string]string{"query_timeout": "1s"}},
		{name: "name duplicate", dsn: "db?breaker=off&breaker=on", foreign: true, wantErr: "breaker"},
		{name: "name missing value", dsn: "db?breaker", foreign: true, wantErr: "breaker"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			split := map[string]func(string) (string, map[string]string, error){"splitDSN": splitDSN}
			if !tt.foreign {
				split["splitPgxDSN"] = splitPgxDSN
			}
			for fn, f := range split {
				rest, params, err := f(tt.dsn)
				if tt.wantErr != "" {
					var ce *ConfigError
					if !errors.As(err, &ce) || ce.Param != tt.wantErr {
						t.Fatalf("%s(%q) error = %v, want a *ConfigError for %s", fn, tt.dsn, err, tt.wantErr)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s(%q): %v", fn, tt.dsn, err)
				}
				if rest != tt.wantRest {
					t.Errorf("%s(%q) rest = %q, want %q", fn, tt.dsn, rest, tt.wantRest)
				}
				if tt.wantParams == nil {
					tt.wantParams = map[string]string{}
				}
				if !maps.Equal(params, tt.wantParams) {
					t.Errorf("%s(%q) params = %v, want %v", fn, tt.dsn, params, tt.wantParams)
				}
			}
		})
	}
}

// A generic "name?query" is not a pgx form: pgx reads "db?breaker" as a key,
// so splitPgxDSN must leave it alone, and pgx then refuses it.
func TestSplitPgxDSNKeepsPgxReading(t *testing.T) {
	for _, dsn := range []string{"db?breaker=off", "a?breaker=off&x=1", "POSTGRES://h/db?breaker=off"} {
		rest, params, err := splitPgxDSN(dsn)
		if err != nil || rest != dsn || len(params) != 0 {
			t.Errorf("splitPgxDSN(%q) = %q, %v, %v; want it unchanged", dsn, rest, params, err)
		}
	}
}

func TestTokenizeKeywordValue(t *testing.T) {
	tests := []struct {
		in     string
		want   map[string]string
		wantOK bool
	}{
		{"", map[string]string{}, true},
		{"   ", map[string]string{}, true},
		{"a=1 b = 2 c= 3", map[string]string{"a": "1", "b": "2", "c": "3"}, true},
		{`a='x y' b=\'q c='it\'s'`, map[string]string{"a": "x y", "b": "'q", "c": "it's"}, true},
		{`a=x\`, map[string]string{"a": "x"}, true},
		{"a=", map[string]string{"a": ""}, true},
		{"a= b=1", map[string]string{"a": "b=1"}, true},
		{"a b=1", nil, false},
		{"=1", nil, false},
		{"a", nil, false},
		{"a='x", nil, false},
		{`a='x\`, nil, false},
		{"a=\x00", nil, false},
	}
	for _, tt := range tests {
		pairs, ok := tokenizeKeywordValue(tt.in)
		if ok != tt.wantOK {
			t.Errorf("tokenizeKeywordValue(%q) ok = %v, want %v", tt.in, ok, tt.wantOK)
			continue
		}
		got := map[string]string{}
		for _, p := range pairs {
			got[p.key] = p.value
		}
		if ok && !maps.Equal(got, tt.want) {
			t.Errorf("tokenizeKeywordValue(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestParseForeignDSN(t *testing.T) {
	cfg, rest, err := parseForeignDSN("mydb?breaker=off&connect_retries=0&x=1")
	if err != nil {
		t.Fatal(err)
	}
	if rest != "mydb?x=1" {
		t.Errorf("rest = %q, want %q", rest, "mydb?x=1")
	}
	want := DefaultConfig()
	want.DisableBreaker = true
	want.ConnectRetries = -1
	if *cfg != want {
		t.Errorf("config = %+v, want %+v", *cfg, want)
	}

	cfg, rest, err = parseForeignDSN("sqlmock_db_1")
	if err != nil || rest != "sqlmock_db_1" || *cfg != DefaultConfig() {
		t.Errorf(`parseForeignDSN("sqlmock_db_1") = %+v, %q, %v; want defaults, unchanged`, cfg, rest, err)
	}

	for _, dsn := range []string{"mydb?breaker=maybe", "mydb?breaker_failure=2", "host=h query_timeout=-1s"} {
		var ce *ConfigError
		if _, _, err := parseForeignDSN(dsn); !errors.As(err, &ce) {
			t.Errorf("parseForeignDSN(%q) error = %v, want a *ConfigError", dsn, err)
		}
	}
}

func TestNearMiss(t *testing.T) {
	tests := []struct {
		key, want string
	}{
		{"qeury_timeout", "query_timeout"},  // swap
		{"query_timout", "query_timeout"},   // deletion
		{"querry_timeout", "query_timeout"}, // insertion
		{"quary_timeout", "query_timeout"},  // substitution
		{"qeury_timout", "query_timeout"},   // two edits
		{"QUERY-TIMEOUT", "query_timeout"},  // case and separator
		{"conect_retries", "connect_retries"},
		{"breaker_failure", "breaker_failures"},
		{"breakr", "breaker"},
		{"keepalive", "keepalives"},
		{"tcp_usertimeout", "tcp_user_timeout"},
		{"qeury_tmout", ""}, // three edits
		{"query_timeout", ""},
		{"myapp.qeury_timeout", ""}, // a custom server setting
		{"statement_timeout", ""},
		{"tcp_keepalives_idle", ""},
		{"", ""},
	}
	for _, tt := range tests {
		if got := nearMiss(tt.key, paramNames()); got != tt.want {
			t.Errorf("nearMiss(%q) = %q, want %q", tt.key, got, tt.want)
		}
	}
	for _, tt := range []struct {
		key, want string
	}{{"pasword", "password"}, {"hots", "host"}, {"Port", "port"}, {"sslmod", "sslmode"},
		{"dbnme", "dbname"}, {"role", ""}, {"ssl", ""}, {"sslcrl", ""}, {"options", ""}} {
		if got := nearMiss(tt.key, pgxKeys); got != tt.want {
			t.Errorf("nearMiss(%q, pgxKeys) = %q, want %q", tt.key, got, tt.want)
		}
	}
	for _, tt := range []struct {
		a, b  string
		limit int
		want  int
	}{
		{"abc", "abc", 2, 0}, {"abc", "acb", 2, 1}, {"abc", "", 2, 3}, {"kitten", "sitting", 3, 3},
		{"kitten", "sitting", 2, 3}, {"ca", "abc", 3, 3}, {"abcdef", "badcfe", 3, 3},
	} {
		if got := editDistance(tt.a, tt.b, tt.limit); got != tt.want {
			t.Errorf("editDistance(%q, %q, %d) = %d, want %d", tt.a, tt.b, tt.limit, got, tt.want)
		}
	}
}
