package faultproxy_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/pgresilient/pgresilient/faultproxy"
)

// The proxy only ever forwards to loopback: a test must never reach another
// machine.
func ExampleNew() {
	_, err := faultproxy.New("10.1.2.3:5432")
	fmt.Println(errors.Is(err, faultproxy.ErrNotLoopback))
	// Output: true
}

// A proxy in front of a server on this machine; the faults are methods.
func ExampleProxy() {
	p, err := faultproxy.New("127.0.0.1:5432")
	if err != nil {
		panic(err)
	}
	defer p.Close()
	fmt.Println(p.Host())
	p.Freeze() // traffic dropped without a word, as a blackhole does
	p.Thaw()
	p.Cut() // every connection reset
	// Output: 127.0.0.1
}

// A statement cut after it reached the server. The match ignores the case of
// ASCII letters, so COMMIT fires on the "commit" pgx sends; NewT fails the
// test if the trigger is still armed at its end, since then no fault was
// injected.
func ExampleProxy_CutOn() {
	var t *testing.T // the test's
	proxy := faultproxy.NewT(t, "127.0.0.1:5432")
	proxy.CutOn([]byte("COMMIT"), true)
	// ... commit a transaction through proxy.Addr() ...
	if proxy.Fired() != 1 {
		t.Fatal("the commit was never cut")
	}
}
