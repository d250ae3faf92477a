package chat

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// BenchmarkOverhead compares, in one run, a bare go-openai call with the
// same call through a Client (local request and token budgets, breaker,
// bulkhead, metrics), both on the same tuned http.Client against the
// fake with zero latency. Calls alternate so that noise hits both alike;
// the ratio metric is client/bare.
func BenchmarkOverhead(b *testing.B) {
	fake := testutil.OpenAI(b, testutil.OpenAIConfig{})
	cfg := openai.DefaultConfig("sk-bench")
	cfg.BaseURL = fake.URL
	cfg.HTTPClient = HTTPClient(64)
	bare := openai.NewClientWithConfig(cfg)
	reqs, _ := ratelimit.NewLocal(ratelimit.PerSecond(1e9), ratelimit.Config{})
	toks, _ := ratelimit.NewLocal(ratelimit.PerSecond(1e9), ratelimit.Config{})
	c, err := NewClient(bare, Config{Requests: reqs, Tokens: toks, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	req := openai.ChatCompletionRequest{
		Model: "gpt-4o-mini", MaxCompletionTokens: 64,
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "benchmark"}},
	}
	for range 100 { // warm the connection pool
		_, _ = bare.CreateChatCompletion(ctx, req)
	}
	var tBare, tClient time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if _, err := bare.CreateChatCompletion(ctx, req); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		resp, err := c.CreateChatCompletion(ctx, req)
		if err != nil || IsDegraded(resp) {
			b.Fatal(err)
		}
		tBare += t1.Sub(t0)
		tClient += time.Since(t1)
	}
	b.ReportMetric(float64(tBare.Nanoseconds())/float64(b.N), "bare-ns/call")
	b.ReportMetric(float64(tClient.Nanoseconds())/float64(b.N), "client-ns/call")
	b.ReportMetric(float64(tClient)/float64(tBare), "ratio")
}

// BenchmarkFallbackOpen measures a call while the breaker is open: the
// fallback reply, with no upstream call and no budget spent.
func BenchmarkFallbackOpen(b *testing.B) {
	fake := testutil.OpenAI(b, testutil.OpenAIConfig{})
	reqs, _ := ratelimit.NewLocal(ratelimit.PerSecond(1e9), ratelimit.Config{})
	c, err := NewClient(NewOpenAI(fake.URL, "sk-bench", 16), Config{Requests: reqs, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	c.br.trip(ctx, "benchmark", "")
	req := openai.ChatCompletionRequest{
		Model:    "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "benchmark"}},
	}
	b.Run("unary", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			resp, _ := c.CreateChatCompletion(ctx, req)
			if !IsDegraded(resp) {
				b.Fatal("not degraded")
			}
		}
	})
	b.Run("stream", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			s, err := c.CreateChatCompletionStream(ctx, req)
			if err != nil || !IsDegradedStream(s) {
				b.Fatal(err)
			}
			_ = s.Close()
		}
	})
	if fake.Requests() != 0 {
		b.Fatalf("%d upstream calls while open", fake.Requests())
	}
}
