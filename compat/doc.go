// Package compat is pgresilient's compatibility suite: each test file runs one
// popular database tool (sqlx, GORM, bun, otelsql, sqlc-generated code, ent,
// goose) over the "pgresilient" driver against a throwaway PostgreSQL, next
// to raw pgx where a behaviour differs, and shows what pgresilient's errors
// look like through that tool. It is a module of its own so that the
// driver's users never download these tools. docs/ecosystem.md has the
// recipes and the table of results.
package compat
