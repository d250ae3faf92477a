package contextcache_test

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/internal/rediscall"
	"github.com/chatscale/chatscale/internal/testutil"
)

// The tests below put a proxy between the Cache and Redis (the real server
// with CHATSCALE_REDIS_URL, miniredis otherwise) and make it stop answering
// or answer slowly. The client's own timeouts are a minute and the callers'
// ctx deadlines 30 s, far beyond the Cache's RedisTimeout, so a Get that
// answers was not held by Redis, and one that waited for the client would
// return ctx's error: the tests tell them apart by errors and counters.

func patientClient(pe *testutil.ProxyEnv, honourCtx bool) *redis.Client {
	return pe.NewClient(func(o *redis.Options) {
		o.ReadTimeout, o.WriteTimeout, o.DialTimeout = time.Minute, time.Minute, time.Minute
		o.PoolTimeout = time.Minute
		o.MaxRetries = -1
		o.ContextTimeoutEnabled = honourCtx
	})
}

func transcripts() *counting {
	return &counting{src: contextcache.SourceFunc(func(_ context.Context, course, video string) (contextcache.Document, error) {
		return contextcache.Document{Title: course + "/" + video, Text: "text of " + video}, nil
	})}
}

func TestHungRedisGetAnswersFromL1AndTheSource(t *testing.T) {
	for _, honour := range []bool{false, true} {
		name := "ContextTimeoutEnabled=false"
		if honour {
			name = "ContextTimeoutEnabled=true"
		}
		t.Run(name, func(t *testing.T) {
			pe := testutil.RedisBehindProxy(t)
			baseline := runtime.NumGoroutine()
			rdb := patientClient(pe, honour)
			src := transcripts()
			bound := 100 * time.Millisecond
			c, err := contextcache.New(src, contextcache.Config{Redis: rdb, Prefix: pe.Env.Prefix, RedisTimeout: bound})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if r, err := c.Get(ctx, "c", "v1"); err != nil || r.Tier != contextcache.TierSource {
				t.Fatalf("Get with Redis answering: %+v, %v", r, err)
			}

			pe.Proxy.Hang()
			if r, err := c.Get(ctx, "c", "v1"); err != nil || r.Tier != contextcache.TierL1 {
				t.Fatalf("Get of a cached transcript with Redis hung: %+v, %v; want L1", r, err)
			}
			r, err := c.Get(ctx, "c", "v2")
			if err != nil || r.Tier != contextcache.TierSource || r.Document.Title != "c/v2" {
				t.Fatalf("Get of a miss with Redis hung: %+v, %v; want the Source's copy", r, err)
			}
			if s := c.Stats(); s.RedisErrors != 1 || s.Loads != 2 {
				t.Fatalf("Stats with Redis hung = %+v; want 1 Redis error (the bounded L2 read) and 2 loads", s)
			}
			err = c.Invalidate(ctx, "c", "v1")
			var te *rediscall.TimeoutError
			if !errors.Is(err, contextcache.ErrUnavailable) || !errors.As(err, &te) {
				t.Fatalf("Invalidate with Redis hung = %v; want ErrUnavailable from the bound", err)
			}
			if r, err := c.Get(ctx, "c", "v1"); err != nil || r.Tier != contextcache.TierSource {
				t.Fatalf("Get after a failed Invalidate: %+v, %v; want the local copy gone", r, err)
			}
			// Another instance starting now: its subscription is refused
			// within the bound and retried in the background.
			other, err := contextcache.New(src, contextcache.Config{Redis: rdb, Prefix: pe.Env.Prefix, RedisTimeout: bound})
			if err != nil {
				t.Fatal(err)
			}
			defer other.Close()
			if err := other.Start(ctx); !errors.Is(err, contextcache.ErrUnavailable) || !errors.As(err, &te) {
				t.Fatalf("Start with Redis hung = %v; want ErrUnavailable from the bound", err)
			}

			pe.Proxy.Heal()
			// The first call that gets through uses L2 again.
			if !testutil.Eventually(10*time.Second, func() bool {
				_ = c.Invalidate(ctx, "c", "v3")
				r, err := c.Get(ctx, "c", "v3")
				if err != nil || r.Tier != contextcache.TierSource {
					return false
				}
				vk, _ := contextcache.RedisKeys(c, "c", "v3")
				n, err := pe.Env.Client.Exists(ctx, vk).Result()
				return err == nil && n == 1
			}) {
				t.Fatalf("L2 not written 10s after the proxy healed: %+v", c.Stats())
			}
			// The other instance's subscriber got through by itself.
			if !testutil.Eventually(10*time.Second, func() bool {
				_ = c.Invalidate(ctx, "c", "v4")
				return other.Stats().InvalidationsReceived > 0
			}) {
				t.Fatalf("the subscriber started during the hang receives nothing 10s after the proxy healed: %+v", other.Stats())
			}
			if err := other.Close(); err != nil {
				t.Fatal(err)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if err := rdb.Close(); err != nil {
				t.Fatal(err)
			}
			if !testutil.Eventually(10*time.Second, func() bool { return runtime.NumGoroutine() <= baseline }) {
				t.Fatalf("%d goroutines after the proxy healed and the client closed, want at most %d as before", runtime.NumGoroutine(), baseline)
			}
		})
	}
}

func TestSlowRedisAgainstTheBound(t *testing.T) {
	pe := testutil.RedisBehindProxy(t)
	rdb := patientClient(pe, true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	patient := newCache(t, transcripts(), contextcache.Config{Redis: rdb, Prefix: pe.Env.Prefix}) // the 1 s default
	hasty := newCache(t, transcripts(), contextcache.Config{Redis: rdb, Prefix: pe.Env.Prefix, RedisTimeout: 50 * time.Millisecond})
	if err := patient.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	pe.Proxy.SetDelay(200 * time.Millisecond)
	if r, err := patient.Get(ctx, "c", "v"); err != nil || r.Tier != contextcache.TierSource {
		t.Fatalf("200ms replies, 1s bound: %+v, %v", r, err)
	}
	if s := patient.Stats(); s.RedisErrors != 0 {
		t.Fatalf("200ms replies, 1s bound: Stats = %+v; want no Redis error", s)
	}
	// hasty's L1 is empty: the copy patient wrote to L2 is too slow to read.
	if r, err := hasty.Get(ctx, "c", "v"); err != nil || r.Tier != contextcache.TierSource {
		t.Fatalf("200ms replies, 50ms bound: %+v, %v; want the Source's copy", r, err)
	}
	if s := hasty.Stats(); s.RedisErrors != 1 || s.L2Hits != 0 {
		t.Fatalf("200ms replies, 50ms bound: Stats = %+v; want 1 Redis error and no L2 hit", s)
	}
	pe.Proxy.SetDelay(0)
	hasty.Close()
	fresh := newCache(t, transcripts(), contextcache.Config{Redis: rdb, Prefix: pe.Env.Prefix, RedisTimeout: 50 * time.Millisecond})
	if r, err := fresh.Get(ctx, "c", "v"); err != nil || r.Tier != contextcache.TierL2 {
		t.Fatalf("without the delay, 50ms bound: %+v, %v; want the copy in L2", r, err)
	}
}
