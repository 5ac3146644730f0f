// Package faultproxy is an in-process TCP proxy for tests that injects the
// network failures a database client meets: connections reset (Cut, CutOn),
// traffic blackholed (Freeze), and a server that refuses connections
// (Refuse).
//
// It only ever forwards to a loopback address, and listens on 127.0.0.1.
package faultproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ErrNotLoopback is matched by New's error for a target that is not a
// loopback address.
var ErrNotLoopback = errors.New("faultproxy: target is not a loopback address")

const (
	listenHost  = "127.0.0.1"
	dialTimeout = 5 * time.Second
	// cutResetWait bounds how long a forwarding CutOn waits for the server
	// to end before it resets the client.
	cutResetWait = 5 * time.Second
	bufSize      = 32 << 10
)

// Proxy forwards every TCP connection accepted on its address to one target
// address, and injects faults on demand. Its methods are safe for concurrent
// use.
type Proxy struct {
	target string // host:port with a loopback IP
	addr   string // 127.0.0.1:port, the same for the Proxy's life

	ctx    context.Context // cancelled by Close; bounds dials
	cancel context.CancelFunc

	accepted atomic.Int64
	fired    atomic.Int64 // CutOn triggers fired

	mu      sync.Mutex
	ln      net.Listener // nil while refusing or closed
	conns   map[*pair]struct{}
	frozen  bool
	thawed  chan struct{} // closed by Thaw; replaced by Freeze
	trigger *trigger      // armed by CutOn
	closed  bool

	wg sync.WaitGroup // every goroutine the Proxy starts
}

// trigger is a one-shot CutOn.
type trigger struct {
	match   []byte
	forward bool
	armedAt string // file:line of the CutOn call, for NewT's report
}

// New returns a Proxy listening on 127.0.0.1 at a free port, forwarding every
// connection to target, a "host:port" whose host is a loopback IP address
// (127.0.0.0/8, ::1) or "localhost". Any other target is refused with an
// error matching ErrNotLoopback: the proxy is a test tool and must never reach
// another machine. The target need not be listening yet.
func New(target string) (*Proxy, error) {
	resolved, err := loopbackTarget(target)
	if err != nil {
		return nil, err
	}
	ln, err := listen(resolved)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target: resolved,
		addr:   ln.Addr().String(),
		ctx:    ctx,
		cancel: cancel,
		ln:     ln,
		conns:  make(map[*pair]struct{}),
	}
	p.wg.Add(1)
	go p.acceptLoop(ln)
	return p, nil
}

// listen listens on a free 127.0.0.1 port other than target's: a port freed a
// moment ago (by a stopped test server) can be handed out again, and a proxy
// forwarding to itself would loop.
func listen(target string) (net.Listener, error) {
	for range 3 {
		ln, err := net.Listen("tcp", net.JoinHostPort(listenHost, "0"))
		if err != nil {
			return nil, fmt.Errorf("faultproxy: %w", err)
		}
		if ln.Addr().String() != target {
			return ln, nil
		}
		defer ln.Close() // keep it taken until we have another
	}
	return nil, fmt.Errorf("faultproxy: no free port other than the target's")
}

// loopbackTarget checks target and returns it with its host resolved to a
// loopback IP.
func loopbackTarget(target string) (string, error) {
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return "", fmt.Errorf("faultproxy: target %q: %w", target, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("faultproxy: target %q: invalid port", target)
	}
	var ip netip.Addr
	if host == "localhost" {
		// Resolve, and insist every answer is loopback: "localhost" can be
		// configured to mean anything.
		ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
		defer cancel()
		addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return "", fmt.Errorf("faultproxy: target %q: %w", target, err)
		}
		for _, a := range addrs {
			if !a.Unmap().IsLoopback() {
				return "", fmt.Errorf("%w: %q resolves to %s", ErrNotLoopback, target, a)
			}
		}
		if len(addrs) == 0 {
			return "", fmt.Errorf("faultproxy: target %q: no address", target)
		}
		ip = addrs[0].Unmap()
	} else {
		ip, err = netip.ParseAddr(host)
		if err != nil {
			return "", fmt.Errorf("%w: %q (want a loopback IP or localhost)", ErrNotLoopback, target)
		}
		ip = ip.Unmap()
		if !ip.IsLoopback() || ip.Zone() != "" {
			return "", fmt.Errorf("%w: %q", ErrNotLoopback, target)
		}
	}
	return net.JoinHostPort(ip.String(), port), nil
}

// Addr returns the address clients dial: "127.0.0.1:PORT".
func (p *Proxy) Addr() string { return p.addr }

// Host returns "127.0.0.1".
func (p *Proxy) Host() string { return listenHost }

// Port returns the port clients dial. It stays the same across Refuse.
func (p *Proxy) Port() int {
	_, port, _ := net.SplitHostPort(p.addr)
	n, _ := strconv.Atoi(port)
	return n
}

// Target returns the address connections are forwarded to, with "localhost"
// resolved.
func (p *Proxy) Target() string { return p.target }

// Accepted returns how many connections the Proxy has accepted since New.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Live returns how many accepted connections are still open on the client
// side, counting those waiting for a Thaw or for the target to answer.
func (p *Proxy) Live() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Cut resets every open connection now: both of its sockets are closed with
// SO_LINGER 0, so the client's next read or write fails with ECONNRESET (or
// EPIPE) and the server sees a reset too. Connections made later work as
// before.
func (p *Proxy) Cut() {
	for _, pr := range p.takeAll() {
		pr.kill(true)
	}
}

// Freeze blackholes traffic like a network that silently drops packets: the
// sockets stay open and no byte passes in either direction. Bytes the Proxy
// reads meanwhile are held, not dropped, and delivered by Thaw; once its
// buffers are full the senders' kernel buffers fill up. A chunk already being
// written when Freeze is called may still get through. New connections are
// accepted (the client's connect succeeds) but the target is not dialled until
// Thaw. Cut, CutOn's reset and Close still work on frozen connections.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.frozen {
		p.frozen = true
		p.thawed = make(chan struct{})
	}
}

// Thaw ends a Freeze: held bytes are delivered and traffic flows again.
func (p *Proxy) Thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen {
		p.frozen = false
		close(p.thawed)
	}
}

// Refuse(true) closes the listening socket, so new connections are refused
// ("connection refused") as by a stopped server; connections already open are
// untouched. Refuse(false) listens again on the same port. The error reports
// a failure to listen again, for instance because another process took the
// port meanwhile, or a call after Close.
func (p *Proxy) Refuse(on bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return net.ErrClosed
	}
	if on {
		if p.ln != nil {
			err := p.ln.Close()
			p.ln = nil
			if err != nil {
				return fmt.Errorf("faultproxy: %w", err)
			}
		}
		return nil
	}
	if p.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("faultproxy: listening again on %s: %w", p.addr, err)
	}
	p.ln = ln
	p.wg.Add(1)
	go p.acceptLoop(ln)
	return nil
}

// CutOn arms a one-shot trigger on the bytes clients send, replacing any armed
// one. The first read from a client that completes a match fires it, on that
// connection only:
//
//   - forward true: the chunk read is sent to the server and the server side
//     is half-closed: the server handles the chunk, then sees EOF; its replies
//     are discarded. The client side is reset once the server has ended its
//     connection (at the latest 5 s after the trigger fired), so the
//     statement runs to its end even though the client, seeing the reset, may
//     send a cancel request (pgx does as it closes a broken connection). "The
//     statement reached the server and ran; the client does not know the
//     outcome." A statement that blocks on the server blocks the client with
//     it, for up to those 5 s. What the server does with the chunk depends on the
//     protocol: PostgreSQL runs a simple-protocol Query message (pgx sends one
//     for an Exec without arguments, and for a transaction's begin, commit and
//     rollback), but a lone Parse, as pgx's statement cache sends before the
//     Bind and Execute, runs nothing.
//   - forward false: both sides are reset without the chunk being sent.
//     "Nothing reached the server" (unless the match began in an earlier
//     read, which was sent).
//
// Matching is ASCII case-insensitive, because SQL is and drivers differ:
// CutOn([]byte("COMMIT"), ...) fires on pgx's "commit". Only the letters A-Z
// and a-z fold; every other byte, non-ASCII UTF-8 and binary data included,
// must be equal, so there is no Unicode folding (É does not match é), and a
// match on binary protocol data fires where the bytes are equal or differ
// only in the case of ASCII letters. A match may span reads: only bytes read
// after CutOn count. To cut one statement among similar ones, match text only
// it contains, such as a marker comment (/* cut here */).
//
// A trigger that never fires is a test that injected no fault: check Fired
// or Armed after the statement, or use NewT, which fails the test when a
// trigger is still armed at its end. A nil or empty match disarms the
// trigger.
func (p *Proxy) CutOn(match []byte, forward bool) {
	armedAt := "?"
	if _, file, line, ok := runtime.Caller(1); ok {
		armedAt = filepath.Base(file) + ":" + strconv.Itoa(line)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(match) == 0 {
		p.trigger = nil
		return
	}
	p.trigger = &trigger{match: bytes.Clone(match), forward: forward, armedAt: armedAt}
}

// Armed reports whether a CutOn trigger is armed and has not fired yet.
func (p *Proxy) Armed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.trigger != nil
}

// Fired returns how many CutOn triggers have fired since New.
func (p *Proxy) Fired() int64 { return p.fired.Load() }

// Close stops listening, resets every connection and returns once all the
// Proxy's goroutines have exited. Calls after the first return nil.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var err error
	if p.ln != nil {
		err = p.ln.Close()
		p.ln = nil
	}
	p.mu.Unlock()
	p.cancel()
	p.Cut()
	p.wg.Wait()
	if err != nil {
		return fmt.Errorf("faultproxy: %w", err)
	}
	return nil
}

// takeAll removes every connection from the table and returns them.
func (p *Proxy) takeAll() []*pair {
	p.mu.Lock()
	defer p.mu.Unlock()
	prs := make([]*pair, 0, len(p.conns))
	for pr := range p.conns {
		prs = append(prs, pr)
	}
	clear(p.conns)
	return prs
}

func (p *Proxy) remove(pr *pair) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, pr)
}

// acceptLoop serves one listener until it is closed.
func (p *Proxy) acceptLoop(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors or the like: back off briefly.
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		p.accepted.Add(1)
		pr := &pair{client: c.(*net.TCPConn), done: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			pr.kill(true)
			return
		}
		p.conns[pr] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(pr)
	}
}

// serve dials the target for one accepted connection and copies both ways
// until both directions have ended or the pair is killed.
func (p *Proxy) serve(pr *pair) {
	defer p.wg.Done()
	defer p.remove(pr)
	if !p.waitThawed(pr) {
		return
	}
	var d net.Dialer
	ctx, cancel := context.WithTimeout(p.ctx, dialTimeout)
	srv, err := d.DialContext(ctx, "tcp", p.target)
	cancel()
	if err != nil {
		// Like a server that accepted and died: the client sees a reset.
		pr.kill(true)
		return
	}
	if !pr.setServer(srv.(*net.TCPConn)) {
		return
	}
	toClient := make(chan struct{})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(toClient)
		p.copyToClient(pr)
	}()
	p.copyToServer(pr)
	<-toClient
	if pr.resetAtEnd != nil {
		pr.resetAtEnd.Stop()
		pr.kill(true)
		return
	}
	pr.closeBoth()
}

// waitThawed blocks while the Proxy is frozen. It returns false if pr was
// killed meanwhile.
func (p *Proxy) waitThawed(pr *pair) bool {
	p.mu.Lock()
	frozen, thawed := p.frozen, p.thawed
	p.mu.Unlock()
	if !frozen {
		return true
	}
	select {
	case <-thawed:
		return true
	case <-pr.done:
		return false
	}
}

// fire returns the armed trigger if it matches chunk, disarming it. tail
// holds what fire needs of the bytes read before chunk on the same
// connection, and fire keeps it up to date.
func (p *Proxy) fire(tail *readTail, chunk []byte) *trigger {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.trigger
	if t != tail.trigger {
		// Bytes read before this trigger was armed do not count.
		tail.trigger, tail.b = t, tail.b[:0]
	}
	if t == nil {
		return nil
	}
	// tail.b holds at most len(match)-1 bytes, so that a match found in
	// tail.b+chunk always ends in chunk.
	keep := len(t.match) - 1
	hit := containsFold(chunk, t.match)
	if !hit && len(tail.b) > 0 {
		// Only a match straddling the boundary is new: look at tail.b
		// and chunk's first keep bytes.
		edge := append(tail.b, chunk[:min(len(chunk), keep)]...)
		hit = containsFold(edge, t.match)
	}
	if !hit {
		tail.b = append(tail.b, chunk[max(0, len(chunk)-keep):]...)
		if len(tail.b) > keep {
			tail.b = append(tail.b[:0], tail.b[len(tail.b)-keep:]...)
		}
		return nil
	}
	p.trigger = nil
	p.fired.Add(1)
	return t
}

// readTail is the end of what a connection's client sent, kept for a match
// that spans reads.
type readTail struct {
	trigger *trigger // the trigger b was kept for
	b       []byte   // the last len(trigger.match)-1 bytes, or fewer
}

// containsFold reports whether match occurs in b, ASCII letters compared
// without regard to case and every other byte exactly.
func containsFold(b, match []byte) bool {
	if len(match) == 0 {
		return true
	}
	first, firstOther := match[0], otherCase(match[0])
	for i := 0; i+len(match) <= len(b); i++ {
		if c := b[i]; c != first && c != firstOther {
			continue
		}
		if equalFold(b[i:i+len(match)], match) {
			return true
		}
	}
	return false
}

// equalFold compares two slices of the same length as containsFold does.
func equalFold(a, b []byte) bool {
	for i := range a {
		if a[i] != b[i] && a[i] != otherCase(b[i]) {
			return false
		}
	}
	return true
}

// otherCase returns an ASCII letter in the other case, and any other byte
// unchanged.
func otherCase(c byte) byte {
	switch {
	case 'a' <= c && c <= 'z':
		return c - ('a' - 'A')
	case 'A' <= c && c <= 'Z':
		return c + ('a' - 'A')
	}
	return c
}

// copyToServer copies client bytes to the server, applying Freeze and CutOn.
// A client EOF half-closes the server side; any error kills the pair.
func (p *Proxy) copyToServer(pr *pair) {
	buf := make([]byte, bufSize)
	var tail readTail // for fire
	for {
		n, err := pr.client.Read(buf)
		if n > 0 {
			if !p.waitThawed(pr) {
				return
			}
			if t := p.fire(&tail, buf[:n]); t != nil {
				p.cut(pr, t, buf[:n])
				return
			}
			if _, werr := pr.server.Write(buf[:n]); werr != nil {
				pr.kill(true)
				return
			}
		}
		if err != nil {
			if isEOF(err) {
				_ = pr.server.CloseWrite()
			} else {
				pr.kill(true)
			}
			return
		}
	}
}

// cut carries out a fired CutOn trigger on pr.
func (p *Proxy) cut(pr *pair, t *trigger, chunk []byte) {
	if !t.forward {
		pr.kill(true)
		return
	}
	// From now on nothing reaches the client: set before the server can
	// have seen the chunk, so no reply to it slips through.
	pr.blackholeClient.Store(true)
	if _, err := pr.server.Write(chunk); err != nil {
		pr.kill(true)
		return
	}
	// The server reads the chunk, then EOF: it runs the statement and closes
	// its side, which ends copyToClient. Only then does serve reset the
	// client: a client whose connection breaks may ask the server to cancel
	// what it sent (pgx v5.12 sends a cancel request as it closes), and a
	// cancel arriving while the statement ran would make "forwarded" mean
	// "maybe run".
	_ = pr.server.CloseWrite()
	pr.resetAtEnd = time.AfterFunc(cutResetWait, pr.resetClient)
}

// copyToClient copies server bytes to the client, applying Freeze. A server
// EOF half-closes the client side; any error kills the pair.
func (p *Proxy) copyToClient(pr *pair) {
	buf := make([]byte, bufSize)
	for {
		n, err := pr.server.Read(buf)
		if n > 0 && !pr.blackholeClient.Load() {
			if !p.waitThawed(pr) {
				return
			}
			if _, werr := pr.client.Write(buf[:n]); werr != nil {
				pr.kill(true)
				return
			}
		}
		if err != nil {
			switch {
			case pr.blackholeClient.Load():
				// The client is gone already; the server has finished.
			case isEOF(err):
				_ = pr.client.CloseWrite()
			default:
				pr.kill(true)
			}
			return
		}
	}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF)
}

// NewT is New for one test: it fails the test if the proxy cannot start,
// and closes the proxy when the test ends (t.Cleanup). Then it also fails the
// test if a CutOn trigger is still armed: no client sent the bytes it
// waited for, so the fault it was meant to inject never happened and the
// test proved nothing. Disarm a trigger that may rightly stay unfired with
// CutOn(nil, false).
func NewT(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("faultproxy: close: %v", err)
		}
		p.mu.Lock()
		tr := p.trigger
		p.mu.Unlock()
		if tr != nil {
			t.Errorf("faultproxy: CutOn(%q, %v) armed at %s never fired: no client sent those bytes through %s "+
				"(the match ignores the case of ASCII letters only); the fault was not injected",
				tr.match, tr.forward, tr.armedAt, p.addr)
		}
	})
	return p
}
