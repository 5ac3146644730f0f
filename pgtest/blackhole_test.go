//go:build linux

package pgtest

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/pgresilient/pgresilient/faultproxy"
)

// unacked returns the number of segments the peer has not acknowledged yet
// (TCP_INFO's tcpi_unacked).
func unacked(t *testing.T, nc net.Conn) uint32 {
	t.Helper()
	rc, err := nc.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info syscall.TCPInfo
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		size := uint32(unsafe.Sizeof(info))
		_, _, errno = syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
	}); err != nil {
		t.Fatal(err)
	}
	if errno != 0 {
		t.Fatal(errno)
	}
	return info.Unacked
}

// waitAcked waits until the peer has acknowledged everything written on nc.
func waitAcked(t *testing.T, nc net.Conn, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for unacked(t, nc) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d segments still unacknowledged after %v", unacked(t, nc), within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// partialStartup is the first 4 bytes of a startup message announcing more:
// the server waits for the rest without answering.
var partialStartup = []byte{0, 0, 0, 100}

func dialRaw(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc.(*net.TCPConn)
}

func TestBlackhole(t *testing.T) {
	b := NewBlackholeableT(t)
	ctx := t.Context()

	for _, ip := range []string{b.Host(), b.client} {
		if a := net.ParseIP(ip); a == nil || !a.IsLinkLocalUnicast() || a.Equal(net.IPv4(169, 254, 169, 254)) {
			t.Fatalf("address %s is not a link-local address other than the metadata one", ip)
		}
	}
	before := connect(t, b.DSN())
	if err := selectOne(ctx, before); err != nil {
		t.Fatal(err)
	}
	if got := before.PgConn().Conn().RemoteAddr().String(); got != b.Addr() {
		t.Fatalf("connected to %s, want %s", got, b.Addr())
	}

	t.Run("writes unacknowledged, no reset, admin path open", func(t *testing.T) {
		nc := dialRaw(t, b.Addr())
		if _, err := nc.Write(partialStartup[:2]); err != nil {
			t.Fatal(err)
		}
		waitAcked(t, nc, 2*time.Second) // the server's kernel answers before the blackhole

		if err := b.Blackhole(); err != nil {
			t.Fatal(err)
		}
		if !b.Blackholed() {
			t.Error("Blackholed() = false after Blackhole")
		}
		if _, err := nc.Write(partialStartup[2:]); err != nil {
			t.Fatal(err)
		}
		// Several retransmissions (200 ms, 600 ms, 1.4 s) go unanswered.
		time.Sleep(1500 * time.Millisecond)
		if n := unacked(t, nc); n == 0 {
			t.Fatal("the write was acknowledged during the blackhole")
		}
		nc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := nc.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("read during the blackhole: %v, want our deadline (no reset, no data)", err)
		}
		if _, err := net.DialTimeout("tcp", b.Addr(), 500*time.Millisecond); !isTimeout(err) {
			t.Errorf("new connection during the blackhole: %v, want a timeout (no answer to SYN)", err)
		}
		qctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		err := selectOne(qctx, before)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("query on a connection opened before: %v, want the context's deadline", err)
		}
		// The Cluster's own path does not cross the veth pair.
		if n, err := QueryValue[int](ctx, b.Cluster, "select 1"); err != nil || n != 1 {
			t.Errorf("admin query during the blackhole = %d, %v", n, err)
		}

		if err := b.Restore(); err != nil {
			t.Fatal(err)
		}
		if b.Blackholed() {
			t.Error("Blackholed() = true after Restore")
		}
		waitAcked(t, nc, 10*time.Second) // the next retransmission gets through
		after := connect(t, b.DSN())
		if err := selectOne(ctx, after); err != nil {
			t.Fatalf("after Restore: %v", err)
		}
	})

	t.Run("keepalive detects the silent peer", func(t *testing.T) {
		nc := dialRaw(t, b.Addr())
		if err := nc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 2}); err != nil {
			t.Fatal(err)
		}
		// A healthy peer answers the probes: the read ends at our deadline.
		nc.SetReadDeadline(time.Now().Add(4 * time.Second))
		if _, err := nc.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("idle read on a healthy path: %v, want our deadline", err)
		}
		if err := b.Blackhole(); err != nil {
			t.Fatal(err)
		}
		defer b.Restore()
		nc.SetReadDeadline(time.Now().Add(20 * time.Second))
		start := time.Now()
		_, err := nc.Read(make([]byte, 1))
		took := time.Since(start)
		// 1 s idle, then 2 probes 1 s apart: about 3 s.
		if !errors.Is(err, syscall.ETIMEDOUT) || took < 2*time.Second || took > 10*time.Second {
			t.Errorf("read during the blackhole ended after %v with %v, want ETIMEDOUT after about 3s", took, err)
		}
	})

	t.Run("faultproxy Freeze acknowledges, unlike the blackhole", func(t *testing.T) {
		p, err := faultproxy.New(b.Cluster.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		nc := dialRaw(t, p.Addr())
		if _, err := nc.Write(partialStartup[:2]); err != nil {
			t.Fatal(err)
		}
		waitAcked(t, nc, 2*time.Second)
		p.Freeze()
		defer p.Thaw()
		if _, err := nc.Write(partialStartup[2:]); err != nil {
			t.Fatal(err)
		}
		waitAcked(t, nc, 2*time.Second)
	})

	t.Run("Restart keeps the server in the namespace", func(t *testing.T) {
		if err := b.Restart(context.Background(), ModeFast); err != nil {
			t.Fatal(err)
		}
		conn := connect(t, b.DSN())
		if err := selectOne(ctx, conn); err != nil {
			t.Fatal(err)
		}
		// Outside the namespace the server would listen on 127.0.0.1
		// (where the Cluster's relay is) and fail to start.
		if _, err := net.DialTimeout("tcp", b.Addr(), time.Second); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Close removes everything", func(t *testing.T) {
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := net.InterfaceByName(b.link); err == nil {
			t.Errorf("interface %s still exists", b.link)
		}
		if _, err := os.Stat(b.Cluster.Dir()); !os.IsNotExist(err) {
			t.Errorf("cluster directory: %v, want it removed", err)
		}
		if err := b.Blackhole(); !errors.Is(err, errClosed) {
			t.Errorf("Blackhole after Close = %v, want errClosed", err)
		}
		if err := b.Close(); err != nil {
			t.Errorf("second Close = %v", err)
		}
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Not root: StartBlackholeable says so, and nothing is created.
func TestBlackholeNotRoot(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("running as root: the other case is TestBlackhole")
	}
	if _, err := StartBlackholeable(t.Context()); !errors.Is(err, ErrNotRoot) {
		t.Fatalf("StartBlackholeable as uid %d: %v, want ErrNotRoot", os.Geteuid(), err)
	}
}
