module github.com/pgresilient/pgresilient/conformance

go 1.25.0

// This module is never published (no tag; nothing depends on it): it tests
// the driver of this working tree. go.work's use list says so in the
// workspace; this replace directive says so with GOWORK=off, and the version
// required of the driver is then only a placeholder. A published module must
// not have one (docs/releasing.md). TestPgxStdlib's temporary module replaces
// the driver by this working tree whatever this file says.
replace github.com/pgresilient/pgresilient => ..

require (
	github.com/pgresilient/pgresilient v0.1.0
	github.com/stretchr/testify v1.11.1
)

require (
	github.com/davecgh/go-spew v1.1.1 // indirect
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/pgx/v5 v5.12.0 // indirect
	github.com/kr/text v0.2.0 // indirect
	github.com/pmezard/go-difflib v1.0.0 // indirect
	github.com/rogpeppe/go-internal v1.16.0 // indirect
	golang.org/x/text v0.41.0 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)
