package chat

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// newBenchFailover returns a Failover whose first member is c and whose
// second is a Client on a fake of its own.
func newBenchFailover(b *testing.B, c *Client) *Failover {
	b.Helper()
	fake := testutil.OpenAI(b, testutil.OpenAIConfig{})
	second, err := NewClient(NewOpenAI(fake.URL, "sk-bench", 16), Config{Name: "second", DisableFallback: true})
	if err != nil {
		b.Fatal(err)
	}
	f, err := NewFailover([]Member{
		{Name: "first", Completer: c, Model: "gpt-4o-mini"},
		{Name: "second", Completer: second, Model: "gpt-4o-mini"},
	}, FailoverConfig{Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = f.Close(); _ = second.Close() })
	return f
}

// BenchmarkFailoverOverhead compares, in one run, a call through a Client
// with the same call through a Failover whose first member is that
// Client, healthy, against the fake with zero latency. Calls alternate,
// and so does which goes first; the overhead metric is the difference.
func BenchmarkFailoverOverhead(b *testing.B) {
	fake := testutil.OpenAI(b, testutil.OpenAIConfig{})
	reqs, _ := ratelimit.NewLocal(ratelimit.PerSecond(1e9), ratelimit.Config{})
	toks, _ := ratelimit.NewLocal(ratelimit.PerSecond(1e9), ratelimit.Config{})
	c, err := NewClient(NewOpenAI(fake.URL, "sk-bench", 64), Config{Requests: reqs, Tokens: toks, DisableFallback: true, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	f := newBenchFailover(b, c)
	ctx := context.Background()
	req := openai.ChatCompletionRequest{
		Model: "gpt-4o-mini", MaxCompletionTokens: 64,
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "benchmark"}},
	}
	for range 100 { // warm the connection pool
		_, _ = c.CreateChatCompletion(ctx, req)
	}
	callClient := func() time.Duration {
		t0 := time.Now()
		if _, err := c.CreateChatCompletion(ctx, req); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	callChain := func() time.Duration {
		t0 := time.Now()
		resp, err := f.CreateChatCompletion(ctx, req)
		if err != nil || AnsweredBy(resp.Header()) != "first" {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	var tClient, tChain time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			tClient += callClient()
			tChain += callChain()
		} else {
			tChain += callChain()
			tClient += callClient()
		}
	}
	b.ReportMetric(float64(tClient.Nanoseconds())/float64(b.N), "client-ns/call")
	b.ReportMetric(float64(tChain.Nanoseconds())/float64(b.N), "chain-ns/call")
	b.ReportMetric(float64((tChain-tClient).Nanoseconds())/float64(b.N), "overhead-ns/call")
}

// BenchmarkFailoverWrapper is the chain's own cost per call and
// allocations: a Client around an in-process Completer, alone and as the
// healthy first member of a Failover.
func BenchmarkFailoverWrapper(b *testing.B) {
	// The response carries a header, as go-openai's do.
	inner := stubCompleter{resp: openai.ChatCompletionResponse{Usage: openai.Usage{TotalTokens: 20}}}
	inner.resp.SetHeader(http.Header{"Content-Type": []string{"application/json"}})
	c, err := NewClient(inner, Config{DisableFallback: true, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	f := newBenchFailover(b, c)
	ctx := context.Background()
	req := openai.ChatCompletionRequest{
		Model:    "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "benchmark"}},
	}
	b.Run("client", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if _, err := c.CreateChatCompletion(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("failover", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if _, err := f.CreateChatCompletion(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkFailoverBothOpen measures a call while both members' breakers
// are open: the fallback reply, with no upstream call.
func BenchmarkFailoverBothOpen(b *testing.B) {
	fake := testutil.OpenAI(b, testutil.OpenAIConfig{})
	c, err := NewClient(NewOpenAI(fake.URL, "sk-bench", 16), Config{DisableFallback: true})
	if err != nil {
		b.Fatal(err)
	}
	f := newBenchFailover(b, c)
	ctx := context.Background()
	for i := range f.members {
		f.members[i].client.br.trip(ctx, "benchmark", "")
	}
	req := openai.ChatCompletionRequest{
		Model:    "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "benchmark"}},
	}
	b.Run("unary", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			resp, _ := f.CreateChatCompletion(ctx, req)
			if !IsDegraded(resp) {
				b.Fatal("not degraded")
			}
		}
	})
	b.Run("stream", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			s, err := f.CreateChatCompletionStream(ctx, req)
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
