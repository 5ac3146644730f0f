package haproxy

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// startBound starts cmd so that the kernel kills it (SIGKILL) when this
// process exits, however it does: a test timeout, a signal, kill -9.
//
// Linux sends the parent-death signal when the thread that started the child
// exits, not the process, and Go may end a thread while the process runs on;
// so every bound child is started from one thread that lives as long as the
// process. (pgtest does the same for its own children, unexported.)
func startBound(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	errc := make(chan error, 1)
	boundThread() <- func() { errc <- cmd.Start() }
	return <-errc
}

var boundThread = sync.OnceValue(func() chan<- func() {
	fns := make(chan func())
	go func() {
		runtime.LockOSThread() // never unlocked: the thread never exits
		for fn := range fns {
			fn()
		}
	}()
	return fns
})
