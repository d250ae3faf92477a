package chat

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// newClock returns a manual clock for Config.Now. It starts at the real
// time, so that ctx deadlines compare with it.
func newClock() *testutil.Clock { return testutil.NewClock(time.Now()) }

func request(msg string) openai.ChatCompletionRequest {
	return openai.ChatCompletionRequest{
		Model:               "gpt-4o-mini",
		MaxCompletionTokens: 64,
		Messages: []openai.ChatCompletionMessage{
			{Role: openai.ChatMessageRoleSystem, Content: "You are a tutor."},
			{Role: openai.ChatMessageRoleUser, Content: msg},
		},
	}
}

// newTestClient returns a Client on a real go-openai client pointed at
// fake, closed when the test ends (before the test's Redis, if it was
// made first). Backoff sleeps are skipped unless realSleep.
func newTestClient(t *testing.T, fake *testutil.FakeOpenAI, cfg Config, realSleep bool) *Client {
	t.Helper()
	c, err := NewClient(NewOpenAI(fake.URL, "sk-test", 64), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if !realSleep {
		c.sleep = func(ctx context.Context, _ time.Duration) error { return ctx.Err() }
	}
	return c
}

func content(resp openai.ChatCompletionResponse) string {
	if len(resp.Choices) == 0 {
		return ""
	}
	return resp.Choices[0].Message.Content
}

func TestRetry429StormHonoursRetryAfter(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	const ra = 60 * time.Millisecond
	fake.Script(
		testutil.FakeStep{Status: 429, RetryAfter: ra},
		testutil.FakeStep{Status: 429, RetryAfter: ra},
		testutil.FakeStep{Status: 429, RetryAfter: ra},
	)
	c := newTestClient(t, fake, Config{MaxAttempts: 4, BaseDelay: 5 * time.Millisecond}, true)

	req := request("storm")
	resp, err := c.CreateChatCompletion(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if IsDegraded(resp) || content(resp) != testutil.Reply(req) {
		t.Fatalf("got %q, degraded %v", content(resp), IsDegraded(resp))
	}
	ev := fake.Events()
	if len(ev) != 4 {
		t.Fatalf("upstream saw %d attempts, want 4", len(ev))
	}
	for i := 1; i < len(ev); i++ {
		if ev[i-1].Status != 429 {
			t.Fatalf("attempt %d answered %d, want 429", i, ev[i-1].Status)
		}
		// Ordering, not speed: attempt i+1 cannot arrive before the 429
		// of attempt i was sent plus its Retry-After.
		if gap := ev[i].Arrived.Sub(ev[i-1].Released); gap < ra {
			t.Errorf("attempt %d arrived %s after the 429, before Retry-After %s", i+1, gap, ra)
		}
	}
	if s := c.Stats(); s.Retries != 3 || s.Attempts != 4 || s.OK != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestRetry5xxThenSuccess(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	fake.Script(testutil.FakeStep{Status: 500}, testutil.FakeStep{Status: 503})
	c := newTestClient(t, fake, Config{}, false)
	var delays []time.Duration
	c.sleep = func(_ context.Context, d time.Duration) error { delays = append(delays, d); return nil }

	resp, err := c.CreateChatCompletion(context.Background(), request("flaky"))
	if err != nil || IsDegraded(resp) {
		t.Fatalf("err %v, degraded %v", err, IsDegraded(resp))
	}
	if n := fake.Requests(); n != 3 {
		t.Fatalf("upstream saw %d attempts, want 3", n)
	}
	// Full jitter: retry n waits at most BaseDelay·2^(n-1).
	if len(delays) != 2 || delays[0] > 250*time.Millisecond || delays[1] > 500*time.Millisecond {
		t.Errorf("backoff delays %v", delays)
	}
}

func TestHangCutByAttemptTimeout(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	fake.Script(testutil.FakeStep{Hang: true})
	c := newTestClient(t, fake, Config{AttemptTimeout: 100 * time.Millisecond}, false)

	resp, err := c.CreateChatCompletion(context.Background(), request("hang"))
	if err != nil || IsDegraded(resp) {
		t.Fatalf("err %v, degraded %v", err, IsDegraded(resp))
	}
	ev := fake.Events()
	if len(ev) != 2 || ev[0].Status != 0 || ev[1].Status != 200 {
		t.Fatalf("events %+v", ev)
	}
	// The hung request ended because the client went away.
	waitFor(t, func() bool { return !fake.Events()[0].Released.IsZero() })
}

func TestBreakerOpensFallsBackAndRecovers(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	fake.Always(&testutil.FakeStep{Status: 503})
	clk := newClock()
	reqs, err := ratelimit.NewLocal(ratelimit.PerMinute(100), ratelimit.Config{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	toks, err := ratelimit.NewLocal(ratelimit.PerMinute(100000), ratelimit.Config{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, fake, Config{
		Requests: reqs, Tokens: toks, MaxAttempts: 1, BreakerMinRequests: 4, OpenFor: 10 * time.Second, Now: clk.Now,
	}, false)
	ctx := context.Background()

	for i := range 4 {
		resp, err := c.CreateChatCompletion(ctx, request("down"))
		if err != nil || !IsDegraded(resp) || DegradedReason(resp.Header()) != ReasonRetriesSpent {
			t.Fatalf("call %d: err %v, degraded %v (%s)", i, err, IsDegraded(resp), DegradedReason(resp.Header()))
		}
	}
	if s := c.Stats(); s.Breaker != "open" || s.Trips != 1 {
		t.Fatalf("after 4 failures: %+v", s)
	}
	// Open: fallback at once, no upstream call, no budget spent.
	for range 5 {
		resp, err := c.CreateChatCompletion(ctx, request("open"))
		if err != nil || DegradedReason(resp.Header()) != ReasonBreakerOpen || content(resp) != DefaultFallbackText {
			t.Fatalf("open: err %v, reason %q, %q", err, DegradedReason(resp.Header()), content(resp))
		}
	}
	if n := fake.Requests(); n != 4 {
		t.Fatalf("upstream saw %d calls while open, want 4", n)
	}
	d, err := reqs.Allow(ctx, "openai:requests", 1)
	if err != nil || d.Remaining != 100-4-1 {
		t.Fatalf("request budget remaining %d (%v), want %d: an open breaker must spend none", d.Remaining, err, 100-5)
	}
	// The failed attempts keep their reservation (no usage to settle).
	reserve := c.reservation(request("down"))
	if d, err := toks.Allow(ctx, "openai:tokens", 1); err != nil || d.Remaining != 100000-4*reserve-1 {
		t.Fatalf("token budget remaining %d (%v), want %d: an open breaker must spend none", d.Remaining, err, 100000-4*reserve-1)
	}

	// Without a fallback the caller sees the typed error.
	c.cfg.DisableFallback = true
	_, err = c.CreateChatCompletion(ctx, request("open"))
	var u *UnavailableError
	if !errors.Is(err, ErrUnavailable) || !errors.As(err, &u) || u.Reason != ReasonBreakerOpen || u.RetryAfter <= 0 {
		t.Fatalf("err %v", err)
	}
	c.cfg.DisableFallback = false

	// Half-open after OpenFor: one probe, which succeeds and closes it.
	fake.Always(nil)
	clk.Advance(10*time.Second + time.Millisecond)
	resp, err := c.CreateChatCompletion(ctx, request("probe"))
	if err != nil || IsDegraded(resp) {
		t.Fatalf("probe: err %v, degraded %v", err, IsDegraded(resp))
	}
	if s := c.Stats(); s.Breaker != "closed" || s.Probes != 1 {
		t.Fatalf("after probe: %+v", s)
	}
	resp, err = c.CreateChatCompletion(ctx, request("closed"))
	if err != nil || IsDegraded(resp) || fake.Requests() != 6 {
		t.Fatalf("closed: err %v, degraded %v, upstream calls %d", err, IsDegraded(resp), fake.Requests())
	}
}

func TestFailedProbeReopens(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	fake.Always(&testutil.FakeStep{Status: 500})
	clk := newClock()
	c := newTestClient(t, fake, Config{MaxAttempts: 1, BreakerMinRequests: 2, OpenFor: time.Second, Now: clk.Now}, false)
	ctx := context.Background()
	for range 2 {
		_, _ = c.CreateChatCompletion(ctx, request("x"))
	}
	clk.Advance(time.Second + time.Millisecond)
	resp, _ := c.CreateChatCompletion(ctx, request("probe"))
	if DegradedReason(resp.Header()) != ReasonRetriesSpent || fake.Requests() != 3 {
		t.Fatalf("probe: reason %q, upstream %d", DegradedReason(resp.Header()), fake.Requests())
	}
	resp, _ = c.CreateChatCompletion(ctx, request("again"))
	if DegradedReason(resp.Header()) != ReasonBreakerOpen || fake.Requests() != 3 || c.Stats().Breaker != "open" {
		t.Fatalf("after failed probe: reason %q, upstream %d, %s", DegradedReason(resp.Header()), fake.Requests(), c.Stats().Breaker)
	}
}

func TestRetryBudgetCapsOutage(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	fake.Always(&testutil.FakeStep{Status: 503})
	clk := newClock()
	const (
		calls  = 100
		ratio  = 0.2
		floor  = 1.0 // per second
		window = 10 * time.Second
	)
	c := newTestClient(t, fake, Config{
		MaxAttempts: 3, BreakerMinRequests: -1, // only the budget limits retries
		RetryRatio: ratio, RetryFloor: floor, RetryWindow: window, Now: clk.Now,
	}, false)
	for range calls {
		resp, err := c.CreateChatCompletion(context.Background(), request("outage"))
		if err != nil || !IsDegraded(resp) {
			t.Fatalf("err %v, degraded %v", err, IsDegraded(resp))
		}
	}
	got := fake.Requests()
	limit := int(calls*(1+ratio) + floor*window.Seconds())
	if got > limit {
		t.Fatalf("upstream saw %d calls for %d first attempts, want <= %d", got, calls, limit)
	}
	if got <= calls || c.Stats().RetriesDenied == 0 {
		t.Fatalf("upstream saw %d calls, denied %d: the budget should allow some retries and deny others", got, c.Stats().RetriesDenied)
	}
	t.Logf("full outage: %d calls -> %d upstream attempts (without budget: %d)", calls, got, 3*calls)
}

func TestNoRetryForClientErrorOrCancelledCtx(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	c := newTestClient(t, fake, Config{}, false)

	fake.Script(testutil.FakeStep{Status: 400})
	_, err := c.CreateChatCompletion(context.Background(), request("bad"))
	var ae *openai.APIError
	if !errors.As(err, &ae) || ae.HTTPStatusCode != 400 || errors.Is(err, ErrUnavailable) {
		t.Fatalf("400: err %v", err)
	}
	if n := fake.Requests(); n != 1 {
		t.Fatalf("400 was sent %d times, want 1", n)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.CreateChatCompletion(ctx, request("cancelled")); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: err %v", err)
	}
	if n := fake.Requests(); n != 1 {
		t.Fatalf("a cancelled call reached the upstream (%d)", n)
	}

	// Cancelled while the upstream hangs: no retry, no fallback.
	fake.Script(testutil.FakeStep{Hang: true})
	ctx, cancel = context.WithCancel(context.Background())
	go func() {
		_ = fake.WaitRequests(context.Background(), 2)
		cancel()
	}()
	if _, err := c.CreateChatCompletion(ctx, request("hang")); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled during call: err %v", err)
	}
	if n := fake.Requests(); n != 2 {
		t.Fatalf("upstream saw %d calls, want 2", n)
	}
	if s := c.Stats(); s.Breaker != "closed" || s.Canceled != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestInsufficientQuotaNotRetried(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	fake.Script(testutil.FakeStep{Status: 429, Code: "insufficient_quota", RetryAfter: time.Millisecond})
	c := newTestClient(t, fake, Config{DisableFallback: true}, false)
	_, err := c.CreateChatCompletion(context.Background(), request("quota"))
	var u *UnavailableError
	if !errors.As(err, &u) || u.Reason != ReasonQuota || u.StatusCode != 429 || u.Attempts != 1 {
		t.Fatalf("err %v", err)
	}
	if n := fake.Requests(); n != 1 {
		t.Fatalf("upstream saw %d calls, want 1", n)
	}
}

func TestNoRetryPastDeadline(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	fake.Script(testutil.FakeStep{Status: 503, RetryAfter: 5 * time.Second})
	c := newTestClient(t, fake, Config{DisableFallback: true}, false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := c.CreateChatCompletion(ctx, request("late"))
	var u *UnavailableError
	if !errors.As(err, &u) || u.Reason != ReasonRetriesSpent || u.RetryAfter != 5*time.Second {
		t.Fatalf("err %v", err)
	}
	if n := fake.Requests(); n != 1 {
		t.Fatalf("upstream saw %d calls, want 1", n)
	}
}

func TestBulkheadFullFallsBack(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	fake.Script(testutil.FakeStep{Hang: true})
	clk := newClock()
	reqs, err := ratelimit.NewLocal(ratelimit.PerMinute(100), ratelimit.Config{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	toks, err := ratelimit.NewLocal(ratelimit.PerMinute(100000), ratelimit.Config{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, fake, Config{Requests: reqs, Tokens: toks, MaxInFlight: 1, BulkheadWait: -1, Now: clk.Now}, false)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.CreateChatCompletion(ctx, request("hang"))
		done <- err
	}()
	if err := fake.WaitRequests(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	resp, err := c.CreateChatCompletion(context.Background(), request("second"))
	if err != nil || DegradedReason(resp.Header()) != ReasonBulkheadFull {
		t.Fatalf("err %v, reason %q", err, DegradedReason(resp.Header()))
	}
	cancel()
	<-done
	if s := c.Stats(); s.BulkheadFull != 1 || s.InFlight != 0 {
		t.Fatalf("stats %+v", s)
	}
	// Only the call that reached the upstream spent budget: the refused
	// one was refunded. (The call that reached it was cancelled before
	// any reply: it keeps its request but gives its tokens back, see the
	// package doc's Accounting section.)
	bg := context.Background()
	if d, err := reqs.Allow(bg, "openai:requests", 1); err != nil || d.Remaining != 100-1-1 {
		t.Fatalf("request budget remaining %d (%v), want %d", d.Remaining, err, 100-2)
	}
	if d, err := toks.Allow(bg, "openai:tokens", 1); err != nil || d.Remaining != 100000-1 {
		t.Fatalf("token budget remaining %d (%v), want %d", d.Remaining, err, 100000-1)
	}
}

// Calls refused before the upstream (here by the request budget) are no
// first attempts: they must not fund retries for later calls.
func TestRetryBudgetIgnoresRefusedCalls(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	fake.Always(&testutil.FakeStep{Status: 503})
	clk := newClock()
	reqs, err := ratelimit.NewLocal(ratelimit.PerMinute(1), ratelimit.Config{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, fake, Config{
		Requests: reqs, MaxAttempts: 2, BreakerMinRequests: -1,
		RetryRatio: 0.2, RetryFloor: -1, Now: clk.Now, DisableFallback: true,
	}, false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	limited := 0
	for range 50 {
		_, err := c.CreateChatCompletion(ctx, request("x"))
		var u *UnavailableError
		if errors.As(err, &u) && u.Reason == ReasonRateLimited {
			limited++
		}
	}
	if limited != 49 || fake.Requests() != 1 {
		t.Fatalf("limited %d, upstream %d; want 49, 1", limited, fake.Requests())
	}
	c.cfg.Requests = nil
	for range 5 {
		_, _ = c.CreateChatCompletion(ctx, request("y"))
	}
	// 6 first attempts reached the upstream: at most 0.2·6 = 1 retry.
	if n := fake.Requests(); n > 1+5+1 {
		t.Fatalf("upstream saw %d calls, want <= 7: refused calls funded retries", n)
	}
}

func TestStreamRetriedOnlyBeforeFirstByte(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	c := newTestClient(t, fake, Config{AttemptTimeout: 150 * time.Millisecond}, false)
	req := request("stream")

	// Headers sent, then a stall before the first byte: retried.
	fake.Script(testutil.FakeStep{StallStream: true})
	s, err := c.CreateChatCompletionStream(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if got := readStream(t, s); got != testutil.Reply(req) {
		t.Fatalf("stream %q", got)
	}
	if n := fake.Requests(); n != 2 {
		t.Fatalf("upstream saw %d calls, want 2", n)
	}
	if c.Stats().InFlight != 0 {
		t.Fatal("closed stream still holds a bulkhead slot")
	}

	// A failure after the first chunk reaches the caller: no retry.
	fake.Script(testutil.FakeStep{CutAfter: 2})
	s, err = c.CreateChatCompletionStream(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	var recvErr error
	for range 100 {
		if _, recvErr = s.Recv(); recvErr != nil {
			break
		}
	}
	_ = s.Close()
	if recvErr == nil || errors.Is(recvErr, io.EOF) {
		t.Fatalf("cut stream ended with %v", recvErr)
	}
	if n := fake.Requests(); n != 3 {
		t.Fatalf("upstream saw %d calls, want 3", n)
	}
}

// Every way a stream ends frees its bulkhead slot.
func TestStreamReleasesSlot(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	c := newTestClient(t, fake, Config{MaxAttempts: 1, MaxInFlight: 4}, false)
	req := request("slot")
	inFlight := func() bool { return c.Stats().InFlight == 0 }

	// Closed without reading.
	s, err := c.CreateChatCompletionStream(context.Background(), req)
	if err != nil || IsDegradedStream(s) || c.Stats().InFlight != 1 {
		t.Fatalf("open: err %v, in flight %d", err, c.Stats().InFlight)
	}
	_ = s.Close()
	if !inFlight() {
		t.Fatalf("close: in flight %d", c.Stats().InFlight)
	}

	// An error status before the stream (fallback).
	fake.Script(testutil.FakeStep{Status: 503})
	s, err = c.CreateChatCompletionStream(context.Background(), req)
	if err != nil || !IsDegradedStream(s) || !inFlight() {
		t.Fatalf("503: err %v, degraded %v, in flight %d", err, IsDegradedStream(s), c.Stats().InFlight)
	}
	_ = s.Close()

	// Cut mid-stream: Recv fails; the body read error frees the slot.
	fake.Script(testutil.FakeStep{CutAfter: 1})
	s, err = c.CreateChatCompletionStream(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		if _, err := s.Recv(); err != nil {
			break
		}
	}
	waitFor(t, inFlight)
	_ = s.Close()

	// The caller's ctx ends while the stream is open and nobody reads.
	fake.Script(testutil.FakeStep{StallStream: true})
	ctx, cancel := context.WithCancel(context.Background())
	c.cfg.AttemptTimeout = time.Hour
	done := make(chan struct{})
	go func() {
		defer close(done)
		if s, err := c.CreateChatCompletionStream(ctx, req); err == nil {
			defer s.Close()
		}
	}()
	if err := fake.WaitRequests(context.Background(), 4); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done
	waitFor(t, inFlight)

	// Open, then ctx cancelled without Recv or Close.
	ctx, cancel = context.WithCancel(context.Background())
	s, err = c.CreateChatCompletionStream(ctx, req)
	if err != nil || c.Stats().InFlight != 1 {
		t.Fatalf("open: err %v, in flight %d", err, c.Stats().InFlight)
	}
	cancel()
	waitFor(t, inFlight)
	_ = s.Close()
}

func TestStreamFallback(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	fake.Always(&testutil.FakeStep{Status: 503})
	c := newTestClient(t, fake, Config{MaxAttempts: 2}, false)
	s, err := c.CreateChatCompletionStream(context.Background(), request("down"))
	if err != nil {
		t.Fatal(err)
	}
	if !IsDegradedStream(s) || DegradedReason(s.Header()) != ReasonRetriesSpent {
		t.Fatalf("degraded %v, reason %q", IsDegradedStream(s), DegradedReason(s.Header()))
	}
	if got := readStream(t, s); got != DefaultFallbackText {
		t.Fatalf("fallback stream %q", got)
	}
}

func readStream(t *testing.T, s *openai.ChatCompletionStream) string {
	t.Helper()
	defer s.Close()
	var b strings.Builder
	for range 1000 {
		chunk, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return b.String()
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		for _, ch := range chunk.Choices {
			b.WriteString(ch.Delta.Content)
		}
	}
	t.Fatal("stream did not end")
	return ""
}

func TestTokensSettledAgainstUsage(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	toks, err := ratelimit.NewLocal(ratelimit.PerMinute(10000), ratelimit.Config{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, fake, Config{Tokens: toks, Now: clk.Now}, false)
	req := request("count my tokens")
	resp, err := c.CreateChatCompletion(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if reserve := c.reservation(req); reserve <= resp.Usage.TotalTokens {
		t.Fatalf("reservation %d should exceed usage %d here", reserve, resp.Usage.TotalTokens)
	}
	d, err := toks.Allow(context.Background(), "openai:tokens", 1)
	if err != nil || d.Remaining != 10000-resp.Usage.TotalTokens-1 {
		t.Fatalf("token budget remaining %d (%v), want %d", d.Remaining, err, 10000-resp.Usage.TotalTokens-1)
	}
}

func TestAdaptivePauseFromHeaders(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{RPM: 2, Window: 30 * time.Second})
	clk := newClock()
	cfg := Config{Redis: env.Client, Prefix: env.Prefix, Now: clk.Now, DisableFallback: true}
	a := newTestClient(t, fake, cfg, false)
	cfg.Redis = env.NewClient()
	b := newTestClient(t, fake, cfg, false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range 2 {
		if _, err := a.CreateChatCompletion(ctx, request("x")); err != nil {
			t.Fatal(err)
		}
	}
	if a.Stats().Pauses != 1 {
		t.Fatalf("remaining-requests 0 did not pause: %+v", a.Stats())
	}
	clk.Advance(time.Second) // past the cache refresh
	for _, c := range []*Client{a, b} {
		_, err := c.CreateChatCompletion(ctx, request("paused"))
		var u *UnavailableError
		if !errors.As(err, &u) || u.Reason != ReasonRateLimited || u.RetryAfter <= 0 {
			t.Fatalf("paused call: %v", err)
		}
	}
	if n := fake.Requests(); n != 2 {
		t.Fatalf("upstream saw %d calls during the pause, want 2", n)
	}
}

func TestConfigValidation(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	for _, tc := range []struct {
		cfg   Config
		field string
	}{
		{Config{MaxAttempts: -1}, "Config.MaxAttempts"},
		{Config{BreakerRatio: 2}, "Config.BreakerRatio"},
		{Config{AttemptTimeout: -time.Second}, "Config.AttemptTimeout"},
		{Config{MaxPause: -time.Second}, "Config.MaxPause"},
		{Config{OpenFor: time.Microsecond}, "Config.OpenFor"},
		{Config{Name: "a{b}"}, "Config.Name"},
		{Config{Prefix: "tenant-{a}:"}, "Config.Prefix"},
		{Config{DefaultMaxTokens: -3}, "Config.DefaultMaxTokens"},
		{Config{ConstLabels: prometheus.Labels{"client": "x"}}, "Config.ConstLabels"},
	} {
		_, err := NewClient(NewOpenAI(fake.URL, "", 1), tc.cfg)
		var ce *chatscale.ConfigError
		if !errors.Is(err, chatscale.ErrInvalidConfig) || !errors.As(err, &ce) || ce.Package != "chat" || ce.Field != tc.field {
			t.Errorf("%+v: err %v, want a ConfigError on %s", tc.cfg, err, tc.field)
		}
	}
	_, err := NewClient(nil, Config{})
	var ce *chatscale.ConfigError
	if !errors.As(err, &ce) || ce.Field != "inner" {
		t.Errorf("nil inner: %v", err)
	}
}

func TestRetryAfterParsing(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		h    http.Header
		want time.Duration
	}{
		{http.Header{"Retry-After-Ms": {"1500"}, "Retry-After": {"9"}}, 1500 * time.Millisecond},
		{http.Header{"Retry-After": {"2"}}, 2 * time.Second},
		{http.Header{"Retry-After": {now.Add(7 * time.Second).Format(http.TimeFormat)}}, 7 * time.Second},
		{http.Header{"Retry-After": {"soon"}}, 0},
		{nil, 0},
	} {
		if got := retryAfter(tc.h, now); got != tc.want {
			t.Errorf("%v: got %s, want %s", tc.h, got, tc.want)
		}
	}
	if parseReset("6m0s") != 6*time.Minute || parseReset("20ms") != 20*time.Millisecond || parseReset("1.5") != 1500*time.Millisecond {
		t.Error("parseReset")
	}
}

// waitFor polls cond until it holds, failing after 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMetricsOnRegisterer(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	reg := prometheus.NewRegistry()
	c := newTestClient(t, fake, Config{Registerer: reg}, false)
	if _, err := c.CreateChatCompletion(context.Background(), request("m")); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		"ai_chat_client_calls_total": false, "ai_chat_client_attempts_total": false,
		"ai_chat_client_breaker_state": false, "ai_chat_client_limiter_wait_seconds": false,
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if _, ok := want[mf.GetName()]; ok {
			want[mf.GetName()] = true
		}
		if mf.GetName() == "ai_chat_client_calls_total" {
			// Every outcome's series exists from the start; only "ok" counted.
			if len(mf.GetMetric()) != int(numOutcomes) {
				t.Errorf("calls: %d series, want %d", len(mf.GetMetric()), numOutcomes)
			}
			for _, m := range mf.GetMetric() {
				want := 0.0
				for _, l := range m.GetLabel() {
					if l.GetName() == "outcome" && l.GetValue() == "ok" {
						want = 1
					}
				}
				if m.GetCounter().GetValue() != want || len(m.GetLabel()) != 2 {
					t.Errorf("calls: %v", m)
				}
			}
		}
	}
	for name, seen := range want {
		if !seen {
			t.Errorf("%s not registered", name)
		}
	}
	// A second Client with the same Name on the same registry is refused.
	if _, err := NewClient(NewOpenAI(fake.URL, "", 1), Config{Registerer: reg}); err == nil {
		t.Error("duplicate registration accepted")
	}
}
