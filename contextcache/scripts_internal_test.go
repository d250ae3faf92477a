package contextcache

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/internal/testutil"
)

func noSource(context.Context, string, string) (Document, error) { return Document{}, nil }

// scriptsLoaded returns an error naming the first of the Cache's scripts
// that c's server does not hold.
func scriptsLoaded(ctx context.Context, c *redis.Client) error {
	var hashes []string
	for _, s := range luaScripts {
		hashes = append(hashes, s.Hash())
	}
	ok, err := c.ScriptExists(ctx, hashes...).Result()
	if err != nil {
		return err
	}
	for i, loaded := range ok {
		if !loaded {
			return fmt.Errorf("%s: script %s not loaded", c.Options().Addr, hashes[i])
		}
	}
	return nil
}

func TestLoadScriptsReachesEveryServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := testutil.Redis(t)
	if env.Mini != nil {
		// Only the test's own server may be flushed; on shared servers the
		// scripts may already be cached, which the check below tolerates.
		if err := env.Client.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if err := scriptsLoaded(ctx, env.Client.(*redis.Client)); err == nil {
			t.Fatal("scripts cached before LoadScripts: the test would prove nothing")
		}
	}
	c, err := New(SourceFunc(noSource), Config{Redis: env.Client, Prefix: env.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	switch rdb := env.Client.(type) {
	case *redis.ClusterClient:
		// Every master, and the replicas too (ClusterClient.ScriptLoad
		// reaches every shard).
		err = rdb.ForEachShard(ctx, scriptsLoaded)
	case *redis.Client:
		err = scriptsLoaded(ctx, rdb)
	default:
		t.Fatalf("unexpected client %T", env.Client)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestLoadScriptsReachesEveryRingShard(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	addrs := map[string]string{}
	for _, name := range []string{"a", "b", "c"} {
		addrs[name] = miniredis.RunT(t).Addr()
	}
	ring := redis.NewRing(&redis.RingOptions{Addrs: addrs})
	t.Cleanup(func() { _ = ring.Close() })
	c, err := New(SourceFunc(noSource), Config{Redis: ring})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	var shards atomic.Int64
	if err := ring.ForEachShard(ctx, func(ctx context.Context, shard *redis.Client) error {
		shards.Add(1)
		return scriptsLoaded(ctx, shard)
	}); err != nil {
		t.Fatal(err)
	}
	if n := shards.Load(); n != int64(len(addrs)) {
		t.Fatalf("ring has %d live shards; want %d", n, len(addrs))
	}
}

func TestLoadScriptsWithoutRedis(t *testing.T) {
	t.Parallel()
	c, err := New(SourceFunc(noSource), Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.LoadScripts(context.Background()); err != nil {
		t.Fatalf("LoadScripts without Redis: %v; want nil", err)
	}
}
