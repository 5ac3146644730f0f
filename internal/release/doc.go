// Package release checks that the modules this repository publishes can be
// used the way their users use them: fetched from a module proxy at a
// version, outside this repository's workspace, where no replace directive
// and no go.work can point at the local copy.
//
// TestPublishedModules publishes the driver, pgresilientprom and the demo
// from the working tree to a module proxy in a temporary directory, then,
// with GOWORK=off, runs go get and go build against pgresilientprom and go
// install of the demo, as docs/releasing.md describes. It runs as part of
// every module's tests (the go test line of README.md).
package release
