package pgtest

import (
	"os"
	"testing"
)

var cluster *Cluster

func TestMain(m *testing.M) {
	// A helper process of TestDiesWithTest starts only what its mode names.
	if mode := os.Getenv(helperEnv); mode != "" && mode != helperRunMain {
		os.Exit(m.Run())
	}
	os.Exit(RunMain(m, &cluster))
}
