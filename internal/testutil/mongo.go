package testutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
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

// MongoEnv is one test's embedded MongoDB-wire server: FerretDB with its
// SQLite handler in a temporary directory, listening on a random loopback
// port. It speaks the real wire protocol to the official driver, but it
// scans instead of using secondary indexes, so it proves behaviour, not
// query cost.
type MongoEnv struct {
	// URI is the server's connection string (mongodb://127.0.0.1:port/).
	URI string
	// Client is connected to the server with short timeouts suited to
	// tests. It is disconnected at cleanup.
	Client *mongo.Client
	// Database is unique to the test.
	Database *mongo.Database

	t       testing.TB
	cancel  context.CancelFunc
	done    chan struct{}
	stopped sync.Once
}

// ferretNew serialises ferretdb.New, which writes a package-level variable
// of FerretDB's version package on every call.
var ferretNew sync.Mutex

// Mongo starts an embedded MongoDB-wire server for the test and returns it
// with a connected client. Each test gets its own server, so that Stop can
// take it down without touching other tests; starting one costs a few
// milliseconds. The server, its goroutines and the client are gone when the
// test's cleanup has run.
func Mongo(t testing.TB) *MongoEnv {
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
		t.Fatalf("testutil: starting FerretDB: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	env := &MongoEnv{URI: f.MongoDBURI(), t: t, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(env.done)
		_ = f.Run(ctx)
	}()
	// Cleanups run last-in first-out: the client goes before the server.
	t.Cleanup(env.Stop)

	env.Client = env.NewClient()
	pingCtx, pingCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer pingCancel()
	if err := env.Client.Ping(pingCtx, nil); err != nil {
		t.Fatalf("testutil: FerretDB at %s does not answer: %v", env.URI, err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	env.Database = env.Client.Database("cstest_" + hex.EncodeToString(b[:]))
	return env
}

// NewClient opens one more client to the server, with its own connection
// pool, as another instance of the host application would. Server
// selection gives up after 2 s, so that calls fail quickly once the server
// is stopped. The client is disconnected at cleanup.
func (e *MongoEnv) NewClient() *mongo.Client {
	e.t.Helper()
	c, err := mongo.Connect(options.Client().ApplyURI(e.URI).
		SetServerSelectionTimeout(2 * time.Second).
		SetConnectTimeout(2 * time.Second))
	if err != nil {
		e.t.Fatalf("testutil: connecting to %s: %v", e.URI, err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Disconnect(ctx)
	})
	return c
}

// Stop shuts the server down and returns once it has: the listener is
// closed and every connection is gone, so later calls through any client
// fail. FerretDB gives connected clients up to 3 s to leave before it
// closes their connections, so Stop may take that long; a server still
// running after stopTimeout fails the test instead of hanging it. Stop is
// idempotent and also runs at cleanup.
func (e *MongoEnv) Stop() {
	e.stopped.Do(func() {
		e.cancel()
		t := time.NewTimer(stopTimeout)
		defer t.Stop()
		select {
		case <-e.done:
		case <-t.C:
			e.t.Errorf("testutil: FerretDB at %s still runs %v after Stop", e.URI, stopTimeout)
		}
	})
}

// stopTimeout bounds Stop: FerretDB's own grace period is 3 s.
const stopTimeout = 30 * time.Second
