package mongosource_test

import (
	"context"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/contextcache/mongosource"
)

// This example wires a MongoDB Source and a Redis L2 together. It is not
// run: it needs a MongoDB and a Redis.
func ExampleNew() {
	ctx := context.Background()
	client, err := mongo.Connect(mongosource.ClientOptions("mongodb://127.0.0.1:27017"))
	if err != nil {
		panic(err)
	}
	defer func() { _ = client.Disconnect(ctx) }()

	src, err := mongosource.New(client.Database("lms").Collection("transcripts"), mongosource.Config{})
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
	if err := cache.LoadScripts(ctx); err != nil { // warm Redis' script cache
		fmt.Println(err)
	}
	if err := cache.Start(ctx); err != nil { // invalidations from other instances
		fmt.Println(err)
	}
	r, err := cache.Get(ctx, "65f1c0ffee0000000000abcd", "https://cdn.example/v/42.mp4")
	fmt.Println(r.Document.Title, err)
}
