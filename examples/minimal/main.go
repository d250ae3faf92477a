// Command minimal is the shortest correct wiring of chatscale: Redis,
// MongoDB (transcripts in the collection "transcripts", course IDs as
// ObjectIDs) and OpenAI from the environment, one tutor turn.
//
//	REDIS_URL=redis://127.0.0.1:6379 MONGODB_URI=mongodb://127.0.0.1:27017 MONGODB_DATABASE=lms \
//	OPENAI_API_KEY=sk-... go run ./examples/minimal <course-id> <video-url> "What is a goroutine?"
package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/contextcache/mongosource"
	"github.com/chatscale/chatscale/ratelimit"
	"github.com/chatscale/chatscale/threads"
)

func main() {
	var missing []string
	for _, k := range []string{"REDIS_URL", "MONGODB_URI", "MONGODB_DATABASE", "OPENAI_API_KEY"} {
		if os.Getenv(k) == "" {
			missing = append(missing, k)
		}
	}
	switch {
	case len(missing) > 0:
		fmt.Fprintf(os.Stderr, "minimal: set %s (examples/server runs with no configuration)\n", strings.Join(missing, ", "))
		os.Exit(2)
	case len(os.Args) != 4:
		fmt.Fprintln(os.Stderr, "usage: minimal <course-id> <video-url> <question>")
		os.Exit(2)
	}
	if err := run(context.Background(), os.Args[1], os.Args[2], os.Args[3]); err != nil {
		fmt.Fprintln(os.Stderr, "minimal:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, course, video, question string) error {
	opt, err := redis.ParseURL(os.Getenv("REDIS_URL"))
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	mc, err := mongo.Connect(mongosource.ClientOptions(os.Getenv("MONGODB_URI")))
	if err != nil {
		return err
	}
	defer mc.Disconnect(context.WithoutCancel(ctx))
	// must panics on an error: these constructors fail only for an
	// impossible configuration, a programming error.
	src := must(mongosource.New(mc.Database(os.Getenv("MONGODB_DATABASE")).Collection("transcripts"), mongosource.Config{}))
	transcripts := must(contextcache.New(src, contextcache.Config{Redis: rdb}))
	defer transcripts.Close()
	store := must(threads.NewRedis(rdb, threads.Config{}))
	requests := must(ratelimit.NewRedis(rdb, ratelimit.PerMinute(500), ratelimit.Config{Name: "requests", HashTag: "openai"}))
	tokens := must(ratelimit.NewRedis(rdb, ratelimit.PerMinute(200_000), ratelimit.Config{Name: "tokens", HashTag: "openai"}))
	client := must(chat.NewClient(chat.NewOpenAI("https://api.openai.com/v1", os.Getenv("OPENAI_API_KEY"), 64),
		chat.Config{Requests: requests, Tokens: tokens, Redis: rdb}))
	defer client.Close() // sends the token settlements it holds
	svc := must(chat.NewService(chat.ServiceConfig{Threads: store, Transcripts: transcripts, Completer: client, Model: "gpt-4o-mini"}))
	defer svc.Close(context.WithoutCancel(ctx))

	// A server maps chat.ErrInvalidRequest, ErrRateLimited and ErrUnavailable to 400, 429 and 503.
	resp, err := svc.Ask(ctx, chat.Request{UserID: "minimal-example", CourseID: course, VideoURL: video, Message: question})
	if err != nil {
		return err
	}
	fmt.Println(resp.Reply)
	if resp.Degraded {
		fmt.Fprintln(os.Stderr, "degraded:", resp.Reasons)
	}
	return nil
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
