package testutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisProc is a redis-server (or Sentinel) process started by a test on
// a free loopback port, in a folder of its own under the test's temporary
// directory. It is killed at the test's cleanup, and its log is printed
// when the test failed.
type RedisProc struct {
	// Addr is 127.0.0.1:<Port>.
	Addr string
	Port int
	// Dir holds the process's files (log, configuration).
	Dir string

	t      testing.TB
	cmd    *exec.Cmd
	exited chan struct{}
	// hold keeps the port of a killed process (see Kill).
	hold net.Listener
}

// redisBinary returns the path of redis-server, skipping the test when it
// is not installed.
func redisBinary(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("testutil: redis-server is not installed (apt-get install redis-server): this test starts its own Redis processes")
	}
	return p
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testutil: finding a free port: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return port
}

// StartRedis starts a redis-server on a free loopback port, without
// persistence, with the extra arguments given (e.g. "--replicaof",
// "127.0.0.1", "6379"), and waits until it answers PING. It skips the test
// when redis-server is not installed.
func StartRedis(t testing.TB, args ...string) *RedisProc {
	t.Helper()
	bin := redisBinary(t)
	return startProc(t, "redis", func(port int, dir string) []string {
		a := []string{bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
			"--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0",
			"--logfile", filepath.Join(dir, "redis.log")}
		return append(a, args...)
	})
}

// StartReplica starts a redis-server replicating master and waits until
// its link to master is up.
func StartReplica(t testing.TB, master *RedisProc) *RedisProc {
	t.Helper()
	r := StartRedis(t, "--replicaof", "127.0.0.1", strconv.Itoa(master.Port))
	r.waitFor(func(ctx context.Context, c *redis.Client) bool {
		info, err := c.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up")
	}, "its link to the master up")
	return r
}

// StartSentinel starts a Sentinel (redis-sentinel, or redis-server
// --sentinel when that is not installed) monitoring master under name with
// a quorum of 1, the given down-after-milliseconds and a failover timeout
// of ten times it, and waits until it knows the master.
func StartSentinel(t testing.TB, name string, master *RedisProc, downAfter time.Duration) *RedisProc {
	t.Helper()
	bin := redisBinary(t)
	sentinelArgs := []string{bin}
	if p, err := exec.LookPath("redis-sentinel"); err == nil {
		sentinelArgs = []string{p}
	}
	s := startProc(t, "sentinel", func(port int, dir string) []string {
		conf := filepath.Join(dir, "sentinel.conf")
		text := fmt.Sprintf("bind 127.0.0.1\nport %d\ndir %q\nlogfile %q\n"+
			"sentinel monitor %s 127.0.0.1 %d 1\n"+
			"sentinel down-after-milliseconds %s %d\n"+
			"sentinel failover-timeout %s %d\n"+
			"sentinel parallel-syncs %s 2\n",
			port, dir, filepath.Join(dir, "sentinel.log"),
			name, master.Port, name, downAfter.Milliseconds(), name, 10*downAfter.Milliseconds(), name)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatalf("testutil: writing %s: %v", conf, err)
		}
		a := append([]string(nil), sentinelArgs...)
		a = append(a, conf)
		if len(sentinelArgs) == 1 && filepath.Base(sentinelArgs[0]) == "redis-server" {
			a = append(a, "--sentinel")
		}
		return a
	})
	s.waitFor(func(ctx context.Context, c *redis.Client) bool {
		addr, err := c.Do(ctx, "sentinel", "get-master-addr-by-name", name).StringSlice()
		return err == nil && len(addr) == 2 && addr[1] == strconv.Itoa(master.Port)
	}, "the master known")
	return s
}

// SentinelSet is a master, its replicas and one Sentinel, started by
// StartSentinelSet.
type SentinelSet struct {
	// Name is the master's name at the Sentinel.
	Name     string
	Master   *RedisProc
	Replicas []*RedisProc
	Sentinel *RedisProc
}

// StartSentinelSet starts a master, the given number of replicas and one
// Sentinel with the given down-after-milliseconds, on free loopback ports,
// and waits until every replica's link is up and the Sentinel knows the
// master and every replica. It skips the test when redis-server is not
// installed.
func StartSentinelSet(t testing.TB, replicas int, downAfter time.Duration) *SentinelSet {
	t.Helper()
	set := &SentinelSet{Name: "chatscale", Master: StartRedis(t)}
	for range replicas {
		set.Replicas = append(set.Replicas, StartReplica(t, set.Master))
	}
	if replicas > 0 {
		// A replica whose link is up after a diskless full sync gets the
		// writes made since the snapshot only once the master has its
		// first REPLCONF ACK (sent once a second): a master killed before
		// that takes them with it, data written before the failover
		// included. A write confirmed by WAIT means the stream flows.
		c := set.Master.Client()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := c.Set(ctx, "testutil:replication", "1", 0).Err()
		var n int64
		if err == nil {
			n, err = c.Wait(ctx, replicas, 30_000).Result()
		}
		cancel()
		_ = c.Close()
		if err != nil || n < int64(replicas) {
			t.Fatalf("testutil: %d of %d replicas confirmed a write within 30 s: %v", n, replicas, err)
		}
	}
	set.Sentinel = StartSentinel(t, set.Name, set.Master, downAfter)
	set.Sentinel.waitFor(func(ctx context.Context, c *redis.Client) bool {
		r, err := c.Do(ctx, "sentinel", "replicas", set.Name).Slice()
		return err == nil && len(r) == replicas
	}, "every replica known")
	return set
}

// FailoverClient returns a go-redis failover client of the set's master,
// closed at cleanup.
func (s *SentinelSet) FailoverClient(opts *redis.FailoverOptions) *redis.Client {
	o := redis.FailoverOptions{}
	if opts != nil {
		o = *opts
	}
	o.MasterName = s.Name
	o.SentinelAddrs = []string{s.Sentinel.Addr}
	c := redis.NewFailoverClient(&o)
	s.Master.t.Cleanup(func() { _ = c.Close() })
	return c
}

// MasterAddr asks the Sentinel which server is the master now.
func (s *SentinelSet) MasterAddr(ctx context.Context) (string, error) {
	c := s.Sentinel.Client()
	defer c.Close()
	addr, err := c.Do(ctx, "sentinel", "get-master-addr-by-name", s.Name).StringSlice()
	if err != nil {
		return "", err
	}
	if len(addr) != 2 {
		return "", fmt.Errorf("testutil: sentinel answered %q", addr)
	}
	return net.JoinHostPort(addr[0], addr[1]), nil
}

// startProc starts the process whose argv argv gives for a port and a
// folder, retrying on another port when the chosen one was taken in the
// meantime, and waits until it answers PING.
func startProc(t testing.TB, kind string, argv func(port int, dir string) []string) *RedisProc {
	t.Helper()
	var lastErr error
	for range 3 {
		dir, err := os.MkdirTemp(t.TempDir(), kind)
		if err != nil {
			t.Fatalf("testutil: %v", err)
		}
		port := freePort(t)
		a := argv(port, dir)
		p := &RedisProc{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Port: port, Dir: dir,
			t: t, cmd: exec.Command(a[0], a[1:]...), exited: make(chan struct{})}
		if err := p.cmd.Start(); err != nil {
			t.Fatalf("testutil: starting %s: %v", a[0], err)
		}
		go func() {
			_ = p.cmd.Wait()
			close(p.exited)
		}()
		t.Cleanup(func() {
			p.kill()
			p.release()
			if t.Failed() {
				p.logTail()
			}
		})
		if lastErr = p.ping(); lastErr == nil {
			return p
		}
		p.kill()
	}
	t.Fatalf("testutil: %s never answered: %v", kind, lastErr)
	return nil
}

// ping waits up to 10 s for the process to answer PING, or to exit.
func (p *RedisProc) ping() error {
	c := p.Client()
	defer c.Close()
	var err error
	Eventually(10*time.Second, func() bool {
		select {
		case <-p.exited:
			return true
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		err = c.Ping(ctx).Err()
		return err == nil
	})
	select {
	case <-p.exited:
		return fmt.Errorf("the process exited (%v)", err)
	default:
	}
	return err
}

// waitFor polls ok on a client of the process for up to 30 s, failing the
// test with what when it never holds.
func (p *RedisProc) waitFor(ok func(ctx context.Context, c *redis.Client) bool, what string) {
	p.t.Helper()
	c := p.Client()
	defer c.Close()
	if !Eventually(30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return ok(ctx, c)
	}) {
		p.t.Fatalf("testutil: %s never had %s", p.Addr, what)
	}
}

// Client returns a new client of this process alone (no failover, no
// retries, ctx deadlines honoured), which the caller closes.
func (p *RedisProc) Client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: p.Addr, MaxRetries: -1, ContextTimeoutEnabled: true})
}

// signal sends sig to the process unless it has exited.
func (p *RedisProc) signal(sig syscall.Signal) {
	p.t.Helper()
	select {
	case <-p.exited:
		return
	default:
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.t.Errorf("testutil: signal %v to %s: %v", sig, p.Addr, err)
	}
}

// Stop freezes the process (SIGSTOP): it keeps its connections open and
// its port bound but answers nothing, as a hung server would, until Cont.
func (p *RedisProc) Stop() { p.signal(syscall.SIGSTOP) }

// Cont resumes a process frozen by Stop (SIGCONT).
func (p *RedisProc) Cont() { p.signal(syscall.SIGCONT) }

// Kill kills the process with SIGKILL (no shutdown, no save, as a crash
// would) and waits until it has exited. It is idempotent.
//
// The port stays taken until Restart or the end of the test: a listener
// takes it over and closes every connection at once, as a refused dial
// would fail, so that clients still dialling the dead server's address
// never reach a server another test has started on that port meanwhile.
func (p *RedisProc) Kill() {
	p.kill()
	if p.hold != nil {
		return
	}
	ln, err := net.Listen("tcp", p.Addr)
	if err != nil {
		return // taken already: nothing to hold
	}
	p.hold = ln
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
}

// kill kills the process and waits until it has exited.
func (p *RedisProc) kill() {
	p.signal(syscall.SIGKILL)
	<-p.exited
}

// release frees the port Kill held.
func (p *RedisProc) release() {
	if p.hold != nil {
		_ = p.hold.Close()
		p.hold = nil
	}
}

// Exited is closed once the process has exited.
func (p *RedisProc) Exited() <-chan struct{} { return p.exited }

// logTail logs the end of the process's log file.
func (p *RedisProc) logTail() {
	for _, name := range []string{"redis.log", "sentinel.log"} {
		b, err := os.ReadFile(filepath.Join(p.Dir, name))
		if err != nil {
			continue
		}
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		p.t.Logf("testutil: end of %s of %s:\n%s", name, p.Addr, b)
	}
}
