package contextcache_test

import (
	"context"
	"errors"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/mongo"

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

// This example wires a MongoSource and a Redis L2 together. It is not run:
// it needs a MongoDB and a Redis.
func ExampleNewMongo() {
	ctx := context.Background()
	client, err := mongo.Connect(contextcache.ClientOptions("mongodb://127.0.0.1:27017"))
	if err != nil {
		panic(err)
	}
	defer func() { _ = client.Disconnect(ctx) }()

	src, err := contextcache.NewMongo(client.Database("lms").Collection("transcripts"), contextcache.MongoConfig{})
	if err != nil {
		panic(err)
	}
	if err := src.EnsureIndexes(ctx); err != nil {
		panic(err)
	}
	cache, err := contextcache.New(src, contextcache.Config{
		// Redis: rdb, // a redis.UniversalClient shared by every instance
	})
	if err != nil {
		panic(err)
	}
	defer cache.Close()
	if err := cache.Start(ctx); err != nil { // invalidations from other instances
		fmt.Println(err)
	}
	r, err := cache.Get(ctx, "65f1c0ffee0000000000abcd", "https://cdn.example/v/42.mp4")
	fmt.Println(r.Document.Title, err)
}
