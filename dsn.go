package pgresilient

import (
	"errors"
	"net/url"
	"strings"
)

// This file separates pgresilient's own DSN parameters from the rest of a DSN
// without parsing the rest. pgx would otherwise send every key it does not
// know to the server as a runtime parameter, which the server refuses with
// FATAL.
//
// The pgx forms are tokenized exactly the way pgx v5.12 (and libpq) tokenize
// them, so that what we strip is what pgx would have seen as a key:
//
//   - URL form ("postgres://" or "postgresql://", case-sensitive, as in pgx):
//     userinfo is whatever precedes the first '@' that comes before any '/'
//     (libpq's lookahead, even when that '@' sits in what looks like a query);
//     then a comma-separated host[:port] list, with '[' opening an IPv6 bracket
//     whose contents may contain '?'; then an optional "/dbname"; then the
//     query, split on '&', each key percent-decoded with libpq's rules. pgx has
//     no fragment: a '#' is ordinary data, so it stays where it was.
//   - Keyword/value form: libpq rules. Whitespace around '=' is skipped (so an
//     empty unquoted value takes the next token as its value!), values may be
//     single-quoted, and a backslash escapes the next character in both quoted
//     and unquoted values.
//
// Foreign drivers (go-sqlmock, lib/pq, ...) get the same treatment when their
// DSN is a pgx-style one, plus a generic "name?query#fragment" form.

// reservedPrefixes are the prefixes of keys that pgresilient claims. A key
// with one of these prefixes that is not in paramTable (config.go) is almost certainly a
// typo of one of ours: if it reached pgx it would be sent to the server as a
// runtime parameter and refused with FATAL, so it is stripped and reported.
// The comparison ignores case: PostgreSQL's parameter names do too.
// pgx's own connect_timeout, and the server's tcp_keepalives_*, match none
// of them.
var reservedPrefixes = []string{"breaker", "tx_", "connect_retr", "connect_backoff", "query_timeout",
	"keepalives", "tcp_user_timeout", "monitor"}

// isReservedKey reports whether key is one of ours or looks like one: it
// starts with one of reservedPrefixes, or it is a near miss of one of our
// names ("qeury_timeout", "conect_retries": see nearMiss).
func isReservedKey(key string) bool {
	lower := strings.ToLower(strings.TrimSpace(key))
	for _, p := range reservedPrefixes {
		if strings.HasPrefix(lower, p) {
			return true
		}
	}
	return nearMiss(lower, paramNames()) != ""
}

// nearMiss returns the name of names that key most likely misspells, or ""
// when none is close: the same name in another case, or one within an edit
// distance (insertions, deletions, substitutions and swaps of two adjacent
// letters) of 1 for names of 4 to 7 bytes, 2 for longer ones. A dotted key is
// never a near miss: it is a custom server setting ("myapp.tenant"), which
// the server accepts. TestNearMissServerSettings checks that no setting of
// the PostgreSQL server the tests run (nor of later releases), and no libpq
// keyword, is a near miss of ours or pgx's.
func nearMiss(key string, names []string) string {
	if key == "" || strings.Contains(key, ".") {
		return ""
	}
	lower := strings.ToLower(key)
	best, bestDist := "", 3
	for _, name := range names {
		if key == name {
			return ""
		}
		limit := 2
		switch {
		case len(name) < 4:
			limit = 0
		case len(name) < 8:
			limit = 1
		}
		if d := editDistance(lower, name, limit); d <= limit && d < bestDist {
			best, bestDist = name, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance between a and b
// (Levenshtein's, plus swaps of two adjacent bytes), or limit+1 when it
// exceeds limit.
func editDistance(a, b string, limit int) int {
	if d := len(a) - len(b); d > limit || -d > limit {
		return limit + 1
	}
	// Three rows of the dynamic programme: i-2, i-1 and i.
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		rowMin := cur[0]
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
			rowMin = min(rowMin, cur[j])
		}
		if rowMin > limit {
			return limit + 1
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return min(prev[len(b)], limit+1)
}

var (
	errDuplicate    = errors.New("given more than once")
	errMissingValue = errors.New(`missing "=" and value`)
	// errSwallowedValue: in keyword/value form "breaker= host=db" sets breaker
	// to "host=db" (libpq skips whitespace after '='). For our keys we refuse
	// that reading instead of echoing what is probably someone else's pair.
	errSwallowedValue = errors.New(`empty value: write '' for an empty value; after "key=" and spaces libpq takes the next key=value pair as the value`)
)

// splitDSN separates pgresilient's parameters from the rest of dsn, without
// parsing the rest. It accepts every form pgx accepts (URL, keyword/value, and
// the empty string) and, for drivers other than pgx, a generic
// "name?query#fragment" form such as go-sqlmock's "mydb?breaker=off".
//
// params holds every key that is ours or looks like ours (see isReservedKey),
// with its decoded value; parseParams rejects the unknown ones. rest is dsn
// byte for byte when params is empty; otherwise it is dsn with our pieces cut
// out and every other piece kept as written and in order.
//
// A key of ours given twice, or without "=", is a *ConfigError. A dsn that
// does not tokenize is returned unchanged, for the driver to reject.
func splitDSN(dsn string) (rest string, params map[string]string, err error) {
	switch {
	case dsn == "":
		return "", map[string]string{}, nil
	case isURLForm(dsn):
		return splitURL(dsn)
	}
	if pairs, ok := tokenizeKeywordValue(dsn); ok && plainKeys(pairs) {
		return splitKeywordValue(dsn, pairs)
	}
	if strings.Contains(dsn, "?") {
		return splitGeneric(dsn)
	}
	return dsn, map[string]string{}, nil
}

// splitPgxDSN is splitDSN restricted to the two forms pgx itself knows: a
// string that is not a URL is keyword/value, exactly as pgx decides. It never
// guesses the generic form, so that what reaches pgx.ParseConfig differs from
// dsn only by our own keys as pgx itself would have read them.
func splitPgxDSN(dsn string) (rest string, params map[string]string, err error) {
	switch {
	case dsn == "":
		return "", map[string]string{}, nil
	case isURLForm(dsn):
		return splitURL(dsn)
	}
	pairs, ok := tokenizeKeywordValue(dsn)
	if !ok {
		// pgx rejects it; it reports why.
		return dsn, map[string]string{}, nil
	}
	return splitKeywordValue(dsn, pairs)
}

// isURLForm reports whether pgx parses dsn as a URL: the check is
// case-sensitive, like pgx's.
func isURLForm(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// addParam records one of our keys, refusing a second occurrence: pgx keeps
// the last one silently, which hides mistakes.
func addParam(params map[string]string, key, value string) error {
	if _, dup := params[key]; dup {
		return &ConfigError{Param: key, Value: value, Err: errDuplicate}
	}
	params[key] = value
	return nil
}

// ---- URL form ----

// urlQueryStart returns the index in dsn of the '?' that starts the query of
// a pgx URL, or -1 when there is no query or pgx would reject the URL before
// reaching it. It walks the URL exactly as pgx's parseURLSettings does.
func urlQueryStart(dsn string) int {
	var off int
	switch {
	case strings.HasPrefix(dsn, "postgresql://"):
		off = len("postgresql://")
	case strings.HasPrefix(dsn, "postgres://"):
		off = len("postgres://")
	default:
		return -1
	}
	p := dsn[off:]
	skip := func(n int) { p = p[n:]; off += n }

	// Userinfo: like libpq, only a '/' stops the search for '@'.
	if i := strings.IndexAny(p, "@/"); i >= 0 && p[i] == '@' {
		skip(i + 1)
	}
	for {
		if peek(p) == '[' {
			end := strings.IndexByte(p, ']')
			if end <= 1 { // unterminated or empty: pgx rejects it
				return -1
			}
			skip(end + 1)
			if c := peek(p); c != 0 && c != ':' && c != '/' && c != '?' && c != ',' {
				return -1
			}
		} else {
			i := strings.IndexAny(p, ":/?,")
			if i < 0 {
				i = len(p)
			}
			skip(i)
		}
		if peek(p) == ':' {
			skip(1)
			i := strings.IndexAny(p, "/?,")
			if i < 0 {
				i = len(p)
			}
			skip(i)
		}
		if peek(p) != ',' {
			break
		}
		skip(1)
	}
	switch peek(p) {
	case '?':
		return off
	case '/':
		if i := strings.IndexByte(p, '?'); i >= 0 {
			return off + i
		}
	}
	return -1
}

func peek(s string) byte {
	if s == "" {
		return 0
	}
	return s[0]
}

// splitURL strips our keys from the query of a pgx URL.
func splitURL(dsn string) (string, map[string]string, error) {
	params := map[string]string{}
	qi := urlQueryStart(dsn)
	if qi < 0 {
		return dsn, params, nil
	}
	kept, err := filterQuery(dsn[qi+1:], params, uriDecode)
	if err != nil {
		return "", nil, err
	}
	return joinQuery(dsn, dsn[:qi], kept, "", params), params, nil
}

// filterQuery splits query on '&' and moves our pairs into params, decoding
// keys and values with decode. It returns the other pieces as written. A piece
// whose key does not decode is kept: it is not ours, and pgx reports it.
func filterQuery(query string, params map[string]string, decode func(string) (string, error)) ([]string, error) {
	pieces := strings.Split(query, "&")
	kept := pieces[:0:0]
	for _, piece := range pieces {
		rawKey, rawValue, found := strings.Cut(piece, "=")
		key, err := decode(rawKey)
		if err != nil || !isReservedKey(key) {
			kept = append(kept, piece)
			continue
		}
		if !found {
			return nil, &ConfigError{Param: key, Err: errMissingValue}
		}
		value, err := decode(rawValue)
		if err != nil {
			return nil, &ConfigError{Param: key, Value: rawValue, Err: err}
		}
		if err := addParam(params, key, value); err != nil {
			return nil, err
		}
	}
	return kept, nil
}

// joinQuery rebuilds a DSN from the part before the '?', the kept query
// pieces and a suffix (a fragment, for the generic form). Nothing removed:
// dsn as is. Nothing left: no '?'.
func joinQuery(dsn, base string, kept []string, suffix string, params map[string]string) string {
	if len(params) == 0 {
		return dsn
	}
	q := strings.Join(kept, "&")
	if q == "" {
		return base + suffix
	}
	return base + "?" + q + suffix
}

// uriDecode percent-decodes one URL component with libpq's rules, as pgx
// does: leading and trailing spaces are skipped, an interior space is an
// error, '%' needs two hex digits, %00 is forbidden, '+' is a plain '+'.
// Its errors never quote the input: they may be about a password.
func uriDecode(raw string) (string, error) {
	var b strings.Builder
	i := 0
	for i < len(raw) && raw[i] == ' ' {
		i++
	}
	for i < len(raw) && raw[i] != ' ' {
		if raw[i] != '%' {
			b.WriteByte(raw[i])
			i++
			continue
		}
		var hi, lo byte
		var ok1, ok2 bool
		if i+1 < len(raw) {
			hi, ok1 = unhex(raw[i+1])
		}
		if i+2 < len(raw) {
			lo, ok2 = unhex(raw[i+2])
		}
		if !ok1 || !ok2 {
			return "", errors.New("invalid percent-encoding")
		}
		c := hi<<4 | lo
		if c == 0 {
			return "", errors.New("forbidden %00 in percent-encoding")
		}
		b.WriteByte(c)
		i += 3
	}
	for i < len(raw) && raw[i] == ' ' {
		i++
	}
	if i < len(raw) {
		return "", errors.New("unexpected space, use %20")
	}
	return b.String(), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// ---- keyword/value form ----

// kvPair is one key=value pair of a keyword/value DSN and where it lies.
type kvPair struct {
	key, value string
	start      int  // index of the key's first byte
	end        int  // index just past the value (and its closing quote)
	next       int  // index of the next pair's key, or len(dsn)
	swallowed  bool // the unquoted value starts after whitespace that follows '='
}

// isSpace is libpq's (and pgx's) notion of whitespace in a conninfo string.
func isSpace(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\v', '\f', '\r':
		return true
	}
	return false
}

// skipSpace returns the index of the first non-space byte at or after i.
func skipSpace(s string, i int) int {
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	return i
}

// tokenizeKeywordValue tokenizes s with pgx's (libpq's) keyword/value rules.
// ok is false exactly when pgx would refuse the syntax.
func tokenizeKeywordValue(s string) (pairs []kvPair, ok bool) {
	if strings.IndexByte(s, 0) >= 0 {
		return nil, false
	}
	i := skipSpace(s, 0)
	for i < len(s) {
		eq := strings.IndexByte(s[i:], '=')
		if eq < 0 {
			return nil, false
		}
		eq += i
		rawKey := s[i:eq]
		key := strings.TrimLeft(rawKey, " \t\n\v\f\r")
		keyStart := i + len(rawKey) - len(key)
		key = strings.TrimRight(key, " \t\n\v\f\r")
		if key == "" || strings.ContainsAny(key, " \t\n\v\f\r") {
			return nil, false
		}
		p := kvPair{key: key, start: keyStart}
		j := skipSpace(s, eq+1)
		p.swallowed = j > eq+1
		switch {
		case j == len(s):
			p.end = j
		case s[j] != '\'':
			end := j
			for ; end < len(s) && !isSpace(s[end]); end++ {
				if s[end] == '\\' {
					end++
					if end == len(s) {
						break
					}
				}
			}
			p.value = unescapeKeywordValue(s[j:end])
			p.end = end
		default:
			p.swallowed = false
			j++
			end := j
			for ; end < len(s) && s[end] != '\''; end++ {
				if s[end] == '\\' {
					end++
					if end == len(s) {
						return nil, false
					}
				}
			}
			if end == len(s) {
				return nil, false
			}
			p.value = unescapeKeywordValue(s[j:end])
			p.end = end + 1
		}
		i = skipSpace(s, p.end)
		p.next = i
		pairs = append(pairs, p)
	}
	return pairs, true
}

// unescapeKeywordValue drops each backslash and keeps the byte after it.
func unescapeKeywordValue(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
			if i == len(s) {
				break
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// plainKeys reports whether every key looks like a libpq keyword or a server
// parameter name (letters, digits, '_', '.', '-'). A key such as "mydb?breaker"
// means the DSN is not keyword/value but a generic "name?query".
func plainKeys(pairs []kvPair) bool {
	for _, p := range pairs {
		for i := 0; i < len(p.key); i++ {
			c := p.key[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-') {
				return false
			}
		}
	}
	return true
}

// splitKeywordValue removes our pairs from a tokenized keyword/value DSN,
// keeping the text of every other pair as written.
func splitKeywordValue(dsn string, pairs []kvPair) (string, map[string]string, error) {
	params := map[string]string{}
	var kept []kvPair
	for _, p := range pairs {
		if !isReservedKey(p.key) {
			kept = append(kept, p)
			continue
		}
		if p.swallowed && strings.Contains(p.value, "=") {
			return "", nil, &ConfigError{Param: p.key, Value: p.value, Err: errSwallowedValue}
		}
		if err := addParam(params, p.key, p.value); err != nil {
			return "", nil, err
		}
	}
	if len(params) == 0 {
		return dsn, params, nil
	}
	if len(kept) == 0 {
		return "", params, nil
	}
	var b strings.Builder
	b.WriteString(dsn[:pairs[0].start]) // leading whitespace
	for i, p := range kept {
		if i == len(kept)-1 {
			b.WriteString(dsn[p.start:p.end])
			break
		}
		piece := dsn[p.start:p.next]
		b.WriteString(piece)
		if p.next == p.end { // a quoted value directly followed by the next key
			b.WriteByte(' ')
		}
	}
	return b.String(), params, nil
}

// ---- generic form, for foreign drivers ----

// splitGeneric strips our keys from "name?query#fragment", decoding keys and
// values as URL query components. The fragment, if any, is kept.
func splitGeneric(dsn string) (string, map[string]string, error) {
	params := map[string]string{}
	qi := strings.IndexByte(dsn, '?')
	query, fragment := dsn[qi+1:], ""
	if fi := strings.IndexByte(query, '#'); fi >= 0 {
		query, fragment = query[:fi], query[fi:]
	}
	kept, err := filterQuery(query, params, queryDecode)
	if err != nil {
		return "", nil, err
	}
	return joinQuery(dsn, dsn[:qi], kept, fragment, params), params, nil
}

// queryDecode decodes a URL query component ('+' is a space). Its error does
// not quote the input.
func queryDecode(raw string) (string, error) {
	s, err := url.QueryUnescape(raw)
	if err != nil {
		return "", errors.New("invalid percent-encoding")
	}
	return s, nil
}
