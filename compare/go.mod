module github.com/pgresilient/pgresilient/compare

go 1.26.0

require (
	github.com/jackc/pgx/v5 v5.12.0
	github.com/lib/pq v1.12.3
	github.com/pgresilient/pgresilient v0.0.0
)

require (
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/puddle/v2 v2.2.3 // indirect
	github.com/ngrok/sqlmw v0.0.0-20220520173518-97c9c04efc79 // indirect
	github.com/sony/gobreaker/v2 v2.4.0 // indirect
	golang.org/x/sync v0.23.0 // indirect
	golang.org/x/text v0.42.0 // indirect
)

// This module is never published (no tag; nothing depends on it): it
// measures the driver of this working tree. go.work's use list says so in
// the workspace; this replace directive says so with GOWORK=off, and the
// version required above is then only a placeholder. A published module
// must not have one (docs/releasing.md).
replace github.com/pgresilient/pgresilient => ..
