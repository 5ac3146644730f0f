package proc

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// StartBound starts cmd so that the kernel sends it sig when this process
// exits, however it does: a test timeout, kill -9, a crash. It serves the
// processes pgtest starts and waits for itself (postgres, pgbouncer, etcd,
// patroni); what they start on their own (Patroni's postgres) is left to the
// watchdog.
//
// Linux sends the parent-death signal when the thread that started the child
// exits, not the process, and Go may end a thread while the process runs on;
// so every bound child is started from one thread that lives as long as the
// process.
func StartBound(cmd *exec.Cmd, sig syscall.Signal) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = sig
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
