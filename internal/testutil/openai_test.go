package testutil

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sashabaranov/go-openai"
)

func fakeClient(f *FakeOpenAI) *openai.Client {
	cfg := openai.DefaultConfig("sk-test")
	cfg.BaseURL = f.URL
	return openai.NewClientWithConfig(cfg)
}

func fakeRequest(msg string) openai.ChatCompletionRequest {
	return openai.ChatCompletionRequest{
		Model: "gpt-4o-mini", MaxCompletionTokens: 10,
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: msg}},
	}
}

func TestFakeOpenAIRepliesRevealRequest(t *testing.T) {
	f := OpenAI(t, OpenAIConfig{})
	req := fakeRequest("what is a monad?")
	resp, err := fakeClient(f).CreateChatCompletion(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	want := `reply to "what is a monad?" (model gpt-4o-mini, 1 messages, max_tokens 10)`
	if got := resp.Choices[0].Message.Content; got != want {
		t.Fatalf("reply %q, want %q", got, want)
	}
	if resp.Usage.PromptTokens != promptTokens(req) || resp.Usage.TotalTokens == 0 {
		t.Fatalf("usage %+v", resp.Usage)
	}
	ev := f.Events()
	if len(ev) != 1 || ev[0].Request.Messages[0].Content != req.Messages[0].Content || ev[0].Status != 200 || ev[0].Released.Before(ev[0].Arrived) {
		t.Fatalf("events %+v", ev)
	}
}

func TestFakeOpenAIStreams(t *testing.T) {
	f := OpenAI(t, OpenAIConfig{})
	req := fakeRequest("stream please")
	s, err := fakeClient(f).CreateChatCompletionStream(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var b strings.Builder
	for range 100 {
		chunk, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(chunk.Choices[0].Delta.Content)
	}
	if b.String() != Reply(req) {
		t.Fatalf("streamed %q", b.String())
	}
}

func TestFakeOpenAIRateLimits(t *testing.T) {
	f := OpenAI(t, OpenAIConfig{RPM: 2})
	for i := range 3 {
		resp, err := http.Post(f.URL+"/chat/completions", "application/json",
			strings.NewReader(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		h := resp.Header
		switch i {
		case 0, 1:
			if resp.StatusCode != 200 || h.Get("X-Ratelimit-Remaining-Requests") != []string{"1", "0"}[i] || h.Get("X-Ratelimit-Limit-Requests") != "2" {
				t.Fatalf("request %d: %d %v", i, resp.StatusCode, h)
			}
		case 2:
			if resp.StatusCode != 429 || h.Get("Retry-After") == "" || h.Get("Retry-After-Ms") == "" || h.Get("X-Ratelimit-Reset-Requests") == "" {
				t.Fatalf("over RPM: %d %v", resp.StatusCode, h)
			}
		}
	}
}

func TestFakeOpenAIScriptAndCounters(t *testing.T) {
	f := OpenAI(t, OpenAIConfig{})
	c := fakeClient(f)
	f.Script(FakeStep{Status: 503}, FakeStep{Status: 429, Code: "insufficient_quota"})
	_, err := c.CreateChatCompletion(context.Background(), fakeRequest("a"))
	var ae *openai.APIError
	if !errors.As(err, &ae) || ae.HTTPStatusCode != 503 {
		t.Fatalf("first: %v", err)
	}
	_, err = c.CreateChatCompletion(context.Background(), fakeRequest("b"))
	if !errors.As(err, &ae) || ae.HTTPStatusCode != 429 || ae.Code != "insufficient_quota" {
		t.Fatalf("second: %v", err)
	}
	if _, err := c.CreateChatCompletion(context.Background(), fakeRequest("c")); err != nil {
		t.Fatalf("after script: %v", err)
	}

	// Hung requests overlap; they end when their client leaves.
	f.Always(&FakeStep{Hang: true})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = c.CreateChatCompletion(ctx, fakeRequest("hang"))
		}()
	}
	if err := f.WaitRequests(context.Background(), 8); err != nil {
		t.Fatal(err)
	}
	if f.InFlight() != 5 || f.MaxInFlight() != 5 {
		t.Fatalf("in flight %d, max %d", f.InFlight(), f.MaxInFlight())
	}
	cancel()
	wg.Wait()
	if f.Requests() != 8 || f.RequestsWithin(time.Hour) != 8 || f.MaxRequestsPerWindow(time.Hour) != 8 {
		t.Fatalf("counters %d %d %d", f.Requests(), f.RequestsWithin(time.Hour), f.MaxRequestsPerWindow(time.Hour))
	}
}

func TestFakeOpenAICloseEndsHangs(t *testing.T) {
	f := NewFakeOpenAI(OpenAIConfig{HangRate: 1})
	done := make(chan error, 1)
	go func() {
		_, err := fakeClient(f).CreateChatCompletion(context.Background(), fakeRequest("hang"))
		done <- err
	}()
	if err := f.WaitRequests(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := <-done; err == nil {
		t.Fatal("hung request got an answer")
	}
	f.Close() // idempotent
}

func TestFakeOpenAIStreamUsageOnRequest(t *testing.T) {
	f := OpenAI(t, OpenAIConfig{})
	req := fakeRequest("count me")
	req.StreamOptions = &openai.StreamOptions{IncludeUsage: true}
	s, err := fakeClient(f).CreateChatCompletionStream(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var (
		b     strings.Builder
		got   *openai.Usage
		after int // chunks after the usage chunk
	)
	for range 100 {
		chunk, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if got != nil {
			after++
		}
		for _, c := range chunk.Choices {
			b.WriteString(c.Delta.Content)
		}
		if chunk.Usage != nil {
			if len(chunk.Choices) != 0 {
				t.Fatalf("usage chunk has %d choices, want none", len(chunk.Choices))
			}
			got = chunk.Usage
		}
	}
	if b.String() != Reply(req) {
		t.Fatalf("streamed %q", b.String())
	}
	if want := usage(req, Reply(req)); got == nil || *got != want || after != 0 {
		t.Fatalf("usage %+v (want %+v), %d chunks after it", got, want, after)
	}
	if ev := f.Events(); len(ev) != 1 || ev[0].Request.StreamOptions == nil || !ev[0].Request.StreamOptions.IncludeUsage {
		t.Fatalf("events %+v", ev)
	}
}

func TestFakeOpenAIStreamError(t *testing.T) {
	f := OpenAI(t, OpenAIConfig{})
	f.Script(FakeStep{StreamError: true})
	s, err := fakeClient(f).CreateChatCompletionStream(context.Background(), fakeRequest("fail"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = s.Recv()
	var ae *openai.APIError
	if !errors.As(err, &ae) || ae.Type != "server_error" {
		t.Fatalf("recv: %v", err)
	}
}
