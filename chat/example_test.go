package chat_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"time"

	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale/chat"
)

func Example() {
	// A stand-in for the Chat Completions endpoint: it answers until it
	// is down, then fails with 503.
	var down atomic.Bool
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if down.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"error":{"message":"overloaded","type":"server_error"}}`)
			return
		}
		fmt.Fprint(w, `{"choices":[{"message":{"role":"assistant","content":"A lightweight thread."},"finish_reason":"stop"}]}`)
	}))
	defer upstream.Close()

	client, err := chat.NewClient(chat.NewOpenAI(upstream.URL+"/v1", "sk-example", 16), chat.Config{
		MaxAttempts: 2,
		BaseDelay:   time.Millisecond,
	})
	if err != nil {
		panic(err)
	}
	defer client.Close()
	req := openai.ChatCompletionRequest{
		Model:    "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "What is a goroutine?"}},
	}
	ctx := context.Background()

	resp, _ := client.CreateChatCompletion(ctx, req)
	fmt.Println(resp.Choices[0].Message.Content, chat.IsDegraded(resp))

	// The upstream fails: after the retries, the fallback answers.
	down.Store(true)
	resp, _ = client.CreateChatCompletion(ctx, req)
	fmt.Println(resp.Choices[0].Message.Content, chat.IsDegraded(resp), chat.DegradedReason(resp.Header()))
	fmt.Println(client.Stats().Attempts)

	// Output:
	// A lightweight thread. false
	// I'm experiencing high load. Please try again in a moment. true retries_exhausted
	// 3
}
