package testutil

import "os/exec"

// Restart starts the process again after Kill, with the same arguments,
// port and folder (so a server with persistence reloads its files), and
// waits until it answers PING. It fails the test when the process still
// runs or does not come back.
func (p *RedisProc) Restart() {
	p.t.Helper()
	select {
	case <-p.exited:
	default:
		p.t.Fatalf("testutil: Restart of %s, which still runs", p.Addr)
	}
	p.release()
	p.cmd = exec.Command(p.cmd.Args[0], p.cmd.Args[1:]...)
	p.exited = make(chan struct{})
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("testutil: restarting %s: %v", p.Addr, err)
	}
	cmd, exited := p.cmd, p.exited
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	if err := p.ping(); err != nil {
		p.t.Fatalf("testutil: %s did not come back: %v", p.Addr, err)
	}
}
