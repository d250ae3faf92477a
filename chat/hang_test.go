package chat

import (
	"context"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// TestHungRedisBehindTheBreaker puts a proxy between the Client (its
// breaker's shared state and its Redis budgets) and Redis (the real server
// with CHATSCALE_REDIS_URL, miniredis otherwise), and stops it answering.
// The client's socket timeouts are a minute and the callers' ctx 30 s, far
// beyond RedisTimeout, so calls that complete were not held by Redis; a
// call held until its ctx ended would fail with ctx's error.
func TestHungRedisBehindTheBreaker(t *testing.T) {
	for _, honour := range []bool{false, true} {
		name := "ContextTimeoutEnabled=false"
		if honour {
			name = "ContextTimeoutEnabled=true"
		}
		t.Run(name, func(t *testing.T) {
			pe := testutil.RedisBehindProxy(t)
			fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
			baseline := runtime.NumGoroutine()
			rdb := pe.NewClient(func(o *redis.Options) {
				o.ReadTimeout, o.WriteTimeout, o.DialTimeout = time.Minute, time.Minute, time.Minute
				o.PoolTimeout = time.Minute
				o.MaxRetries = -1
				o.ContextTimeoutEnabled = honour
			})
			bound := 100 * time.Millisecond
			lcfg := ratelimit.Config{Prefix: pe.Env.Prefix, RedisTimeout: bound}
			reqs, err := ratelimit.NewRedis(rdb, ratelimit.PerMinute(1000), lcfg)
			if err != nil {
				t.Fatal(err)
			}
			toks, err := ratelimit.NewRedis(rdb, ratelimit.PerMinute(1_000_000), lcfg)
			if err != nil {
				t.Fatal(err)
			}
			// No keep-alive to the upstream, so that no HTTP connection
			// outlives the test's calls.
			hc := &http.Client{Transport: Transport(&http.Transport{DisableKeepAlives: true})}
			ocfg := openai.DefaultConfig("sk-test")
			ocfg.BaseURL, ocfg.HTTPClient = fake.URL, hc
			c, err := NewClient(openai.NewClientWithConfig(ocfg), Config{
				Redis: rdb, Prefix: pe.Env.Prefix, RedisTimeout: bound, Requests: reqs, Tokens: toks,
				MaxAttempts: 1, BreakerMinRequests: 3, OpenFor: time.Hour,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			pe.Proxy.Hang()
			// The first call waits for the first read of the shared state,
			// which the bound ends; the budgets fall back to their local
			// limiters.
			for i := range 3 {
				resp, err := c.CreateChatCompletion(ctx, request("with Redis hung"))
				if err != nil || IsDegraded(resp) || content(resp) == "" {
					t.Fatalf("call %d with Redis hung: degraded %v, err %v; want the upstream's reply", i, IsDegraded(resp), err)
				}
			}
			if s := c.Stats(); s.OK != 3 || s.StoreErrors < 1 || s.Breaker != "closed" {
				t.Fatalf("Stats with Redis hung = %+v; want 3 OK calls and the failed read counted", s)
			}
			if s := reqs.Stats(); s.Fallback < 3 || !s.Unavailable {
				t.Fatalf("request budget with Redis hung: %+v; want its fallback to answer", s)
			}

			// The upstream fails: the breaker trips in this process though
			// the trip cannot be published, and the next call falls back
			// without reaching the upstream.
			fake.Always(&testutil.FakeStep{Status: 502})
			errorsBefore := c.Stats().StoreErrors
			for i := range 3 {
				if _, err := c.CreateChatCompletion(ctx, request("upstream down")); err != nil {
					t.Fatalf("failing call %d: %v; want the fallback reply", i, err)
				}
			}
			if s := c.Stats(); s.Trips != 1 || s.Breaker != "open" || s.StoreErrors <= errorsBefore {
				t.Fatalf("Stats after the trip = %+v; want one trip, open, its publication failed", s)
			}
			upstream := fake.Requests()
			resp, err := c.CreateChatCompletion(ctx, request("while open"))
			if err != nil || DegradedReason(resp.Header()) != ReasonBreakerOpen || fake.Requests() != upstream {
				t.Fatalf("call while open: err %v, reason %q, %d upstream requests (was %d)", err, DegradedReason(resp.Header()), fake.Requests(), upstream)
			}

			pe.Proxy.Heal()
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if err := rdb.Close(); err != nil {
				t.Fatal(err)
			}
			if !testutil.Eventually(10*time.Second, func() bool { return runtime.NumGoroutine() <= baseline }) {
				buf := make([]byte, 1<<20)
				t.Fatalf("%d goroutines after the proxy healed and the clients closed, want at most %d as before\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
			}
		})
	}
}
