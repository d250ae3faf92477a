package chat_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/ratelimit"
	"github.com/chatscale/chatscale/threads"
)

// ExampleService wires a Service from its parts and runs two turns.
// Redis is miniredis and the upstream a local fake here; in production
// they are a *redis.Client (or a ClusterClient) and the OpenAI API, and
// the transcripts come from MongoDB through contextcache/mongosource.
func ExampleService() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"choices":[{"message":{"role":"assistant","content":"A function running concurrently with others."},"finish_reason":"stop"}],`+
			`"usage":{"prompt_tokens":120,"completion_tokens":8,"total_tokens":128}}`)
	}))
	defer upstream.Close()

	store, err := threads.NewRedis(rdb, threads.Config{})
	if err != nil {
		panic(err)
	}
	src := contextcache.SourceFunc(func(ctx context.Context, courseID, videoURL string) (contextcache.Document, error) {
		return contextcache.Document{Title: "Goroutines", Text: "Goroutines are functions that run concurrently."}, nil
	})
	transcripts, err := contextcache.New(src, contextcache.Config{Redis: rdb})
	if err != nil {
		panic(err)
	}
	defer transcripts.Close()
	requests, err := ratelimit.NewRedis(rdb, ratelimit.PerMinute(10_000), ratelimit.Config{Name: "requests", HashTag: "openai"})
	if err != nil {
		panic(err)
	}
	tokens, err := ratelimit.NewRedis(rdb, ratelimit.PerMinute(2_000_000), ratelimit.Config{Name: "tokens", HashTag: "openai"})
	if err != nil {
		panic(err)
	}
	client, err := chat.NewClient(chat.NewOpenAI(upstream.URL+"/v1", "sk-example", 64),
		chat.Config{Requests: requests, Tokens: tokens, Redis: rdb})
	if err != nil {
		panic(err)
	}
	defer client.Close()
	perLearner, err := ratelimit.NewRedis(rdb, ratelimit.PerMinute(10), ratelimit.Config{Name: "learner-turns"})
	if err != nil {
		panic(err)
	}

	svc, err := chat.NewService(chat.ServiceConfig{
		Threads:      store,
		Transcripts:  transcripts,
		Completer:    client,
		Model:        "gpt-4o-mini",
		UserRequests: perLearner,
	})
	if err != nil {
		panic(err)
	}
	defer svc.Close(context.Background())

	ctx := context.Background()
	req := chat.Request{UserID: "learner-1", CourseID: "go-101", VideoURL: "https://videos.example/go-101/3", Message: "What is a goroutine?"}
	resp, err := svc.Ask(ctx, req)
	if err != nil {
		panic(err)
	}
	fmt.Println(resp.Reply)
	fmt.Println(resp.Created, resp.Stored, resp.Degraded, resp.Usage.PromptTokens)

	// A host maps the errors to HTTP statuses with errors.Is.
	req.Message = ""
	_, err = svc.Ask(ctx, req)
	fmt.Println(errors.Is(err, chat.ErrInvalidRequest), err)
	// Output:
	// A function running concurrently with others.
	// true true false 120
	// true chat: invalid request: Message: empty
}
