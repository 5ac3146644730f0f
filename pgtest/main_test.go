package pgtest

import (
	"os"
	"testing"
)

var cluster *Cluster

func TestMain(m *testing.M) {
	os.Exit(RunMain(m, &cluster))
}
