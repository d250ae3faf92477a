package chat

import (
	"context"
	"errors"
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
// fake with zero latency. Calls alternate, and so does which of the two
// goes first, so that noise hits both alike;
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
	callBare := func() time.Duration {
		t0 := time.Now()
		if _, err := bare.CreateChatCompletion(ctx, req); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	callClient := func() time.Duration {
		t0 := time.Now()
		resp, err := c.CreateChatCompletion(ctx, req)
		if err != nil || IsDegraded(resp) {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	for i := range b.N {
		// Alternate which goes first, so neither gains from the order.
		if i%2 == 0 {
			tBare += callBare()
			tClient += callClient()
		} else {
			tClient += callClient()
			tBare += callBare()
		}
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

// stubCompleter answers at once in process, so BenchmarkWrapper measures
// the Client's own cost per call without HTTP.
type stubCompleter struct{ resp openai.ChatCompletionResponse }

func (s stubCompleter) CreateChatCompletion(context.Context, openai.ChatCompletionRequest) (openai.ChatCompletionResponse, error) {
	return s.resp, nil
}

func (s stubCompleter) CreateChatCompletionStream(context.Context, openai.ChatCompletionRequest) (*openai.ChatCompletionStream, error) {
	return nil, errors.New("stub: no streams")
}

// BenchmarkWrapper is the Client's own cost per call (local request and
// token budgets, breaker, bulkhead, attempt timeout, metrics) around an
// in-process Completer.
func BenchmarkWrapper(b *testing.B) {
	inner := stubCompleter{resp: openai.ChatCompletionResponse{Usage: openai.Usage{TotalTokens: 20}}}
	reqs, _ := ratelimit.NewLocal(ratelimit.PerSecond(1e9), ratelimit.Config{})
	toks, _ := ratelimit.NewLocal(ratelimit.PerSecond(1e9), ratelimit.Config{})
	c, err := NewClient(inner, Config{Requests: reqs, Tokens: toks, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	req := openai.ChatCompletionRequest{
		Model: "gpt-4o-mini", MaxCompletionTokens: 64,
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "benchmark"}},
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.CreateChatCompletion(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
