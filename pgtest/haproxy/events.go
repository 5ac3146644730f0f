package haproxy

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// Event is a message HAProxy logged about its servers, such as "Server
// pg/node2 is UP, reason: Layer7 check passed, code: 200, ...", with the
// moment it reached the Proxy. HAProxy logs a server's change of state as it
// makes it, and the Proxy reads the log from a pipe as it comes: Time is
// within a fraction of a millisecond of the moment HAProxy started (or
// stopped) routing to the server.
type Event struct {
	Time    time.Time
	Server  string // the server's name; "" for a message about no server in particular
	Up      bool   // for a server's event: it is now UP (else DOWN)
	Message string // HAProxy's log line
}

// stateRE matches HAProxy's messages on a server's health: "Server pg/node1
// is UP, ..." or "... is DOWN, ...". Going into or out of maintenance is
// not something this package does.
var stateRE = regexp.MustCompile(`^Server ` + backendName + `/(\S+) is (UP|DOWN)\b`)

// events is the Proxy's record of HAProxy's messages and, from them, which
// servers HAProxy deems UP: the state in which HAProxy starts (every server
// UP until its first check) changed by each message.
type events struct {
	mu      sync.Mutex
	start   time.Time // when haproxy was started
	log     []Event
	up      map[string]bool
	sole    string    // the only server UP, or ""
	soleAt  time.Time // since when
	changed chan struct{}
	ended   bool // haproxy exited
}

func (e *events) reset(servers []Server) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.start = time.Now()
	e.sole, e.soleAt = "", time.Time{}
	e.log = nil
	e.up = make(map[string]bool, len(servers))
	for _, s := range servers {
		e.up[s.Name] = true
	}
	e.ended = false
	e.changed = make(chan struct{})
	e.updateSole(e.start)
}

// updateSole recomputes sole, e.mu held.
func (e *events) updateSole(at time.Time) {
	sole := ""
	if up := e.upList(); len(up) == 1 {
		sole = up[0]
	}
	if sole != e.sole {
		e.sole, e.soleAt = sole, at
	}
}

// upList names the servers deemed UP, sorted, e.mu held.
func (e *events) upList() []string {
	var up []string
	for name, ok := range e.up {
		if ok {
			up = append(up, name)
		}
	}
	slices.Sort(up)
	return up
}

// add records one line HAProxy logged at t.
func (e *events) add(t time.Time, line string) {
	line = strings.TrimSpace(line)
	if line == "" {
		return
	}
	ev := Event{Time: t, Message: line}
	if m := stateRE.FindStringSubmatch(line); m != nil {
		ev.Server, ev.Up = m[1], m[2] == "UP"
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.log = append(e.log, ev)
	if ev.Server != "" {
		if _, ok := e.up[ev.Server]; ok {
			e.up[ev.Server] = ev.Up
			e.updateSole(t)
		}
	}
	e.broadcast()
}

func (e *events) end() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ended = true
	e.broadcast()
}

// broadcast wakes every waiter, e.mu held.
func (e *events) broadcast() {
	close(e.changed)
	e.changed = make(chan struct{})
}

// Events returns every message HAProxy logged about its servers since it
// started, oldest first.
func (p *Proxy) Events() []Event {
	p.ev.mu.Lock()
	defer p.ev.mu.Unlock()
	return slices.Clone(p.ev.log)
}

// Routed reports the server HAProxy routes every new connection to, and
// since when: the only one it deems UP. It is "" while HAProxy deems none UP
// (new connections are then accepted and closed), or several (it balances
// among them round-robin). Since is the time of the Event that made it so,
// or the moment HAProxy started when it has been the only one UP all along.
func (p *Proxy) Routed() (server string, since time.Time) {
	p.ev.mu.Lock()
	defer p.ev.mu.Unlock()
	return p.ev.sole, p.ev.soleAt
}

// WaitRouted waits until HAProxy routes every new connection to server
// (see Routed), and returns the moment it began to: the time of the Event
// that made server the only one UP, which may precede the call. This is the
// moment after which a client's failure to reach the server is no longer
// the proxy's doing. It fails when ctx ends first, when server is unknown,
// and when HAProxy has exited.
func (p *Proxy) WaitRouted(ctx context.Context, server string) (time.Time, error) {
	for {
		p.ev.mu.Lock()
		sole, at, ended, changed := p.ev.sole, p.ev.soleAt, p.ev.ended, p.ev.changed
		_, known := p.ev.up[server]
		up := p.ev.upList()
		p.ev.mu.Unlock()
		switch {
		case !known:
			return time.Time{}, fmt.Errorf("pgtest/haproxy: no server %q", server)
		case sole == server:
			return at, nil
		case ended:
			return time.Time{}, errors.New("pgtest/haproxy: haproxy exited")
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("pgtest/haproxy: waiting for %s alone to be UP (UP: %v): %w", server, up, ctx.Err())
		case <-changed:
		}
	}
}
