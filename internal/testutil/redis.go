// Package testutil holds the test fixtures shared by chatscale's packages:
// a Redis for each test (miniredis, or a real server, cluster or Sentinel
// when the environment names one), a fake OpenAI API and a fake clock. The
// embedded MongoDB-wire server lives in the nested module
// internal/mongotest, so that the library's go.mod stays free of it. It is
// internal: only the *test conformance packages are exported.
package testutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Environment variables that point the Redis tests at real servers.
const (
	// EnvRedisURL names a single Redis server, e.g. redis://127.0.0.1:6379/0.
	EnvRedisURL = "CHATSCALE_REDIS_URL"
	// EnvRedisCluster names the seed nodes of a Redis Cluster,
	// e.g. 127.0.0.1:30001,127.0.0.1:30002,127.0.0.1:30003.
	EnvRedisCluster = "CHATSCALE_REDIS_CLUSTER"
	// EnvRedisSentinel names a master and its Sentinels as
	// MASTER@HOST:PORT[,HOST:PORT...], e.g. chatscale@127.0.0.1:30013.
	EnvRedisSentinel = "CHATSCALE_REDIS_SENTINEL"
)

// Backend says which kind of Redis a test runs against.
type Backend string

// The backends RedisEnv.Backend can name.
const (
	Miniredis Backend = "miniredis"
	Server    Backend = "server"
	Cluster   Backend = "cluster"
	Sentinel  Backend = "sentinel"
)

// RedisEnv is one test's view of Redis.
type RedisEnv struct {
	// Client is connected to the test's Redis. It is closed at cleanup.
	Client redis.UniversalClient
	// Prefix is unique to the test; every key the test writes must start
	// with it, so that cleanup can remove them and tests never collide.
	// It ends with ':' and holds no hash-tag braces.
	Prefix string
	// Backend says what Client talks to.
	Backend Backend
	// Mini is the in-process server when Backend is Miniredis, else nil.
	// Tests use it for FastForward, SetTime and SetError.
	Mini *miniredis.Miniredis

	t    testing.TB
	opts redisOpts
}

type redisOpts struct {
	url       *redis.Options
	cluster   []string
	master    string
	sentinels []string
}

// Redis returns a Redis for the test: miniredis by default, the cluster at
// $CHATSCALE_REDIS_CLUSTER, the Sentinel-managed master at
// $CHATSCALE_REDIS_SENTINEL or the server at $CHATSCALE_REDIS_URL when set
// (in that order of precedence). At cleanup it deletes the keys under
// the test's prefix and closes its clients; it never flushes a database.
func Redis(t testing.TB) *RedisEnv {
	t.Helper()
	env := &RedisEnv{t: t, Prefix: uniquePrefix(t)}
	switch {
	case os.Getenv(EnvRedisCluster) != "":
		env.Backend = Cluster
		env.opts.cluster = splitAddrs(os.Getenv(EnvRedisCluster))
	case os.Getenv(EnvRedisSentinel) != "":
		env.Backend = Sentinel
		master, addrs, ok := strings.Cut(os.Getenv(EnvRedisSentinel), "@")
		if !ok || master == "" || addrs == "" {
			t.Fatalf("testutil: %s=%q: want MASTER@HOST:PORT[,HOST:PORT...]", EnvRedisSentinel, os.Getenv(EnvRedisSentinel))
		}
		env.opts.master = master
		env.opts.sentinels = splitAddrs(addrs)
	case os.Getenv(EnvRedisURL) != "":
		env.Backend = Server
		o, err := redis.ParseURL(os.Getenv(EnvRedisURL))
		if err != nil {
			t.Fatalf("testutil: %s: %v", EnvRedisURL, err)
		}
		env.opts.url = o
	default:
		env.Backend = Miniredis
		env.Mini = miniredis.RunT(t)
	}
	env.Client = env.NewClient()
	if err := env.Client.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("testutil: redis (%s) does not answer: %v", env.Backend, err)
	}
	t.Cleanup(env.cleanup)
	return env
}

// MiniredisEnv returns a RedisEnv on miniredis whatever the environment
// says, for tests that need to stop, slow or break the server.
func MiniredisEnv(t testing.TB) *RedisEnv {
	t.Helper()
	env := &RedisEnv{t: t, Prefix: uniquePrefix(t), Backend: Miniredis, Mini: miniredis.RunT(t)}
	env.Client = env.NewClient()
	return env
}

// NewClient opens one more client to the same Redis, with its own
// connection pool, as a separate instance of the host application would.
// It is closed at cleanup.
func (e *RedisEnv) NewClient() redis.UniversalClient {
	var c redis.UniversalClient
	switch e.Backend {
	case Cluster:
		c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: e.opts.cluster})
	case Sentinel:
		c = redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:    e.opts.master,
			SentinelAddrs: e.opts.sentinels,
		})
	case Server:
		o := *e.opts.url
		c = redis.NewClient(&o)
	default:
		c = redis.NewClient(&redis.Options{Addr: e.Mini.Addr()})
	}
	e.t.Cleanup(func() { _ = c.Close() })
	return c
}

// Keys lists the keys under the test's prefix, on every master of a cluster.
func (e *RedisEnv) Keys(ctx context.Context) ([]string, error) {
	var (
		mu   sync.Mutex
		keys []string
	)
	scan := func(ctx context.Context, c redis.Cmdable) error {
		iter := c.Scan(ctx, 0, e.Prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			keys = append(keys, iter.Val())
			mu.Unlock()
		}
		return iter.Err()
	}
	if cc, ok := e.Client.(*redis.ClusterClient); ok {
		err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return scan(ctx, c)
		})
		return keys, err
	}
	return keys, scan(ctx, e.Client)
}

func (e *RedisEnv) cleanup() {
	if e.Backend == Miniredis {
		return // the server goes away with the test
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	keys, err := e.Keys(ctx)
	if err != nil {
		e.t.Logf("testutil: listing keys under %q: %v", e.Prefix, err)
		return
	}
	for _, k := range keys {
		// One key per DEL: on a cluster the keys live in different slots.
		if err := e.Client.Del(ctx, k).Err(); err != nil {
			e.t.Logf("testutil: deleting %q: %v", k, err)
		}
	}
}

func splitAddrs(list string) []string {
	var addrs []string
	for _, a := range strings.Split(list, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	return addrs
}

func uniquePrefix(t testing.TB) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, t.Name())
	if len(name) > 40 {
		name = name[:40]
	}
	return "cstest:" + name + ":" + hex.EncodeToString(b[:]) + ":"
}
