package chatscale_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/ratelimit"
	"github.com/chatscale/chatscale/threads"
)

// Example wires the four packages into one tutor turn by hand: open the
// thread, get the transcript, build the prompt, ask the model within the
// shared budgets, store the exchange. Redis is miniredis and the upstream
// a local fake here; in production they are a *redis.Client (or a
// ClusterClient) and the OpenAI API.
func Example() {
	ctx := context.Background()

	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"finish_reason":"stop",`+
			`"message":{"role":"assistant","content":"A goroutine is a function running concurrently with others."}}],`+
			`"usage":{"prompt_tokens":40,"completion_tokens":12,"total_tokens":52}}`)
	}))
	defer upstream.Close()

	// Conversations, shared by every instance through Redis.
	store, err := threads.NewRedis(rdb, threads.Config{})
	if err != nil {
		panic(err)
	}
	// Transcripts: any contextcache.Source (mongosource.Source reads
	// MongoDB), cached in process and in Redis.
	src := contextcache.SourceFunc(func(ctx context.Context, courseID, videoURL string) (contextcache.Document, error) {
		return contextcache.Document{CourseID: courseID, VideoURL: videoURL, Title: "Goroutines",
			Text: "Goroutines are functions that run concurrently with other functions."}, nil
	})
	transcripts, err := contextcache.New(src, contextcache.Config{Redis: rdb})
	if err != nil {
		panic(err)
	}
	defer transcripts.Close()
	// The upstream's budgets, shared by every instance: one hash tag, so
	// a request and its tokens are spent in one script.
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

	// One turn.
	const user, course, video = "learner-1", "go-101", "https://videos.example/go-101/3"
	question := "What is a goroutine?"
	sess, err := store.Open(ctx, threads.OpenRequest{UserID: user, CourseID: course, VideoURL: video, HistoryLimit: 20})
	if err != nil {
		panic(err)
	}
	res, err := transcripts.Get(ctx, course, video)
	if err != nil {
		panic(err)
	}
	msgs := []openai.ChatCompletionMessage{{
		Role:    openai.ChatMessageRoleSystem,
		Content: "You are a patient tutor. Transcript of \"" + res.Document.Title + "\":\n" + res.Document.Text,
	}}
	for _, m := range sess.History {
		msgs = append(msgs, openai.ChatCompletionMessage{Role: string(m.Role), Content: m.Content})
	}
	msgs = append(msgs, openai.ChatCompletionMessage{Role: openai.ChatMessageRoleUser, Content: question})
	resp, err := client.CreateChatCompletion(ctx, openai.ChatCompletionRequest{
		Model: "gpt-4o-mini", Messages: msgs, MaxCompletionTokens: 300,
	})
	if err != nil {
		panic(err)
	}
	reply := resp.Choices[0].Message.Content
	if !chat.IsDegraded(resp) { // a fallback reply is not the tutor's words
		err = store.Append(ctx, sess.Thread.ID,
			threads.Message{Role: threads.RoleUser, Content: question},
			threads.Message{Role: threads.RoleAssistant, Content: reply})
		if err != nil {
			panic(err)
		}
	}
	history, _ := store.History(ctx, sess.Thread.ID, 0)
	fmt.Println(reply)
	fmt.Println(sess.Created, len(history))
	// Output:
	// A goroutine is a function running concurrently with others.
	// true 2
}
