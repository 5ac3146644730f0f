package pgresilient

import (
	"errors"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/jackc/pgx/v5"
)

// FuzzParseConfig and its helpers: parsing never panics, and no error ever
// echoes a password.

// secretWords returns the pieces of a password that the fuzz test can look
// for in messages without false alarms: runs of 6 or more letters and digits
// with at least one of each (no word of a message looks like that).
func secretWords(password string) []string {
	var words []string
	for _, w := range secretWord.FindAllString(password, -1) {
		if strings.ContainsAny(w, "0123456789") && strings.IndexFunc(w, unicode.IsLetter) >= 0 {
			words = append(words, w)
		}
	}
	return words
}

var secretWord = regexp.MustCompile(`[A-Za-z0-9]{6,}`)

// passwordsIn guesses the password of a raw DSN, even a malformed one: the
// first word of a password=... value or of a URL's userinfo password.
var passwordsIn = regexp.MustCompile(`(?:password\s*=\s*'?|://[^:/@]*:)([A-Za-z0-9]{6,})`)

func FuzzParseConfig(f *testing.F) {
	isolatePGEnv(f)
	ca := writeTestCA(f)
	for _, tt := range validDSNs {
		f.Add(strings.ReplaceAll(tt.dsn, caFile, ca), "", "", "", "")
	}
	f.Add("", "db.example", "Secret99", "breaker_cooldown", "5x")
	f.Add("", "db", "Secret99", "breaker", "")
	f.Add("", "h/x?y", "Secret99", "query_timeout", "1s")
	f.Add("", "db", "Secret99", "connect_timeout", "x")
	f.Add("", "[::1", "Secret99", "a", "b")
	f.Add("", "d%zzb", "Secret99", "target_session_attrs", "'x")
	f.Add("host=db password=Secret99 Wordpart77", "", "", "", "")
	f.Add("postgres://alice:Secret99/x@db/app?breaker=off", "", "", "", "")
	f.Add("", "db", "Secret99 Wordpart77", "breaker", "off")
	f.Add("", "db", "Secret99/?connect_timeout=Wordpart77", "breaker", "off")
	// Typos of our keys and pgx's, and libpq's TCP parameters.
	f.Add("", "db", "Secret99", "qeury_timeout", "5s")
	f.Add("", "db", "Secret99", "pasword", "Wordpart77")
	f.Add("host=db pasword=Secret99 sslmod=disable", "", "", "", "")
	f.Add("", "db", "Secret99", "keepalives_idle", "10s")
	f.Add("", "db", "Secret99", "tcp_user_timeout", "Secret99")
	f.Add("postgres://alice:Secret99@db/app?keepalives=0&keepalives_count=3", "", "", "", "")

	f.Fuzz(func(t *testing.T, raw, host, password, key, value string) {
		var rawWords []string
		for _, m := range passwordsIn.FindAllStringSubmatch(raw, -1) {
			rawWords = append(rawWords, secretWords(m[1])...)
		}
		checkParse(t, raw, rawWords)
		if host == "" && password == "" && key == "" && value == "" {
			return
		}
		pw := secretWords(password)
		for _, dsn := range []string{
			"postgres://alice:" + password + "@" + host + "/app?" + key + "=" + value,
			"postgres://alice@" + host + "/app?" + key + "=" + value + "&password=" + password,
			"postgres://alice:" + password + "@" + host + "/app?sslmode=disable&" + key + "=" + value + "&breaker=off",
			"host=" + host + " password=" + password + " " + key + "=" + value,
			key + "=" + value + " host=" + host + " password='" + password + "'",
			"host=" + host + " " + key + "=" + value + " password=" + password + " breaker=off",
		} {
			checkParse(t, dsn, pw)
		}
	})
}

// checkParse parses dsn and checks what FuzzParseConfig promises: no panic,
// every error a *ConfigError whose message shows no password, none of our
// keys in RuntimeParams, and, where pgx parses dsn as is too, the same
// connection settings as pgx minus our keys.
func checkParse(t *testing.T, dsn string, secrets []string) {
	t.Helper()
	cfg, err := ParseConfig(dsn)
	rawCC, rawErr := pgx.ParseConfig(dsn)
	if err != nil {
		var ce *ConfigError
		if !errors.As(err, &ce) {
			t.Fatalf("ParseConfig(%q) error %v is not a *ConfigError", dsn, err)
		}
		msg := err.Error()
		for _, pw := range secrets {
			// A password that also appears elsewhere in the DSN (as a host,
			// say) may be quoted for that reason.
			if strings.Count(dsn, pw) == 1 && strings.Contains(msg, pw) {
				t.Fatalf("ParseConfig(%q): message %q shows the password %q", dsn, msg, pw)
			}
		}
		if len(dsn) >= 16 && strings.Contains(msg, dsn) {
			t.Fatalf("ParseConfig(%q): message %q shows the DSN", dsn, msg)
		}
		if rawErr == nil && ce.Param == "" {
			t.Fatalf("ParseConfig(%q): pgx refused what was left (%v), but takes the DSN as is", dsn, err)
		}
		return
	}
	cc := cfg.ConnConfig
	for k := range cc.RuntimeParams {
		if isReservedKey(k) {
			t.Fatalf("ParseConfig(%q): RuntimeParams keeps %q", dsn, k)
		}
	}
	if rawErr != nil {
		return // removing our keys can only have removed pgx's complaint
	}
	_, params, _ := splitPgxDSN(dsn)
	if cc.Host != rawCC.Host || cc.Port != rawCC.Port || cc.User != rawCC.User || cc.Password != rawCC.Password ||
		cc.Database != rawCC.Database || !slices.Equal(hostList(cc), hostList(rawCC)) {
		t.Fatalf("ParseConfig(%q) connects as %s@%v/%s, pgx as %s@%v/%s", dsn,
			cc.User, hostList(cc), cc.Database, rawCC.User, hostList(rawCC), rawCC.Database)
	}
	wantRuntime := maps.Clone(rawCC.RuntimeParams)
	for k, v := range rawCC.RuntimeParams {
		if isReservedKey(k) {
			if params[k] != v {
				t.Fatalf("ParseConfig(%q): pgx reads %s=%q, we read %q", dsn, k, v, params[k])
			}
			delete(wantRuntime, k)
		}
	}
	if len(params) != len(rawCC.RuntimeParams)-len(wantRuntime) {
		t.Fatalf("ParseConfig(%q): we took %v, pgx saw %v", dsn, params, rawCC.RuntimeParams)
	}
	if !maps.Equal(cc.RuntimeParams, wantRuntime) {
		t.Fatalf("ParseConfig(%q): RuntimeParams %v, want pgx's without ours %v", dsn, cc.RuntimeParams, wantRuntime)
	}
}
