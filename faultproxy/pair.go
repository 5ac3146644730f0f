package faultproxy

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// pair is one proxied connection: the client's socket, accepted by the Proxy,
// and the server's, dialled by it.
type pair struct {
	client *net.TCPConn
	done   chan struct{} // closed when the pair is torn down

	// blackholeClient is set by a forwarding CutOn: whatever the server sends
	// from then on is discarded.
	blackholeClient atomic.Bool
	// resetAtEnd is set by a forwarding CutOn: it resets the client if the
	// server has not ended its connection by then; serve resets the client
	// when it has. Used by the pair's serve goroutine only.
	resetAtEnd *time.Timer

	mu     sync.Mutex
	server *net.TCPConn // nil until dialled; then fixed
	dead   bool
}

// setServer records the dialled server socket. It returns false, and resets
// the socket, if the pair was killed during the dial.
func (pr *pair) setServer(s *net.TCPConn) bool {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.dead {
		closeConn(s, true)
		return false
	}
	pr.server = s
	return true
}

// kill tears the pair down once: it closes both sockets, with a reset if
// reset is true, which also unblocks every goroutine reading them or waiting
// on done.
func (pr *pair) kill(reset bool) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.dead {
		return
	}
	pr.dead = true
	close(pr.done)
	closeConn(pr.client, reset)
	if pr.server != nil {
		closeConn(pr.server, reset)
	}
}

// closeBoth closes a pair whose directions have both ended.
func (pr *pair) closeBoth() { pr.kill(false) }

// resetClient resets the client's socket only.
func (pr *pair) resetClient() { closeConn(pr.client, true) }

// closeConn closes c; with reset, SO_LINGER 0 makes the kernel send RST
// instead of FIN and drop unsent data.
func closeConn(c *net.TCPConn, reset bool) {
	if reset {
		_ = c.SetLinger(0)
	}
	_ = c.Close()
}
