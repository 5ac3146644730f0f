// Package conformance runs pgx's own database/sql tests through pgresilient:
// the check behind "a drop-in for pgx's stdlib driver".
//
// TestPgxStdlib takes pgx's stdlib/sql_test.go and stdlib/sql_go1.27_test.go
// from the module cache, for the pgx version this module builds with, at test
// time (nothing of pgx's is copied into this repository). It rewrites them the
// way a user switching drivers changes code: sql.Open("pgx", ...) becomes
// sql.Open("pgresilient", ...), stdlib.OpenDB(config, opts...) becomes
// pgresilient.NewConnectorConfig and sql.OpenDB, pgx's connect hooks become
// WithBeforeConnect and WithAfterConnect, and the *stdlib.Conn that
// (*sql.Conn).Raw used to hand over is reached with pgresilient.PgxConn
// (rewrite_test.go lists the rules). It runs them in a temporary module whose
// pgresilient is this checkout, with the Go toolchain running the test,
// against a throwaway PostgreSQL, and reads go test -json.
//
// # What fails the run
//
//   - any test or subtest that fails, and the package failing or not building;
//   - a hang: the inner run has a -timeout well under the outer test's, and
//     the timeout's trace is shown;
//   - a test that should have run and did not, or fewer passes than a real
//     run gives (a run that executed nothing cannot pass);
//   - a use of pgx's stdlib package, in a test that runs, that the rewrite has
//     no rule for: the test goes to the not-applicable table with a reason, or
//     a rule is added; it never silently runs through pgx's own driver;
//   - a skip, unless expected (below).
//
// # Not applicable
//
// A test of pgx's that exercises what only pgx's stdlib package has, and
// cannot be expressed through pgresilient, is listed in one table,
// notApplicable in pgxstdlib_test.go, with the reason. It is dropped from the
// rewritten file, so it does not run, is counted apart, and listing a test pgx does not
// have fails the run. Everything else runs.
//
// # pgx's own skips
//
// pgx's tests skip themselves on CockroachDB and on PostgreSQL older than a
// feature needs ("Test requires PostgreSQL v14+"). The run checks the server's
// version: a version skip is expected, logged as "skipped by pgx" with pgx's
// reason and not counted as passed, only when the server really is older. Any
// other skip fails the run, since on the PostgreSQL the run starts it means a
// test checked nothing.
package conformance
