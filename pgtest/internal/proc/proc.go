// Package proc is the process bookkeeping that pgtest, pgtest/patroni and
// pgtest/haproxy share: the runner of the PostgreSQL binaries (as the
// "postgres" account when root), children bound to the test process
// (StartBound) and their stop (Terminate), the watchdog that stops what a
// dead test process left (Watch), the reaping of stale directories, the
// closing of everything on SIGINT and SIGTERM (CloseOnSignal), and free
// ports.
//
// Every binary that imports pgtest or its subpackages imports this package,
// so its init can turn a copy of the test executable into the watchdog.
package proc

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"
)

const (
	// Host is the address every server and process listens on.
	Host = "127.0.0.1"
	// OwnerFile, in a temporary directory, holds the pid of the process
	// that made it, so a later run can reap what a killed one left.
	OwnerFile = "owner.pid"
	// AdminApp is the application_name of pgtest's own connections.
	// Cluster.ClientBackends and TerminateBackends ignore them: one just
	// closed may linger for a moment before its backend exits.
	AdminApp = "pgtest-admin"
)

// FreePort returns a 127.0.0.1 TCP port that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(Host, "0"))
	if err != nil {
		return 0, fmt.Errorf("pgtest: finding a free port: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		return 0, fmt.Errorf("pgtest: finding a free port: %w", err)
	}
	return port, nil
}

// FreePorts returns n distinct free 127.0.0.1 ports.
func FreePorts(n int) ([]int, error) {
	var ports []int
	for len(ports) < n {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		if !slices.Contains(ports, port) {
			ports = append(ports, port)
		}
	}
	return ports, nil
}

// live is everything pgtest started in this process and has not closed yet:
// Clusters, Bouncers, Patroni clusters, each with the order it started in.
var live struct {
	mu   sync.Mutex
	next uint64
	m    map[io.Closer]uint64
}

// Track adds c to what CloseOnSignal's handler closes.
func Track(c io.Closer) {
	live.mu.Lock()
	defer live.mu.Unlock()
	if live.m == nil {
		live.m = make(map[io.Closer]uint64)
	}
	live.next++
	live.m[c] = live.next
}

// Untrack removes c, once closed, from what CloseOnSignal's handler closes.
func Untrack(c io.Closer) {
	live.mu.Lock()
	defer live.mu.Unlock()
	delete(live.m, c)
}

// closeLive closes everything live, the last started first (a PgBouncer
// before its cluster), and returns how many it closed.
func closeLive() (int, error) {
	live.mu.Lock()
	cs := slices.Collect(maps.Keys(live.m))
	slices.SortFunc(cs, func(a, b io.Closer) int { return cmp.Compare(live.m[b], live.m[a]) })
	live.mu.Unlock()
	var errs []error
	for _, c := range cs {
		errs = append(errs, c.Close())
	}
	return len(cs), errors.Join(errs...)
}

var signalOnce sync.Once

// CloseOnSignal makes SIGINT and SIGTERM close everything pgtest started in
// this process (what Track added), servers stopped and directories removed,
// then end the process as the signal would have. A second signal ends the
// process at once, leaving the rest to the kernel and the watchdog. Only the
// test helpers install it: a program that starts clusters handles its
// signals itself.
func CloseOnSignal() {
	signalOnce.Do(func() {
		sigs := make(chan os.Signal, 2)
		signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
		go func() {
			sig := <-sigs
			done := make(chan struct{})
			go func() {
				defer close(done)
				n, err := closeLive()
				if err != nil {
					fmt.Fprintf(os.Stderr, "pgtest: %v: closed what pgtest started (%d): %v\n", sig, n, err)
				} else {
					fmt.Fprintf(os.Stderr, "pgtest: %v: closed what pgtest started (%d)\n", sig, n)
				}
			}()
			select {
			case <-done:
			case <-sigs:
			}
			signal.Reset(os.Interrupt, syscall.SIGTERM)
			_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal))
			time.Sleep(time.Second) // the signal's default action ends us meanwhile
			os.Exit(1)
		}()
	})
}

// Terminate ends a child process, p, whose exited channel is closed once it
// has been waited for: SIGTERM, then SIGKILL after grace. It returns once the
// child exited, reporting whether it had to be killed.
func Terminate(p *os.Process, exited <-chan struct{}, grace time.Duration) (killed bool) {
	select {
	case <-exited:
		return false
	default:
	}
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return false
	case <-time.After(grace):
	}
	_ = p.Kill()
	<-exited
	return true
}
