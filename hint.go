package pgresilient

import (
	"strings"
)

// PlaceholderError is a syntax error (SQLSTATE 42601) of a statement that
// holds '?' but no $1: most likely written for a driver whose placeholders
// are '?', or by a tool that writes them so for an unknown driver name (sqlx
// before sqlx.BindDriver("pgresilient", sqlx.DOLLAR)). It wraps the server's
// *pgconn.PgError unchanged and only adds the hint to the message.
type PlaceholderError struct {
	Err error // the server's error, a *pgconn.PgError
}

// Error is the server's message and the hint.
func (e *PlaceholderError) Error() string {
	return e.Err.Error() + ` (pgresilient: the statement has '?' but no $1; PostgreSQL's placeholders are $1, $2, ...; ` +
		`with sqlx, call sqlx.BindDriver("pgresilient", sqlx.DOLLAR) once)`
}

// Unwrap returns the server's error.
func (e *PlaceholderError) Unwrap() error { return e.Err }

// placeholderHint wraps err in a *PlaceholderError when it is the server's
// syntax error for a query with '?' placeholders; it returns err otherwise.
// It runs on the error path only.
func placeholderHint(err error, query string) error {
	if _, st, ok := serverState(err); !ok || !st.syntax ||
		!strings.Contains(query, "?") || strings.Contains(query, "$1") {
		return err
	}
	return &PlaceholderError{Err: err}
}
