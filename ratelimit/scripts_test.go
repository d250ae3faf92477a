package ratelimit_test

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"os"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// firstDecisionCommands returns the commands the first Allow of a fresh
// limiter on env sends, after LoadScripts when load is set.
func firstDecisionCommands(t *testing.T, env *testutil.RedisEnv, load bool) int64 {
	t.Helper()
	var cc cmdCounter
	client := env.NewClient()
	client.AddHook(&cc)
	lim := newRedis(t, client, env.Prefix, ratelimit.PerHour(10), ratelimit.Config{})
	ctx := context.Background()
	// Open the connection first: its handshake goes through the hook.
	if err := client.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if load {
		if err := lim.LoadScripts(ctx); err != nil {
			t.Fatalf("LoadScripts: %v", err)
		}
	}
	cc.n.Store(0)
	if d, err := lim.Allow(ctx, "k", 1); err != nil || !d.Allowed {
		t.Fatalf("Allow: %+v, %v", d, err)
	}
	return cc.n.Load()
}

func TestRedisLoadScriptsSavesARoundTrip(t *testing.T) {
	// On a fresh miniredis the first decision is EVALSHA (NOSCRIPT), then
	// EVAL; after LoadScripts it is EVALSHA alone.
	if n := firstDecisionCommands(t, testutil.MiniredisEnv(t), false); n != 2 {
		t.Fatalf("first decision on a fresh server without LoadScripts: %d commands, want 2", n)
	}
	if n := firstDecisionCommands(t, testutil.MiniredisEnv(t), true); n != 1 {
		t.Fatalf("first decision after LoadScripts: %d commands, want 1", n)
	}
	// On the test's Redis (a real server or cluster when configured).
	env := testutil.Redis(t)
	if n := firstDecisionCommands(t, env, true); n != 1 {
		t.Fatalf("first decision after LoadScripts on %s: %d commands, want 1", env.Backend, n)
	}
}

// On a Ring, SCRIPT LOAD would reach one shard; LoadScripts loads every one.
func TestRedisLoadScriptsEveryRingShard(t *testing.T) {
	src, err := os.ReadFile("gcra.lua")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha1.Sum(src)
	sha := hex.EncodeToString(sum[:])
	addrs := map[string]string{}
	for _, name := range []string{"a", "b", "c"} {
		addrs[name] = miniredis.RunT(t).Addr()
	}
	ring := redis.NewRing(&redis.RingOptions{Addrs: addrs})
	t.Cleanup(func() { _ = ring.Close() })
	lim := newRedis(t, ring, "p:", ratelimit.PerHour(10), ratelimit.Config{})
	ctx := context.Background()
	if err := lim.LoadScripts(ctx); err != nil {
		t.Fatalf("LoadScripts: %v", err)
	}
	for name, addr := range addrs {
		c := redis.NewClient(&redis.Options{Addr: addr})
		ok, err := c.ScriptExists(ctx, sha).Result()
		_ = c.Close()
		if err != nil || len(ok) != 1 || !ok[0] {
			t.Errorf("shard %s: script cached = %v, %v; want true", name, ok, err)
		}
	}
}

func TestRedisLoadScriptsErrors(t *testing.T) {
	env := testutil.MiniredisEnv(t)
	lim := newRedis(t, env.Client, env.Prefix, ratelimit.PerHour(10), ratelimit.Config{FailClosed: true})
	env.Mini.SetError("ERR broken")
	if err := lim.LoadScripts(context.Background()); !errors.Is(err, ratelimit.ErrUnavailable) {
		t.Fatalf("LoadScripts on a failing server = %v, want ErrUnavailable", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := lim.LoadScripts(ctx); !errors.Is(err, context.Canceled) || errors.Is(err, ratelimit.ErrUnavailable) {
		t.Fatalf("LoadScripts with a cancelled ctx = %v, want context.Canceled alone", err)
	}
	// Loading is not deciding: the limiter's counters and state are untouched.
	if s := lim.Stats(); s.StoreErrors != 0 || s.Unavailable || s.Allowed+s.Limited != 0 {
		t.Fatalf("Stats after failed LoadScripts = %+v", s)
	}
}
