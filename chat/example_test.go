package chat_test

import (
	"context"
	"fmt"
	"time"

	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/internal/testutil"
)

func Example() {
	// A fake OpenAI on 127.0.0.1 stands in for the real API.
	fake := testutil.NewFakeOpenAI(testutil.OpenAIConfig{})
	defer fake.Close()

	client, err := chat.NewClient(chat.NewOpenAI(fake.URL, "sk-example", 16), chat.Config{
		MaxAttempts: 2,
		BaseDelay:   time.Millisecond,
	})
	if err != nil {
		panic(err)
	}
	req := openai.ChatCompletionRequest{
		Model:    "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "What is a goroutine?"}},
	}
	ctx := context.Background()

	resp, _ := client.CreateChatCompletion(ctx, req)
	fmt.Println(resp.Choices[0].Message.Content, chat.IsDegraded(resp))

	// The upstream fails: after the retries, the fallback answers.
	fake.Always(&testutil.FakeStep{Status: 503})
	resp, _ = client.CreateChatCompletion(ctx, req)
	fmt.Println(resp.Choices[0].Message.Content, chat.IsDegraded(resp), chat.DegradedReason(resp.Header()))
	fmt.Println(client.Stats().Attempts)

	// Output:
	// reply to "What is a goroutine?" (model gpt-4o-mini, 1 messages, max_tokens 0) false
	// I'm experiencing high load. Please try again in a moment. true retries_exhausted
	// 3
}
