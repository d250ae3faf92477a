package scripts_test

import (
	"context"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/internal/scripts"
)

func TestLoadReachesEveryRingShard(t *testing.T) {
	ctx := context.Background()
	addrs := map[string]string{}
	var minis []*miniredis.Miniredis
	for _, name := range []string{"a", "b", "c"} {
		m := miniredis.RunT(t)
		minis = append(minis, m)
		addrs[name] = m.Addr()
	}
	ring := redis.NewRing(&redis.RingOptions{Addrs: addrs})
	defer ring.Close()
	sc := redis.NewScript("return 1")
	if err := scripts.Load(ctx, ring, sc); err != nil {
		t.Fatal(err)
	}
	for i, m := range minis {
		c := redis.NewClient(&redis.Options{Addr: m.Addr()})
		ok, err := c.ScriptExists(ctx, sc.Hash()).Result()
		c.Close()
		if err != nil || len(ok) != 1 || !ok[0] {
			t.Errorf("shard %d: script loaded = %v, %v; want true", i, ok, err)
		}
	}
}

func TestLoadSingleServer(t *testing.T) {
	ctx := context.Background()
	m := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: m.Addr()})
	defer c.Close()
	a, b := redis.NewScript("return 1"), redis.NewScript("return 2")
	if err := scripts.Load(ctx, c, a, b); err != nil {
		t.Fatal(err)
	}
	ok, err := c.ScriptExists(ctx, a.Hash(), b.Hash()).Result()
	if err != nil || len(ok) != 2 || !ok[0] || !ok[1] {
		t.Fatalf("scripts loaded = %v, %v; want both", ok, err)
	}
	m.SetError("LOADING")
	if err := scripts.Load(ctx, c, a); err == nil {
		t.Fatal("Load on a failing server returned nil")
	}
}
