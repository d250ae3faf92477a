package contextcache_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/contextcache"
)

func ExampleCache_Get() {
	src := contextcache.SourceFunc(func(ctx context.Context, courseID, videoURL string) (contextcache.Document, error) {
		if videoURL != "intro.mp4" {
			return contextcache.Document{}, contextcache.ErrNotFound
		}
		return contextcache.Document{Title: "Introduction", Text: "Welcome to the course."}, nil
	})
	cache, err := contextcache.New(src, contextcache.Config{}) // L1 only: no Redis
	if err != nil {
		panic(err)
	}
	defer cache.Close()

	ctx := context.Background()
	for range 2 {
		r, err := cache.Get(ctx, "course-1", "intro.mp4")
		fmt.Println(r.Document.Title, r.Tier, r.Stale, err)
	}
	_, err = cache.Get(ctx, "course-1", "missing.mp4")
	fmt.Println(errors.Is(err, contextcache.ErrNotFound))
	s := cache.Stats()
	fmt.Println("loads:", s.Loads, "l1 hits:", s.L1Hits)
	// Output:
	// Introduction source false <nil>
	// Introduction l1 false <nil>
	// true
	// loads: 2 l1 hits: 1
}

// This example runs two instances of an application against one Redis
// (miniredis here): the second finds in L2 what the first loaded, and an
// invalidation from either drops both copies. For MongoDB, use the Source
// of package github.com/chatscale/chatscale/contextcache/mongosource.
func ExampleNew_redis() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close() // after the caches: they do not close it

	var loads atomic.Int64
	src := contextcache.SourceFunc(func(ctx context.Context, courseID, videoURL string) (contextcache.Document, error) {
		loads.Add(1)
		return contextcache.Document{Title: "Introduction", Text: "Welcome to the course."}, nil
	})
	ctx := context.Background()
	var instances []*contextcache.Cache
	for range 2 {
		c, err := contextcache.New(src, contextcache.Config{Redis: rdb, Prefix: "lms:"})
		if err != nil {
			panic(err)
		}
		defer c.Close()
		if err := c.LoadScripts(ctx); err != nil { // optional: saves a round trip per script
			panic(err)
		}
		if err := c.Start(ctx); err != nil { // receive the other instances' invalidations
			panic(err)
		}
		instances = append(instances, c)
	}
	a, b := instances[0], instances[1]

	r, _ := a.Get(ctx, "course-1", "intro.mp4")
	fmt.Println("a:", r.Document.Title, r.Tier)
	r, _ = b.Get(ctx, "course-1", "intro.mp4")
	fmt.Println("b:", r.Document.Title, r.Tier)
	fmt.Println("loads:", loads.Load())
	for _, k := range mr.Keys() {
		fmt.Println("key:", k[:len("lms:contextcache:{")]+"…"+k[strings.LastIndex(k, "}"):])
	}

	// The transcript changed: one call drops L2 and, through pub/sub, both
	// L1 copies.
	if err := a.Invalidate(ctx, "course-1", "intro.mp4"); err != nil {
		panic(err)
	}
	for i := 0; i < 5000 && b.Stats().InvalidationsReceived == 0; i++ { // b's subscriber applies it
		time.Sleep(time.Millisecond)
	}
	r, _ = b.Get(ctx, "course-1", "intro.mp4")
	fmt.Println("b after Invalidate:", r.Tier)
	// Output:
	// a: Introduction source
	// b: Introduction l2
	// loads: 1
	// key: lms:contextcache:{…}:doc
	// b after Invalidate: source
}
