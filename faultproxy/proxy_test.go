package faultproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// echoServer echoes every byte back and records what it received.
type echoServer struct {
	ln net.Listener
	wg sync.WaitGroup

	mu    sync.Mutex
	got   bytes.Buffer
	conns int // accepted
	ended int // connections whose handler has returned
	open  map[net.Conn]struct{}
}

// newEcho starts an echo server on 127.0.0.1, closed at the end of the test.
func newEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{ln: ln, open: make(map[net.Conn]struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns++
			s.open[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go s.serve(c)
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *echoServer) serve(c net.Conn) {
	defer s.wg.Done()
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			s.mu.Lock()
			s.got.Write(buf[:n])
			s.mu.Unlock()
			if _, err := c.Write(buf[:n]); err != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	c.Close()
	s.mu.Lock()
	s.ended++
	delete(s.open, c)
	s.mu.Unlock()
}

func (s *echoServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *echoServer) addr() string { return s.ln.Addr().String() }

func (s *echoServer) stats() (got string, conns, ended int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got.String(), s.conns, s.ended
}

// checkGoroutines fails the test if it leaves more goroutines than it found.
// Call it first, so its cleanup runs after every other.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		waitFor(t, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= before })
	})
}

// waitFor polls cond for up to 2 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("timed out waiting for %s; goroutines:\n%s", what, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// roundTrip sends msg and expects it echoed within a second.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	expectRead(t, c, msg, time.Second)
}

func expectRead(t *testing.T, c net.Conn, want string, timeout time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read %q: %v", want, err)
	}
	if string(got) != want {
		t.Fatalf("read %q, want %q", got, want)
	}
}

// expectReset reads from c and expects the connection reset, without data.
func expectReset(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(time.Second))
	n, err := c.Read(make([]byte, 64))
	if n != 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read = %d, %v; want 0, ECONNRESET", n, err)
	}
}

// expectSilence expects no byte from c for 200 ms.
func expectSilence(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	defer c.SetReadDeadline(time.Time{})
	n, err := c.Read(make([]byte, 64))
	if n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read = %d, %v; want a timeout", n, err)
	}
}

func TestForward(t *testing.T) {
	checkGoroutines(t)
	echo := newEcho(t)
	p := NewT(t, echo.addr())
	if p.Host() != "127.0.0.1" || p.Addr() != net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port())) {
		t.Errorf("Host, Port, Addr = %q, %d, %q", p.Host(), p.Port(), p.Addr())
	}

	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	roundTrip(t, a, "hello")
	roundTrip(t, b, "world")

	// A payload larger than every buffer on the way, written while read.
	big := strings.Repeat("0123456789abcdef", 1<<16)
	errc := make(chan error, 1)
	go func() { _, err := a.Write([]byte(big)); errc <- err }()
	expectRead(t, a, big, 5*time.Second)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	if got := p.Accepted(); got != 2 {
		t.Errorf("Accepted() = %d, want 2", got)
	}
	if got := p.Live(); got != 2 {
		t.Errorf("Live() = %d, want 2", got)
	}

	// A half-close travels through: the echo server sees EOF and closes, and
	// so the client reads EOF.
	if err := b.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := b.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read after half-close = %d, %v; want EOF", n, err)
	}
	a.Close()
	waitFor(t, "Live() == 0", func() bool { return p.Live() == 0 })
	if got, _, _ := echo.stats(); got != "hello"+"world"+big {
		t.Errorf("server received %d bytes, want %d", len(got), len("helloworld"+big))
	}
}

func TestCut(t *testing.T) {
	checkGoroutines(t)
	echo := newEcho(t)
	p := NewT(t, echo.addr())
	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	roundTrip(t, a, "one")
	roundTrip(t, b, "two")

	p.Cut()
	if got := p.Live(); got != 0 {
		t.Errorf("Live() after Cut = %d, want 0", got)
	}
	expectReset(t, a)
	if _, err := b.Write([]byte("x")); err == nil {
		// The first write after a reset may still succeed locally; the
		// read reports the reset either way.
		expectReset(t, b)
	} else if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("write after Cut: %v; want ECONNRESET or EPIPE", err)
	}
	// The server side was reset too.
	waitFor(t, "server connections to end", func() bool { _, _, ended := echo.stats(); return ended == 2 })

	c := dial(t, p.Addr())
	roundTrip(t, c, "three")
}

func TestFreezeThaw(t *testing.T) {
	checkGoroutines(t)
	echo := newEcho(t)
	p := NewT(t, echo.addr())
	a := dial(t, p.Addr())
	roundTrip(t, a, "before")

	p.Freeze()
	p.Freeze() // idempotent
	if _, err := a.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	expectSilence(t, a)

	// A new connection: the client's connect succeeds, nothing reaches the
	// server.
	b := dial(t, p.Addr())
	if _, err := b.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	expectSilence(t, b)
	if got, conns, _ := echo.stats(); conns != 1 || got != "before" {
		t.Fatalf("server got %q on %d connections while frozen, want %q on 1", got, conns, "before")
	}
	waitFor(t, "Accepted() == 2", func() bool { return p.Accepted() == 2 })

	p.Thaw()
	p.Thaw() // idempotent
	expectRead(t, a, "held", time.Second)
	expectRead(t, b, "late", time.Second)
	roundTrip(t, a, "after")
}

func TestFreezeThenCutOrClose(t *testing.T) {
	checkGoroutines(t)
	echo := newEcho(t)
	p, err := New(echo.addr())
	if err != nil {
		t.Fatal(err)
	}
	a := dial(t, p.Addr())
	roundTrip(t, a, "x")
	p.Freeze()
	if _, err := a.Write([]byte("stuck")); err != nil {
		t.Fatal(err)
	}
	p.Cut()
	expectReset(t, a)

	// Close must not wait for a Thaw, neither for an established connection
	// nor for one waiting to be dialled.
	b := dial(t, p.Addr())
	if _, err := b.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Live() == 1", func() bool { return p.Live() == 1 })
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close blocked on a frozen proxy")
	}
	expectReset(t, b)
}

func TestRefuse(t *testing.T) {
	checkGoroutines(t)
	echo := newEcho(t)
	p := NewT(t, echo.addr())
	addr := p.Addr()
	a := dial(t, addr)
	roundTrip(t, a, "x")

	for range 2 { // idempotent
		if err := p.Refuse(true); err != nil {
			t.Fatal(err)
		}
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial while refusing: %v; want connection refused", err)
	}
	roundTrip(t, a, "existing connections still work")

	for range 2 {
		if err := p.Refuse(false); err != nil {
			t.Fatal(err)
		}
	}
	if p.Addr() != addr {
		t.Fatalf("Addr() = %q after Refuse(false), want %q", p.Addr(), addr)
	}
	roundTrip(t, dial(t, addr), "y")
	if got := p.Accepted(); got != 2 {
		t.Errorf("Accepted() = %d, want 2", got)
	}
}

func TestCutOn(t *testing.T) {
	tests := []struct {
		name    string
		forward bool
	}{
		{"forward: the server gets the statement", true},
		{"no forward: nothing reaches the server", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkGoroutines(t)
			echo := newEcho(t)
			p := NewT(t, echo.addr())
			if p.Armed() {
				t.Fatal("Armed() = true before CutOn")
			}
			p.CutOn([]byte("DROP"), tt.forward)
			if !p.Armed() {
				t.Fatal("Armed() = false after CutOn")
			}
			a := dial(t, p.Addr())
			roundTrip(t, a, "select 1;")

			if _, err := a.Write([]byte("DROP TABLE t;")); err != nil {
				t.Fatal(err)
			}
			expectReset(t, a)
			if p.Armed() {
				t.Error("Armed() = true after the trigger fired")
			}
			// Once the server's connection has ended, it has all it will
			// ever get.
			waitFor(t, "the server connection to end", func() bool { _, _, ended := echo.stats(); return ended == 1 })
			got, _, _ := echo.stats()
			want := "select 1;"
			if tt.forward {
				want += "DROP TABLE t;"
			}
			if got != want {
				t.Errorf("server received %q, want %q", got, want)
			}
			waitFor(t, "Live() == 0", func() bool { return p.Live() == 0 })

			// One-shot: the next match passes.
			roundTrip(t, dial(t, p.Addr()), "DROP again")
		})
	}
}

// TestCutOnForwardResetAfterServer: a forwarding CutOn resets the client
// only once the server has ended its connection, so that nothing the
// client does on seeing the reset (pgx sends a cancel request) can reach the
// server while it still runs the statement.
func TestCutOnForwardResetAfterServer(t *testing.T) {
	checkGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const runs = 300 * time.Millisecond
	ended := make(chan time.Time, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.ReadAll(c) // the statement, then the proxy's half-close
		time.Sleep(runs)     // "runs" it
		ended <- time.Now()
	}()
	p := NewT(t, ln.Addr().String())
	p.CutOn([]byte("COMMIT"), true)
	a := dial(t, p.Addr())
	if _, err := a.Write([]byte("COMMIT;")); err != nil {
		t.Fatal(err)
	}
	expectSilence(t, a) // 200 ms: the server still runs it
	a.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := a.Read(make([]byte, 64))
	reset := time.Now()
	if n != 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read = %d, %v; want 0, ECONNRESET", n, err)
	}
	select {
	case at := <-ended:
		if reset.Before(at) {
			t.Errorf("the client was reset %v before the server ended", at.Sub(reset))
		}
	case <-time.After(time.Second):
		t.Fatal("the server never ended")
	}
	waitFor(t, "Live() == 0", func() bool { return p.Live() == 0 })
}

func TestCutOnDisarm(t *testing.T) {
	checkGoroutines(t)
	echo := newEcho(t)
	p := NewT(t, echo.addr())
	p.CutOn([]byte("x"), false)
	p.CutOn(nil, false)
	if p.Armed() {
		t.Fatal("Armed() = true after CutOn(nil)")
	}
	roundTrip(t, dial(t, p.Addr()), "xxx")
}

func TestTargetDown(t *testing.T) {
	checkGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close()
	p := NewT(t, target)
	// The proxy accepts, fails to dial and resets the client, often before
	// the client's connect has returned: then the dial itself reports it.
	a, err := net.DialTimeout("tcp", p.Addr(), time.Second)
	if err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("dial: %v; want ECONNRESET", err)
		}
	} else {
		defer a.Close()
		expectReset(t, a)
	}
	waitFor(t, "Live() == 0", func() bool { return p.Live() == 0 })
}

func TestNew(t *testing.T) {
	tests := []struct {
		target  string
		wantErr error // nil: accepted; errAny: any error
	}{
		{"127.0.0.1:5432", nil},
		{"127.1.2.3:1", nil},
		{"[::1]:5432", nil},
		{"[::ffff:127.0.0.1]:5432", nil},
		{"localhost:5432", nil},
		{"10.0.0.1:5432", ErrNotLoopback},
		{"192.168.1.10:5432", ErrNotLoopback},
		{"8.8.8.8:53", ErrNotLoopback},
		{"0.0.0.0:5432", ErrNotLoopback},
		{"[::]:5432", ErrNotLoopback},
		{"[::ffff:10.0.0.1]:5432", ErrNotLoopback},
		{"[fe80::1%lo]:5432", ErrNotLoopback},
		{"example.com:5432", ErrNotLoopback},
		{":5432", ErrNotLoopback},
		{"127.0.0.1", errAny},
		{"127.0.0.1:0", errAny},
		{"127.0.0.1:postgres", errAny},
		{"127.0.0.1:70000", errAny},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			checkGoroutines(t)
			p, err := New(tt.target)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("New(%q): %v", tt.target, err)
			case tt.wantErr == nil:
				if err := p.Close(); err != nil {
					t.Fatal(err)
				}
			case err == nil:
				p.Close()
				t.Fatalf("New(%q) succeeded, want an error", tt.target)
			case tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
				t.Fatalf("New(%q): %v; want %v", tt.target, err, tt.wantErr)
			}
		})
	}
}

var errAny = errors.New("any error")

func TestClose(t *testing.T) {
	checkGoroutines(t)
	echo := newEcho(t)
	p, err := New(echo.addr())
	if err != nil {
		t.Fatal(err)
	}
	a := dial(t, p.Addr())
	roundTrip(t, a, "x")
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	expectReset(t, a)
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := p.Refuse(false); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Refuse after Close: %v; want net.ErrClosed", err)
	}
	if c, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c.Close()
		t.Error("dial after Close succeeded")
	}
	p.Cut() // harmless
	if p.Live() != 0 {
		t.Errorf("Live() = %d after Close", p.Live())
	}
}

// TestCutOnMatch checks what CutOn's match matches: ASCII letters in either
// case, every other byte exactly.
func TestCutOnMatch(t *testing.T) {
	tests := []struct {
		name       string
		match, msg string
		fire       bool
	}{
		{"same case", "commit", "commit", true},
		{"upper case match, lower case statement (pgx's commit)", "COMMIT", "Q\x00\x00\x00\x0bcommit\x00", true},
		{"lower case match, upper case statement", "insert into t", "INSERT INTO T VALUES (1)", true},
		{"mixed case", "CoMmIt", "cOmMiT", true},
		{"inside binary data", "ab", "\x00\x01AB\xff", true},
		{"a different word", "commit", "rollback", false},
		{"bytes other than letters exactly: [ is not {", "[", "{", false},
		{"@ is not `", "@", "`", false},
		{"no Unicode folding: É is not é", "\u00c9", "\u00e9", false},
		{"no Unicode folding: K is not the Kelvin sign", "k", "\u212a", false},
		{"a NUL between the letters", "ab", "a\x00b", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkGoroutines(t)
			echo := newEcho(t)
			p := NewT(t, echo.addr())
			a := dial(t, p.Addr())
			roundTrip(t, a, "hello")
			p.CutOn([]byte(tt.match), false)
			if tt.fire {
				if _, err := a.Write([]byte(tt.msg)); err != nil {
					t.Fatal(err)
				}
				expectReset(t, a)
				if p.Armed() || p.Fired() != 1 {
					t.Fatalf("Armed() = %v, Fired() = %d after %q; want false, 1", p.Armed(), p.Fired(), tt.msg)
				}
				return
			}
			roundTrip(t, a, tt.msg)
			if !p.Armed() || p.Fired() != 0 {
				t.Fatalf("Armed() = %v, Fired() = %d after %q; want true, 0", p.Armed(), p.Fired(), tt.msg)
			}
			p.CutOn(nil, false)
		})
	}
}

// TestCutOnSplitRead sends the match in two writes that the proxy reads
// separately: the chunk that completes it fires the trigger.
func TestCutOnSplitRead(t *testing.T) {
	checkGoroutines(t)
	echo := newEcho(t)
	p := NewT(t, echo.addr())
	a := dial(t, p.Addr())
	p.CutOn([]byte("commit"), true)
	roundTrip(t, a, "select 1; com") // read, forwarded and echoed: a read of its own
	if _, err := a.Write([]byte("mit;")); err != nil {
		t.Fatal(err)
	}
	expectReset(t, a)
	if p.Fired() != 1 {
		t.Fatalf("Fired() = %d, want 1", p.Fired())
	}
	waitFor(t, "the server connection to end", func() bool { _, _, ended := echo.stats(); return ended == 1 })
	if got, _, _ := echo.stats(); got != "select 1; commit;" {
		t.Errorf("server received %q, want the whole statement", got)
	}
}

// TestCutOnNotOnEarlierBytes: bytes that passed before CutOn was armed do not
// fire it, even when a later read completes nothing.
func TestCutOnNotOnEarlierBytes(t *testing.T) {
	checkGoroutines(t)
	echo := newEcho(t)
	p := NewT(t, echo.addr())
	a := dial(t, p.Addr())
	roundTrip(t, a, "commit")
	p.CutOn([]byte("commit"), false)
	roundTrip(t, a, "x")
	roundTrip(t, a, "mit") // "commit" + "x" + "mit": no match ends in a read since
	if !p.Armed() {
		t.Fatal("the trigger fired on bytes sent before it was armed")
	}
	p.CutOn([]byte("it"), false) // re-armed between "i" and "t"
	roundTrip(t, a, "ti")
	p.CutOn([]byte("it"), false)
	roundTrip(t, a, "t")
	if !p.Armed() {
		t.Fatal("a trigger armed again fired on bytes sent before")
	}
	p.CutOn(nil, false)
}

// tbRecorder is a testing.TB that records what NewT reports, and runs its
// cleanups on demand.
type tbRecorder struct {
	testing.TB
	mu       sync.Mutex
	errs     []string
	cleanups []func()
}

func (r *tbRecorder) Helper() {}

func (r *tbRecorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *tbRecorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }

// end runs the cleanups, last first, as the testing package does, and
// returns what they reported.
func (r *tbRecorder) end() []string {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.errs
}

// TestNewTUnfiredTrigger: a proxy from NewT fails the test whose CutOn trigger
// is still armed at the end, naming the match and where it was armed; one
// that fired or was disarmed passes.
func TestNewTUnfiredTrigger(t *testing.T) {
	tests := []struct {
		name    string
		fault   func(t *testing.T, p *Proxy, c net.Conn)
		wantErr bool
	}{
		{"never fired", func(t *testing.T, p *Proxy, c net.Conn) {
			p.CutOn([]byte("COMMIT;"), true)
			roundTrip(t, c, "commit") // no ';'
		}, true},
		{"fired", func(t *testing.T, p *Proxy, c net.Conn) {
			p.CutOn([]byte("COMMIT"), true)
			if _, err := c.Write([]byte("commit")); err != nil {
				t.Fatal(err)
			}
			expectReset(t, c)
		}, false},
		{"disarmed", func(_ *testing.T, p *Proxy, _ net.Conn) {
			p.CutOn([]byte("COMMIT"), true)
			p.CutOn(nil, false)
		}, false},
		{"never armed", func(*testing.T, *Proxy, net.Conn) {}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkGoroutines(t)
			echo := newEcho(t)
			rec := &tbRecorder{TB: t}
			p := NewT(rec, echo.addr())
			c := dial(t, p.Addr())
			tt.fault(t, p, c)
			errs := rec.end()
			if !tt.wantErr {
				if len(errs) != 0 {
					t.Fatalf("NewT reported %q", errs)
				}
				return
			}
			if len(errs) != 1 {
				t.Fatalf("NewT reported %q; want one error", errs)
			}
			for _, want := range []string{`"COMMIT;"`, "never fired", "proxy_test.go:"} {
				if !strings.Contains(errs[0], want) {
					t.Errorf("NewT's error %q does not mention %q", errs[0], want)
				}
			}
			t.Logf("NewT: %s", errs[0])
		})
	}
}
