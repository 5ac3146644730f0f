package proc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// What a test process leaves running when it dies without Close, killed or
// out of time (go test -timeout panics and exits: no deferred call, no
// t.Cleanup runs), is stopped by its watchdog: a copy of the same executable,
// started with watchdogEnv set, whose init runs the watchdog instead of the
// program. It reads, on a pipe from its owner, which directories hold a
// cluster or a Patroni bed, and when the pipe ends, because its owner exited
// however it did, it stops their servers and removes them, at once rather than
// at the next run's reaping. It runs in a session of its own, so a Ctrl-C on
// the terminal or a signal to the test's process group does not reach it.
//
// Processes pgtest starts itself (postgres, pgbouncer, etcd, patroni) are
// also bound to the test process by the kernel where it can (Linux:
// StartBound), so they stop even if the watchdog was killed with it; Patroni's
// own servers, which it detaches, and the directories are the watchdog's
// alone.

// watchdogEnv, set in the environment, makes this package's init run the
// watchdog. Its value is the owner's pid, for ps.
const watchdogEnv = "PGRESILIENT_PGTEST_WATCHDOG"

// Kinds of directory a watchdog reaps.
const (
	KindCluster = "cluster" // a Cluster's: its server (and PgBouncers) stopped, as ReapCluster does
	KindHA      = "ha"      // a Patroni bed's: every process marked with it killed, as ReapHA does
)

// watchdogReapWait bounds the watchdog's reaping of one directory.
const watchdogReapWait = 30 * time.Second

func init() {
	if os.Getenv(watchdogEnv) != "" {
		runWatchdog(os.Stdin)
		os.Exit(0)
	}
}

// dog is this process's watchdog, started by the first Watch.
var dog struct {
	mu      sync.Mutex
	w       *os.File      // the pipe to its standard input; nil until started
	pid     int           // its pid, for tests
	exited  chan struct{} // closed once it has exited
	watched map[string]string
}

// Watch tells the watchdog, starting it if need be, to reap dir (of the given
// kind; binDir holds the server binaries) should this process exit before
// Unwatch(dir).
func Watch(kind, dir, binDir string) error {
	line := watchLine(kind, dir, binDir)
	dog.mu.Lock()
	defer dog.mu.Unlock()
	if dog.watched == nil {
		dog.watched = make(map[string]string)
	}
	dog.watched[dir] = line
	if dog.w != nil {
		select {
		case <-dog.exited:
			// Killed by someone: start another, told about every
			// directory.
			dog.w.Close()
			dog.w = nil
		default:
			if _, err := io.WriteString(dog.w, line); err == nil {
				return nil
			}
			dog.w.Close()
			dog.w = nil
		}
	}
	if err := startWatchdog(); err != nil {
		return err
	}
	for _, l := range dog.watched {
		if _, err := io.WriteString(dog.w, l); err != nil {
			return fmt.Errorf("pgtest: watchdog: %w", err)
		}
	}
	return nil
}

// watchLine is the line Watch writes: one line whatever the paths hold.
func watchLine(kind, dir, binDir string) string {
	return kind + " " + strconv.Quote(dir) + " " + strconv.Quote(binDir) + "\n"
}

// Unwatch tells the watchdog that dir is gone.
func Unwatch(dir string) {
	dog.mu.Lock()
	defer dog.mu.Unlock()
	delete(dog.watched, dir)
	if dog.w != nil {
		_, _ = io.WriteString(dog.w, "- "+strconv.Quote(dir)+"\n")
	}
}

// WatchdogPid returns the pid of the watchdog, or 0 before the first Watch:
// for tests.
func WatchdogPid() int {
	dog.mu.Lock()
	defer dog.mu.Unlock()
	return dog.pid
}

// WatchdogExited returns a channel closed once the watchdog has exited, nil
// before the first Watch: for tests that kill it.
func WatchdogExited() <-chan struct{} {
	dog.mu.Lock()
	defer dog.mu.Unlock()
	return dog.exited
}

// startWatchdog starts a watchdog, dog.mu held.
func startWatchdog() error {
	// Linux's /proc/self/exe runs our executable even if its file has
	// been removed or replaced meanwhile.
	exe := "/proc/self/exe"
	if _, err := os.Stat(exe); err != nil {
		if exe, err = os.Executable(); err != nil {
			return fmt.Errorf("pgtest: watchdog: %w", err)
		}
	}
	r, w, err := os.Pipe() // close-on-exec: no other child holds it open
	if err != nil {
		return fmt.Errorf("pgtest: watchdog: %w", err)
	}
	defer r.Close()
	cmd := exec.Command(exe)
	cmd.Args = []string{"pgtest-watchdog"} // what ps shows
	cmd.Env = append(os.Environ(), watchdogEnv+"="+strconv.Itoa(os.Getpid()),
		// Built with -race, it would linger a second at exit once done
		// (the race detector's atexit_sleep_ms).
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	cmd.Dir = "/"
	cmd.Stdin = r
	// Not our stdout or stderr: go test reads the test's output until every
	// copy of it is closed, and would wait for the watchdog.
	cmd.Stdout, cmd.Stderr = nil, nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("pgtest: watchdog: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	dog.w, dog.pid, dog.exited = w, cmd.Process.Pid, exited
	return nil
}

// runWatchdog is the watchdog process: it reads watch and unwatch lines from
// in until it ends (or SIGTERM), then reaps every directory still watched.
func runWatchdog(in io.Reader) {
	// Not interrupted with the test: it has work to do then.
	signal.Ignore(syscall.SIGINT, syscall.SIGHUP, syscall.SIGPIPE)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	type entry struct{ kind, binDir string }
	watched := make(map[string]entry)
read:
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				break read
			}
			kind, dir, binDir, err := parseWatch(line)
			if err != nil {
				continue
			}
			if kind == "-" {
				delete(watched, dir)
			} else {
				watched[dir] = entry{kind, binDir}
			}
		case <-term:
			break read
		}
	}
	var wg sync.WaitGroup
	for dir, e := range watched {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), watchdogReapWait)
			defer cancel()
			switch e.kind {
			case KindCluster:
				r, err := NewRunner(e.binDir)
				if err == nil {
					ReapCluster(ctx, r, dir)
				}
			case KindHA:
				_ = ReapHA(ctx, dir)
			}
		})
	}
	wg.Wait()
}

// parseWatch splits a line written by Watch or Unwatch: kind "-" for unwatch.
func parseWatch(line string) (kind, dir, binDir string, err error) {
	kind, rest, ok := strings.Cut(line, " ")
	if !ok {
		return "", "", "", errors.New("no directory")
	}
	q, err := strconv.QuotedPrefix(rest)
	if err != nil {
		return "", "", "", err
	}
	dir, _ = strconv.Unquote(q)
	rest = strings.TrimPrefix(rest[len(q):], " ")
	if kind == "-" {
		return kind, dir, "", nil
	}
	if kind != KindCluster && kind != KindHA {
		return "", "", "", fmt.Errorf("unknown kind %q", kind)
	}
	if binDir, err = strconv.Unquote(rest); err != nil {
		return "", "", "", err
	}
	return kind, dir, binDir, nil
}
