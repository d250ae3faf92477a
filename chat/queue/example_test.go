package queue_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/chat/queue"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/threads"
)

// Example enqueues a turn on one side and runs it on the other. Redis is
// miniredis and the upstream a local fake here; in production the Client
// lives in the web tier, the Worker in any instance, both on the same
// Redis with the same Config.
func Example() {
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

	// The worker side: a Service (see chat.Service) and a Worker over it.
	store, err := threads.NewRedis(rdb, threads.Config{})
	if err != nil {
		panic(err)
	}
	transcripts, err := contextcache.New(contextcache.SourceFunc(func(ctx context.Context, courseID, videoURL string) (contextcache.Document, error) {
		return contextcache.Document{Title: "Goroutines", Text: "Goroutines are functions that run concurrently."}, nil
	}), contextcache.Config{Redis: rdb})
	if err != nil {
		panic(err)
	}
	defer transcripts.Close()
	// Without a fallback the queue retries what the upstream could not
	// answer, instead of completing the job with the fallback text.
	client, err := chat.NewClient(chat.NewOpenAI(upstream.URL+"/v1", "sk-example", 64), chat.Config{DisableFallback: true})
	if err != nil {
		panic(err)
	}
	defer client.Close()
	svc, err := chat.NewService(chat.ServiceConfig{Threads: store, Transcripts: transcripts, Completer: client, Model: "gpt-4o-mini"})
	if err != nil {
		panic(err)
	}
	defer svc.Close(context.Background())
	worker, err := queue.NewWorker(rdb, svc, queue.Config{})
	if err != nil {
		panic(err)
	}
	if err := worker.Start(context.Background()); err != nil {
		panic(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = worker.Close(ctx)
	}()

	// The web side: enqueue, answer 202 with the job ID, read the outcome later.
	jobs, err := queue.NewClient(rdb, queue.Config{})
	if err != nil {
		panic(err)
	}
	defer jobs.Close()
	ctx := context.Background()
	id, err := jobs.Enqueue(ctx, chat.Request{UserID: "ada", CourseID: "go-101", VideoURL: "https://videos.example/go-101/1",
		Message: "What is a goroutine?"}, queue.IdempotencyKey("ada/submit-1"))
	if err != nil {
		panic(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := jobs.Wait(wctx, id)
	if err != nil {
		panic(err)
	}
	fmt.Println(st.State, st.Attempts)
	fmt.Println(st.Response.Reply)
	// Output:
	// done 1
	// A function running concurrently with others.
}
