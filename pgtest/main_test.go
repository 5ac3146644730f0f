package pgtest

import (
	"os"
	"testing"

	"github.com/pgresilient/pgresilient/pgtest/internal/proctest"
)

var cluster *Cluster

func TestMain(m *testing.M) {
	// A helper process of TestDiesWithTest starts only what its mode names.
	if mode := proctest.Mode(); mode != "" && mode != helperRunMain {
		os.Exit(m.Run())
	}
	os.Exit(RunMain(m, &cluster))
}
