package faultproxy_test

import (
	"errors"
	"fmt"

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
