package testutil

import (
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Proxy is a loopback TCP proxy in front of one server, for tests of what
// a client does when that server slows down or stops answering without
// dying: SetDelay adds a delay before every chunk the server sends back
// (a reply, for a Redis client that waits for each one), Hang stops
// forwarding in both directions (connections are still accepted and held,
// nothing is read back) and Heal lets everything held through again. It is
// safe for concurrent use.
type Proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	delay  time.Duration
	healed chan struct{} // closed while the proxy forwards; open while it hangs
	conns  map[net.Conn]struct{}
	closed bool

	wg sync.WaitGroup // the accept loop and every pump
}

// NewProxy starts a proxy on a free loopback port that forwards every
// connection to target. It is closed at cleanup.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testutil: proxy: %v", err)
	}
	healed := make(chan struct{})
	close(healed)
	p := &Proxy{ln: ln, target: target, healed: healed, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr returns the proxy's address, host:port on 127.0.0.1.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetDelay makes the proxy wait d before it sends back each chunk the
// server wrote (zero: no delay).
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// Hang stops forwarding until Heal: a chunk already read (at most one per
// direction and connection) stays with the proxy, nothing more is read
// from either side, and new connections are accepted and held without
// reaching the server. Connections stay open.
func (p *Proxy) Hang() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.healed:
		p.healed = make(chan struct{})
	default: // already hanging
	}
}

// Heal forwards again, what was held first.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.healed:
	default:
		close(p.healed)
	}
}

// Close stops accepting, closes every connection and waits for the
// proxy's goroutines. It is idempotent.
func (p *Proxy) Close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		_ = p.ln.Close()
		for c := range p.conns {
			_ = c.Close()
		}
		select {
		case <-p.healed:
		default:
			close(p.healed) // release the pumps held by a hang
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// gate blocks while the proxy hangs, and returns false once it is closed.
func (p *Proxy) gate() (time.Duration, bool) {
	p.mu.Lock()
	healed := p.healed
	p.mu.Unlock()
	<-healed
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.delay, !p.closed
}

// track registers c, or closes it and returns false when the proxy is
// closed.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(client) {
			return
		}
		p.wg.Add(1)
		go p.serve(client)
	}
}

// serve connects client to the server once the proxy forwards, then
// pumps both ways until either side closes.
func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	if _, ok := p.gate(); !ok {
		p.untrack(client)
		return
	}
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		p.untrack(client)
		return
	}
	if !p.track(server) {
		p.untrack(client)
		return
	}
	p.wg.Add(2)
	go p.pump(server, client, false)
	go p.pump(client, server, true)
}

// pump copies src to dst a chunk at a time, through the gate, applying
// the delay to what the server sends when reply is set. It closes both
// connections when either side ends.
func (p *Proxy) pump(dst, src net.Conn, reply bool) {
	defer p.wg.Done()
	defer p.untrack(src)
	defer p.untrack(dst)
	buf := make([]byte, 32<<10)
	for {
		// Wait for the gate before reading, so that a hung proxy reads
		// nothing more from either side.
		if _, ok := p.gate(); !ok {
			return
		}
		n, err := src.Read(buf)
		if n > 0 {
			delay, ok := p.gate() // a hang that began during the read holds the chunk
			if !ok {
				return
			}
			if reply && delay > 0 {
				time.Sleep(delay)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a closed connection: the other pump ends too
		}
	}
}

// ProxyEnv is a Redis for the test with a Proxy in front of it: the real
// server at $CHATSCALE_REDIS_URL when set, miniredis otherwise (a Cluster
// or Sentinel named by the environment is not used: a proxy forwards to
// one server).
type ProxyEnv struct {
	// Env talks to the server directly: its Client and Prefix serve
	// checks and cleanup, whatever the proxy does.
	Env *RedisEnv
	// Proxy forwards to the server.
	Proxy *Proxy
}

// RedisBehindProxy returns the test's Redis and a Proxy in front of it.
func RedisBehindProxy(t testing.TB) *ProxyEnv {
	t.Helper()
	env := &RedisEnv{t: t, Prefix: uniquePrefix(t)}
	if u := os.Getenv(EnvRedisURL); u != "" {
		o, err := redis.ParseURL(u)
		if err != nil {
			t.Fatalf("testutil: %s: %v", EnvRedisURL, err)
		}
		env.Backend, env.opts.url = Server, o
	} else {
		env.Backend, env.Mini = Miniredis, miniredis.RunT(t)
	}
	env.Client = env.NewClient()
	if err := env.Client.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("testutil: redis (%s) does not answer: %v", env.Backend, err)
	}
	t.Cleanup(env.cleanup)
	target := ""
	if env.Mini != nil {
		target = env.Mini.Addr()
	} else {
		target = env.opts.url.Addr
	}
	return &ProxyEnv{Env: env, Proxy: NewProxy(t, target)}
}

// NewClient opens a client to the server through the proxy, with the
// server's options (database, credentials) and then configure's changes,
// if configure is not nil. It is closed at cleanup, before the proxy.
func (e *ProxyEnv) NewClient(configure func(*redis.Options)) *redis.Client {
	var o redis.Options
	if e.Env.opts.url != nil {
		o = *e.Env.opts.url
	}
	o.Addr = e.Proxy.Addr()
	if configure != nil {
		configure(&o)
	}
	c := redis.NewClient(&o)
	e.Env.t.Cleanup(func() { _ = c.Close() })
	return c
}
