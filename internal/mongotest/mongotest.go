// Package mongotest is the embedded MongoDB-wire server of chatscale's
// tests (FerretDB with its SQLite handler) and the tests that need it: those
// of contextcache/mongosource and those of contextcache that run against
// MongoDB.
//
// It is a module of its own (github.com/chatscale/chatscale/internal/mongotest)
// so that FerretDB and what it pulls in (SQLite, pgx, MySQL and HANA
// drivers, gRPC, OpenTelemetry) stay out of the go.mod of
// github.com/chatscale/chatscale: a program that imports chatscale's
// packages downloads none of it. Run its tests from its directory
// (`cd internal/mongotest && go test ./...`); .ci/run does so in every test
// step.
package mongotest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// EnvFerretDBLog, when set, sends the embedded server's warnings and errors
// to stderr.
const EnvFerretDBLog = "CHATSCALE_FERRETDB_LOG"

// Env is one test's embedded MongoDB-wire server: FerretDB with its SQLite
// handler in a temporary directory, reached through a loopback proxy on a
// random port that Stop can cut at once. It speaks the real wire protocol
// to the official driver, but it scans instead of using secondary indexes,
// so it proves behaviour, not query cost.
type Env struct {
	// URI is the server's connection string (mongodb://127.0.0.1:port/).
	URI string
	// Client is connected to the server with the short timeouts of
	// NewClient. It is disconnected at cleanup.
	Client *mongo.Client
	// Database is unique to the test.
	Database *mongo.Database

	t       testing.TB
	proxy   *proxy
	cancel  context.CancelFunc
	done    chan struct{}
	stopped sync.Once
}

// ferretNew serialises ferretdb.New, which writes a package-level variable
// of FerretDB's version package on every call.
var ferretNew sync.Mutex

// Start starts an embedded MongoDB-wire server for the test and returns it
// with a connected client. Each test gets its own server, so that Stop can
// take it down without touching other tests; starting one costs a few
// milliseconds. The server, its goroutines and the client are gone when the
// test's cleanup has run.
func Start(t testing.TB) *Env {
	t.Helper()
	cfg := &ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: "127.0.0.1:0"},
		Handler:   "sqlite",
		SQLiteURL: "file:" + t.TempDir() + "/",
		// FerretDB logs every connection at INFO; the tests do not need it.
		Logger: slog.New(slog.DiscardHandler),
	}
	if os.Getenv(EnvFerretDBLog) != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	ferretNew.Lock()
	f, err := ferretdb.New(cfg)
	ferretNew.Unlock()
	if err != nil {
		t.Fatalf("mongotest: starting FerretDB: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	env := &Env{t: t, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(env.done)
		_ = f.Run(ctx)
	}()
	// Cleanups run last-in first-out: the clients go before the server.
	t.Cleanup(env.Stop)

	u, err := url.Parse(f.MongoDBURI()) // it waits for the listener
	if err != nil {
		t.Fatalf("mongotest: FerretDB's URI %q: %v", f.MongoDBURI(), err)
	}
	if env.proxy, err = newProxy(u.Host); err != nil {
		t.Fatalf("mongotest: %v", err)
	}
	env.URI = "mongodb://" + env.proxy.addr() + "/"

	env.Client = env.NewClient()
	if err := Ping(env.Client, 30*time.Second); err != nil {
		t.Fatalf("mongotest: FerretDB at %s does not answer: %v", env.URI, err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	env.Database = env.Client.Database("cstest_" + hex.EncodeToString(b[:]))
	return env
}

// Ping pings the server through c until it answers or within passes, and
// returns the last error. A client whose server selection timeout is short
// may need several attempts before it has found the server; once it has,
// its operations select it at once.
func Ping(c *mongo.Client, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		err := c.Ping(ctx, nil)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Client timeouts of NewClient.
const (
	// SelectionTimeout bounds server selection, and with it the wait for a
	// pooled connection: once the server is stopped, an operation fails
	// after about that long.
	SelectionTimeout = 250 * time.Millisecond
	// ConnectTimeout bounds the dialling and handshake of a connection.
	ConnectTimeout = 10 * time.Second
)

// NewClient opens one more client to the server, with its own connection
// pool, as another instance of the host application would. Server
// selection gives up after SelectionTimeout, so that calls fail quickly
// once the server is stopped; opts, applied after those defaults, may
// change that. The client is disconnected at cleanup.
func (e *Env) NewClient(opts ...*options.ClientOptions) *mongo.Client {
	e.t.Helper()
	o := options.Client().ApplyURI(e.URI).
		SetServerSelectionTimeout(SelectionTimeout).
		SetConnectTimeout(ConnectTimeout)
	c, err := mongo.Connect(append([]*options.ClientOptions{o}, opts...)...)
	if err != nil {
		e.t.Fatalf("mongotest: connecting to %s: %v", e.URI, err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Disconnect(ctx)
	})
	return c
}

// Stop takes the server down at once, as a crash would, and returns once
// it is gone: the listener is closed and every connection is cut, so later
// calls through any client fail, then FerretDB is shut down (it has no
// connection left to wait for). A server still running after stopTimeout
// fails the test instead of hanging it. Stop is idempotent and also runs at
// cleanup.
func (e *Env) Stop() {
	e.stopped.Do(func() {
		if e.proxy != nil {
			e.proxy.close()
		}
		e.cancel()
		t := time.NewTimer(stopTimeout)
		defer t.Stop()
		select {
		case <-e.done:
		case <-t.C:
			e.t.Errorf("mongotest: FerretDB behind %s still runs %v after Stop", e.URI, stopTimeout)
		}
	})
}

// stopTimeout bounds Stop: FerretDB gives connected clients 3 s to leave,
// and the proxy has already cut them.
const stopTimeout = 30 * time.Second

// proxy forwards loopback connections to FerretDB. It exists so that Stop
// can cut every connection at once: FerretDB itself waits up to 3 s for
// connected clients to leave, and a driver's pooled connections never do.
type proxy struct {
	ln      net.Listener
	backend string
	wg      sync.WaitGroup

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
}

func newProxy(backend string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{ln: ln, backend: backend, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		b, err := net.Dial("tcp", p.backend)
		if err != nil {
			_ = c.Close()
			continue
		}
		if !p.track(c, b) {
			return
		}
		p.wg.Add(2)
		go p.pipe(c, b)
		go p.pipe(b, c)
	}
}

// track records a client connection and its backend connection, or closes
// both and returns false after close.
func (p *proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range conns {
			_ = c.Close()
		}
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

// pipe copies from src to dst until either fails, then closes both.
func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// close stops accepting, cuts every connection and waits for the proxy's
// goroutines.
func (p *proxy) close() {
	p.mu.Lock()
	p.closed = true
	_ = p.ln.Close()
	for c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}
