// The release check has a module of its own: it needs golang.org/x/mod to
// build module zips, a dependency the driver's users must not download. It
// is never published.
module github.com/pgresilient/pgresilient/internal/release

go 1.26.0

require golang.org/x/mod v0.41.0
