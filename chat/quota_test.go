package chat

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// quotaLimiters returns per-learner request and token limiters keyed by
// user, on their own client to env's Redis, recording their scripts.
func quotaLimiters(t *testing.T, env *testutil.RedisEnv, reqLimit, tokLimit ratelimit.Limit) (ureq, utok *ratelimit.Redis, log *scriptLog) {
	t.Helper()
	rdb := env.NewClient()
	log = &scriptLog{}
	rdb.AddHook(log)
	var err error
	if ureq, err = ratelimit.NewRedis(rdb, reqLimit, ratelimit.Config{Prefix: env.Prefix + "ureq:", Name: "user_requests"}); err != nil {
		t.Fatal(err)
	}
	if utok, err = ratelimit.NewRedis(rdb, tokLimit, ratelimit.Config{Prefix: env.Prefix + "utok:", Name: "user_tokens"}); err != nil {
		t.Fatal(err)
	}
	if err := ureq.LoadScripts(context.Background()); err != nil {
		t.Fatal(err)
	}
	return ureq, utok, log
}

// spends counts the spends (not Adjusts) the log saw on key.
func (l *scriptLog) spends(key string) int {
	n := 0
	for _, op := range l.log() {
		for _, k := range op.keys {
			if !op.adjust && k == key {
				n++
			}
		}
	}
	return n
}

func quotaCtx(ctx context.Context, ureq, utok ratelimit.Limiter, user string, tokens int) context.Context {
	return withQuota(ctx, ratelimit.Cost{Limiter: ureq, Key: user, N: 1}, ratelimit.Cost{Limiter: utok, Key: user, N: tokens})
}

// The quota is spent once per call, on its first attempt, whatever the
// retries, and its tokens are settled to the usage.
func TestQuotaSpentOncePerCall(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	reqs, toks, _ := redisBudgets(t, env, slowBudget(1000), slowBudget(1_000_000))
	ureq, utok, qlog := quotaLimiters(t, env, slowBudget(10), slowBudget(100_000))
	c := newTestClient(t, fake, Config{Requests: reqs, Tokens: toks, MaxAttempts: 3}, false)
	fake.Script(testutil.FakeStep{Status: 503}, testutil.FakeStep{Status: 429})
	ctx := quotaCtx(context.Background(), ureq, utok, "u1", 500)
	resp, err := c.CreateChatCompletion(ctx, request("three attempts"))
	if err != nil || IsDegraded(resp) || fake.Requests() != 3 {
		t.Fatalf("err %v, degraded %v, upstream %d; want an answer after 3 attempts", err, IsDegraded(resp), fake.Requests())
	}
	if n := qlog.spends(ureq.Key("u1")); n != 1 {
		t.Fatalf("the quota was asked %d times, want once", n)
	}
	if err := c.Close(); err != nil { // makes the pending settlements
		t.Fatal(err)
	}
	if got := left(t, ureq, "u1"); got != 9 {
		t.Errorf("learner's requests %d, want 9", got)
	}
	if got, want := left(t, utok, "u1"), 100_000-resp.Usage.TotalTokens; got != want {
		t.Errorf("learner's tokens %d, want %d (settled to the usage)", got, want)
	}
	if got := left(t, reqs, "openai:requests"); got != 1000-3 {
		t.Errorf("shared requests %d, want %d", got, 1000-3)
	}
}

// stuckLimiter denies every cost for an hour: a WaitAll on it waits until
// its ctx ends.
type stuckLimiter struct {
	mu    sync.Mutex
	calls int
}

func (l *stuckLimiter) Allow(context.Context, string, int) (ratelimit.Decision, error) {
	l.mu.Lock()
	l.calls++
	l.mu.Unlock()
	return ratelimit.Decision{RetryAfter: time.Hour}, nil
}
func (l *stuckLimiter) Wait(ctx context.Context, _ string, _ int) error {
	<-ctx.Done()
	return ctx.Err()
}
func (l *stuckLimiter) Adjust(context.Context, string, int) error { return nil }

// callWithin runs the call and fails the test if it has not returned
// within 10 s.
func callWithin[T any](t *testing.T, what string, call func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := call()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return within 10s", what)
		panic("unreachable")
	}
}

// A learner over quota gets a *RateLimitError at once: the shared wait is
// ended, nothing stays spent, no upstream call, no fallback, no breaker
// count, no attempt; the call counts as rate_limited.
func TestQuotaShortReturnsAtOnce(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	ureq, utok, _ := quotaLimiters(t, env, slowBudget(1), slowBudget(100_000))
	if d, err := ureq.Allow(context.Background(), "u1", 1); err != nil || !d.Allowed {
		t.Fatal(d, err)
	}
	check := func(t *testing.T, c *Client, reg *prometheus.Registry, utok ratelimit.Limiter, err error) {
		t.Helper()
		var rl *RateLimitError
		if !errors.As(err, &rl) || !errors.Is(err, ErrRateLimited) || !errors.Is(err, ratelimit.ErrLimited) {
			t.Fatalf("err %v; want a *RateLimitError wrapping a *ratelimit.LimitedError", err)
		}
		if rl.Key != "u1" || rl.RetryAfter <= 0 || errors.Is(err, ErrUnavailable) {
			t.Fatalf("err %+v; want Key u1 and a RetryAfter", rl)
		}
		if st := c.Stats(); st.RateLimited != 1 || st.Attempts != 0 || st.Fallbacks != 0 || st.Unavailable != 0 || st.Errors != 0 {
			t.Fatalf("stats %+v", st)
		}
		if ok, fail := breakerCounts(c); ok+fail != 0 {
			t.Fatalf("breaker counted %d, %d", ok, fail)
		}
		if fake.Requests() != 0 {
			t.Fatalf("upstream saw %d calls", fake.Requests())
		}
		if got := left(t, utok, "u1"); got != 100_000 {
			t.Fatalf("learner's tokens %d, want all", got)
		}
		if got := counterValue(t, reg, "ai_chat_client_calls_total", "outcome", "rate_limited"); got != 1 {
			t.Fatalf("calls_total{outcome=rate_limited} = %v, want 1", got)
		}
	}

	t.Run("the shared wait is ended", func(t *testing.T) {
		stuck := &stuckLimiter{}
		reg := prometheus.NewRegistry()
		c := newTestClient(t, fake, Config{Requests: stuck, Registerer: reg}, false)
		ctx := quotaCtx(context.Background(), ureq, utok, "u1", 500)
		resp, err := callWithin(t, "a call over quota", func() (openai.ChatCompletionResponse, error) {
			return c.CreateChatCompletion(ctx, request("over quota"))
		})
		check(t, c, reg, utok, err)
		if IsDegraded(resp) || len(resp.Choices) != 0 {
			t.Fatal("a fallback answered a learner over quota")
		}
	})
	t.Run("the shared budget spent is given back", func(t *testing.T) {
		shared := &recordingLimiter{}
		reg := prometheus.NewRegistry()
		c := newTestClient(t, fake, Config{Requests: shared, Tokens: shared, Registerer: reg}, false)
		s, err := c.CreateChatCompletionStream(quotaCtx(context.Background(), ureq, utok, "u1", 500), request("over quota"))
		if s != nil {
			t.Fatal("a stream was returned to a learner over quota")
		}
		check(t, c, reg, utok, err)
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"openai:requests", "openai:tokens"} {
			if _, spent := shared.get(k); spent != 0 {
				t.Errorf("%s: %d left spent, want 0", k, spent)
			}
		}
	})
	t.Run("a local quota, asked first", func(t *testing.T) {
		lreq, err := ratelimit.NewLocal(ratelimit.PerHour(1), ratelimit.Config{})
		if err != nil {
			t.Fatal(err)
		}
		ltok, err := ratelimit.NewLocal(ratelimit.PerHour(100_000), ratelimit.Config{})
		if err != nil {
			t.Fatal(err)
		}
		_, _ = lreq.Allow(context.Background(), "u1", 1)
		reg := prometheus.NewRegistry()
		stuck := &stuckLimiter{}
		c := newTestClient(t, fake, Config{Requests: stuck, Registerer: reg}, false)
		_, err = callWithin(t, "a call over a local quota", func() (openai.ChatCompletionResponse, error) {
			return c.CreateChatCompletion(quotaCtx(context.Background(), lreq, ltok, "u1", 500), request("over quota"))
		})
		check(t, c, reg, ltok, err)
		if stuck.calls != 0 {
			t.Fatalf("the shared budget was asked %d times after a local quota refused", stuck.calls)
		}
	})
}

// counterValue returns the value of the counter name{label=value} in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no series %s{%s=%q}", name, label, value)
	return 0
}

// A learner's cost that can never fit the quota is refused as rate
// limited, with the limiter's *chatscale.InputError.
func TestQuotaCostOverBurst(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	ureq, utok, _ := quotaLimiters(t, env, slowBudget(10), slowBudget(100))
	c := newTestClient(t, fake, Config{}, false)
	_, err := c.CreateChatCompletion(quotaCtx(context.Background(), ureq, utok, "u1", 500), request("too big"))
	var rl *RateLimitError
	if !errors.As(err, &rl) || !errors.Is(err, chatscale.ErrInvalidInput) || rl.Key != "u1" {
		t.Fatalf("err %v; want a *RateLimitError wrapping the InputError", err)
	}
	if fake.Requests() != 0 || c.Stats().RateLimited != 1 {
		t.Fatalf("upstream %d, stats %+v", fake.Requests(), c.Stats())
	}
}

// The quota is given back whole when the call made no upstream attempt.
func TestQuotaGivenBackWithoutAttempt(t *testing.T) {
	env := testutil.Redis(t)
	ureq, utok, qlog := quotaLimiters(t, env, slowBudget(10), slowBudget(100_000))
	full := func(t *testing.T, user string) {
		t.Helper()
		if n := qlog.spends(ureq.Key(user)); n != 1 {
			t.Fatalf("%s: the quota was asked %d times, want 1 (else nothing was given back)", user, n)
		}
		if got := left(t, ureq, user); got != 10 {
			t.Errorf("%s: learner's requests %d, want 10", user, got)
		}
		if got := left(t, utok, user); got != 100_000 {
			t.Errorf("%s: learner's tokens %d, want 100000", user, got)
		}
	}

	t.Run("shared budget refused", func(t *testing.T) {
		fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
		reqs, _, _ := redisBudgets(t, env, slowBudget(1), slowBudget(1000))
		if d, err := reqs.Allow(context.Background(), "openai:requests", 1); err != nil || !d.Allowed {
			t.Fatal(d, err)
		}
		c := newTestClient(t, fake, Config{Requests: reqs}, false)
		ctx, cancel := context.WithTimeout(quotaCtx(context.Background(), ureq, utok, "shared", 500), 2*time.Second)
		defer cancel()
		resp, err := c.CreateChatCompletion(ctx, request("no budget"))
		if err != nil || DegradedReason(resp.Header()) != ReasonRateLimited {
			t.Fatalf("err %v, reason %q", err, DegradedReason(resp.Header()))
		}
		_ = c.Close()
		full(t, "shared")
	})
	t.Run("bulkhead full", func(t *testing.T) {
		fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
		fake.Script(testutil.FakeStep{Hang: true})
		c := newTestClient(t, fake, Config{MaxInFlight: 1, BulkheadWait: -1}, false)
		hctx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = c.CreateChatCompletion(hctx, request("hang"))
		}()
		if err := fake.WaitRequests(context.Background(), 1); err != nil {
			t.Fatal(err)
		}
		resp, err := c.CreateChatCompletion(quotaCtx(context.Background(), ureq, utok, "bulkhead", 500), request("no slot"))
		stop()
		<-done
		if err != nil || DegradedReason(resp.Header()) != ReasonBulkheadFull {
			t.Fatalf("err %v, reason %q", err, DegradedReason(resp.Header()))
		}
		_ = c.Close()
		full(t, "bulkhead")
	})
	t.Run("refused before sending", func(t *testing.T) {
		fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
		c := newTestClient(t, fake, Config{}, false)
		bad := request("refused")
		bad.Stream = true
		if _, err := c.CreateChatCompletion(quotaCtx(context.Background(), ureq, utok, "refused", 500), bad); err == nil {
			t.Fatal("no error")
		}
		_ = c.Close()
		full(t, "refused")
	})
	t.Run("ctx ended before sending", func(t *testing.T) {
		fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
		stuck := &stuckLimiter{}
		c := newTestClient(t, fake, Config{Requests: stuck}, false)
		spent := make(chan struct{})
		var once sync.Once
		qlog.notify(func(op scriptOp) {
			if !op.adjust && len(op.keys) > 0 && op.keys[0] == ureq.Key("ctx") {
				once.Do(func() { close(spent) })
			}
		})
		defer qlog.notify(nil)
		ctx, cancel := context.WithCancel(quotaCtx(context.Background(), ureq, utok, "ctx", 500))
		go func() {
			<-spent // the quota is spent; the shared wait holds the call
			cancel()
		}()
		_, err := callWithin(t, "a call whose ctx ends", func() (openai.ChatCompletionResponse, error) {
			return c.CreateChatCompletion(ctx, request("cancelled"))
		})
		if !errors.Is(err, context.Canceled) || fake.Requests() != 0 {
			t.Fatalf("err %v, upstream %d", err, fake.Requests())
		}
		_ = c.Close()
		full(t, "ctx")
	})
}

// Once an attempt reached the upstream the quota's request stays spent;
// its tokens follow the last attempt's reservation: kept after a 5xx,
// given back after a 429.
func TestQuotaStaysSpentAfterUpstreamAttempt(t *testing.T) {
	env := testutil.Redis(t)
	ureq, utok, _ := quotaLimiters(t, env, slowBudget(10), slowBudget(100_000))
	for _, tc := range []struct {
		user   string
		status int
		tokens int // learner's tokens left
	}{
		{"down", 503, 100_000 - 500},
		{"limited", 429, 100_000},
	} {
		t.Run(tc.user, func(t *testing.T) {
			fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
			fake.Always(&testutil.FakeStep{Status: tc.status})
			c := newTestClient(t, fake, Config{MaxAttempts: 2}, false)
			resp, err := c.CreateChatCompletion(quotaCtx(context.Background(), ureq, utok, tc.user, 500), request("fails"))
			if err != nil || !IsDegraded(resp) || fake.Requests() != 2 {
				t.Fatalf("err %v, degraded %v, upstream %d", err, IsDegraded(resp), fake.Requests())
			}
			_ = c.Close()
			if got := left(t, ureq, tc.user); got != 9 {
				t.Errorf("learner's requests %d, want 9", got)
			}
			if got := left(t, utok, tc.user); got != tc.tokens {
				t.Errorf("learner's tokens %d, want %d", got, tc.tokens)
			}
		})
	}
}

// A fail-closed quota whose Redis is down answers like a fail-closed
// shared budget: ReasonLimiterDown, no upstream call, the shared budget
// given back.
func TestQuotaLimiterDown(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	env := testutil.MiniredisEnv(t)
	rdb := redis.NewClient(&redis.Options{
		Addr: env.Mini.Addr(), DialerRetries: 1, DialerRetryTimeout: time.Millisecond, MaxRetries: -1,
	})
	t.Cleanup(func() { _ = rdb.Close() })
	ureq, err := ratelimit.NewRedis(rdb, slowBudget(10), ratelimit.Config{Prefix: env.Prefix, FailClosed: true})
	if err != nil {
		t.Fatal(err)
	}
	env.Mini.Close()
	shared := &recordingLimiter{}
	c := newTestClient(t, fake, Config{Requests: shared, SettleDelay: -1}, false)
	ctx := quotaCtx(context.Background(), ureq, nil, "u1", 500)
	resp, err := c.CreateChatCompletion(ctx, request("quota down"))
	if err != nil || DegradedReason(resp.Header()) != ReasonLimiterDown {
		t.Fatalf("err %v, reason %q; want the fallback with %q", err, DegradedReason(resp.Header()), ReasonLimiterDown)
	}
	c.cfg.DisableFallback = true
	_, err = c.CreateChatCompletion(ctx, request("quota down"))
	var u *UnavailableError
	if !errors.As(err, &u) || u.Reason != ReasonLimiterDown || !errors.Is(err, ratelimit.ErrUnavailable) {
		t.Fatalf("err %v; want an *UnavailableError with %q wrapping ratelimit.ErrUnavailable", err, ReasonLimiterDown)
	}
	if fake.Requests() != 0 || c.Stats().Attempts != 0 {
		t.Fatalf("upstream %d, stats %+v", fake.Requests(), c.Stats())
	}
	if _, spent := shared.get("openai:requests"); spent != 0 {
		t.Fatalf("shared requests %d left spent, want 0", spent)
	}
}

// The quota and the shared budgets are asked at the same time: each
// script waits on the wire until the other has arrived, which only two
// concurrent round trips can satisfy.
func TestQuotaAskedWithSharedBudget(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	reqs, toks, slog := redisBudgets(t, env, slowBudget(1000), slowBudget(1_000_000))
	ureq, utok, qlog := quotaLimiters(t, env, slowBudget(10), slowBudget(100_000))
	shared, quota := make(chan struct{}), make(chan struct{})
	barrier := func(name string, mine, other chan struct{}) func(scriptOp) {
		var once sync.Once
		return func(op scriptOp) {
			if op.adjust {
				return
			}
			once.Do(func() {
				close(mine)
				select {
				case <-other:
				case <-time.After(10 * time.Second):
					t.Errorf("the %s budget's round trip waited 10s for the other's: they are not concurrent", name)
				}
			})
		}
	}
	slog.notify(barrier("shared", shared, quota))
	qlog.notify(barrier("quota", quota, shared))
	c := newTestClient(t, fake, Config{Requests: reqs, Tokens: toks}, false)
	_, err := callWithin(t, "the call", func() (openai.ChatCompletionResponse, error) {
		return c.CreateChatCompletion(quotaCtx(context.Background(), ureq, utok, "u1", 500), request("both at once"))
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]chan struct{}{"shared": shared, "quota": quota} {
		select {
		case <-ch:
		default:
			t.Fatalf("the %s budget was not asked", name)
		}
	}
}

// A stream settles the learner's tokens to its usage, even without a
// shared token budget, and asks for the usage to that end.
func TestQuotaTokensSettledForStream(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	ureq, utok, _ := quotaLimiters(t, env, slowBudget(10), slowBudget(100_000))
	c := newTestClient(t, fake, Config{}, false)
	s, err := c.CreateChatCompletionStream(quotaCtx(context.Background(), ureq, utok, "u1", 500), request("stream"))
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for {
		chunk, err := s.Recv()
		if err != nil {
			break
		}
		if chunk.Usage != nil {
			total = chunk.Usage.TotalTokens
		}
	}
	_ = s.Close()
	if ev := fake.Events(); ev[0].Request.StreamOptions == nil || !ev[0].Request.StreamOptions.IncludeUsage || total == 0 {
		t.Fatalf("stream_options %+v, usage %d", ev[0].Request.StreamOptions, total)
	}
	_ = c.Close()
	if got := left(t, utok, "u1"); got != 100_000-total {
		t.Fatalf("learner's tokens %d, want %d", got, 100_000-total)
	}
	if got := left(t, ureq, "u1"); got != 9 {
		t.Fatalf("learner's requests %d, want 9", got)
	}
}

// A Client wrapping a Client spends the quota once.
func TestNestedClientSpendsQuotaOnce(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	ureq, utok, _ := quotaLimiters(t, env, slowBudget(10), slowBudget(100_000))
	inner := newTestClient(t, fake, Config{Name: "inner"}, false)
	outer, err := NewClient(inner, Config{Name: "outer"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := outer.CreateChatCompletion(quotaCtx(context.Background(), ureq, utok, "u1", 500), request("nested")); err != nil {
		t.Fatal(err)
	}
	_ = outer.Close()
	_ = inner.Close()
	if got := left(t, ureq, "u1"); got != 9 {
		t.Fatalf("learner's requests %d, want 9", got)
	}
}

// On Redis, with the breaker's state read and budgets and quota shared,
// a call's own Redis work before it returns is the budget step: one
// spend of the shared budgets and one of the quota (concurrent, see
// TestQuotaAskedWithSharedBudget); its settlements come later.
func TestCallRedisWorkIsTheBudgetStep(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	reqs, toks, slog := redisBudgets(t, env, slowBudget(1000), slowBudget(1_000_000))
	ureq, utok, qlog := quotaLimiters(t, env, slowBudget(10), slowBudget(100_000))
	rdb := env.NewClient()
	reads := newStateReads(stateKey(env.Prefix, "openai"))
	rdb.AddHook(reads)
	c := newTestClient(t, fake, Config{Requests: reqs, Tokens: toks, Redis: rdb, Prefix: env.Prefix, Now: clk.Now}, false)
	if err := c.LoadScripts(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := reads.n.Load()
	resp, err := c.CreateChatCompletion(quotaCtx(context.Background(), ureq, utok, "u1", 500), request("one step"))
	if err != nil || IsDegraded(resp) {
		t.Fatalf("err %v, degraded %v", err, IsDegraded(resp))
	}
	if ops := slog.log(); len(ops) != 1 || ops[0].adjust || len(ops[0].keys) != 2 {
		t.Fatalf("shared budget ops %+v; want one spend of both budgets", ops)
	}
	if ops := qlog.log(); len(ops) != 1 || ops[0].adjust || len(ops[0].keys) != 2 {
		t.Fatalf("quota ops %+v; want one spend of both costs", ops)
	}
	if n := reads.n.Load() - before; n != 0 {
		t.Fatalf("%d reads of the breaker's state in the call", n)
	}
	if c.settle.flushing() == nil {
		t.Fatal("no settlement pending after the call")
	}
}
