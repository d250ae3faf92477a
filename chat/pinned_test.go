package chat

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// A fail-closed budget whose Redis is down refuses with "limiter down",
// never "rate limited": the budget was not spent, its store failed.
// Callers (and the fallbacks metric) must tell an outage of the limiter
// from a budget that is used up.
func TestFailClosedBudgetWithRedisDownIsLimiterDown(t *testing.T) {
	for _, budget := range []string{"requests", "tokens", "both"} {
		t.Run(budget, func(t *testing.T) {
			fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
			env := testutil.MiniredisEnv(t) // stopped below, whatever the environment names
			// One quick dial and no command retries: a stopped server
			// shows as down at once.
			rdb := redis.NewClient(&redis.Options{
				Addr: env.Mini.Addr(), DialerRetries: 1, DialerRetryTimeout: time.Millisecond, MaxRetries: -1,
			})
			t.Cleanup(func() { _ = rdb.Close() })
			lim := func(name string) *ratelimit.Redis {
				l, err := ratelimit.NewRedis(rdb, ratelimit.PerMinute(100000), ratelimit.Config{
					Prefix: env.Prefix + "rl:", HashTag: "openai", Name: name, FailClosed: true,
				})
				if err != nil {
					t.Fatal(err)
				}
				return l
			}
			cfg := Config{MaxAttempts: 1}
			if budget != "tokens" {
				cfg.Requests = lim("requests")
			}
			if budget != "requests" {
				cfg.Tokens = lim("tokens")
			}
			c := newTestClient(t, fake, cfg, false)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if resp, err := c.CreateChatCompletion(ctx, request("redis up")); err != nil || IsDegraded(resp) {
				t.Fatalf("with Redis up: err %v, degraded %v", err, IsDegraded(resp))
			}

			env.Mini.Close()
			// The first call finds Redis down; the next are held off until
			// the limiter's next probe. Both are the limiter's outage.
			for i := range 2 {
				resp, err := c.CreateChatCompletion(ctx, request("redis down"))
				if err != nil || !IsDegraded(resp) || DegradedReason(resp.Header()) != ReasonLimiterDown {
					t.Fatalf("call %d with Redis down: err %v, degraded %v, reason %q; want the fallback with %q",
						i, err, IsDegraded(resp), DegradedReason(resp.Header()), ReasonLimiterDown)
				}
			}
			s, err := c.CreateChatCompletionStream(ctx, request("redis down"))
			if err != nil || !IsDegradedStream(s) || DegradedReason(s.Header()) != ReasonLimiterDown {
				t.Fatalf("stream with Redis down: err %v, reason %q; want the fallback with %q", err, DegradedReason(s.Header()), ReasonLimiterDown)
			}
			if got := readStream(t, s); got != DefaultFallbackText {
				t.Fatalf("fallback stream %q", got)
			}

			c.cfg.DisableFallback = true
			_, err = c.CreateChatCompletion(ctx, request("redis down"))
			var u *UnavailableError
			if !errors.As(err, &u) || u.Reason != ReasonLimiterDown || !errors.Is(err, ErrUnavailable) {
				t.Fatalf("with Redis down and no fallback: %v; want an *UnavailableError with %q", err, ReasonLimiterDown)
			}
			if !errors.Is(err, ratelimit.ErrUnavailable) || errors.Is(err, ratelimit.ErrLimited) || u.Attempts != 0 {
				t.Fatalf("with Redis down and no fallback: %v (attempts %d); want it to wrap ratelimit.ErrUnavailable, not ErrLimited, with no attempt", err, u.Attempts)
			}
			if n := fake.Requests(); n != 1 {
				t.Fatalf("upstream saw %d calls; want only the one made with Redis up", n)
			}
			if st := c.Stats(); st.Attempts != 1 || st.Fallbacks != 3 || st.Unavailable != 1 {
				t.Fatalf("stats %+v; want 1 attempt, 3 fallbacks, 1 unavailable", st)
			}
			if ok, fail := breakerCounts(c); ok != 1 || fail != 0 {
				t.Fatalf("breaker counted %d successes, %d failures; want 1, 0 (a limiter outage is no upstream failure)", ok, fail)
			}
		})
	}
}

// The adaptive pause also follows x-ratelimit-remaining-tokens: a reply
// whose remaining tokens are at or below LowRemainingTokens pauses every
// instance until x-ratelimit-reset-tokens, capped by MaxPause. The fake
// here keeps a token budget only, so its replies say nothing about
// requests.
func TestAdaptivePauseFromRemainingTokens(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{TPM: 1000, Window: 30 * time.Second})
	clk := newClock()
	const maxPause = 20 * time.Second // under the fake's reset, about 30 s
	a, b := twoInstances(t, env, fake, Config{
		Now: clk.Now, DisableFallback: true, LowRemainingTokens: 950, MaxPause: maxPause,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := a.CreateChatCompletion(ctx, request("spend some tokens"))
	if err != nil || IsDegraded(resp) {
		t.Fatalf("first call: err %v, degraded %v", err, IsDegraded(resp))
	}
	h := resp.Header()
	if h.Get("X-Ratelimit-Remaining-Requests") != "" || h.Get("X-Ratelimit-Remaining-Tokens") == "" || h.Get("X-Ratelimit-Reset-Tokens") == "" {
		t.Fatalf("fixture: the reply's headers %v; want x-ratelimit-*-tokens only", h)
	}
	if st := a.Stats(); st.Pauses != 1 {
		t.Fatalf("remaining tokens %s <= 950 did not pause: %+v", h.Get("X-Ratelimit-Remaining-Tokens"), st)
	}
	clk.Advance(time.Second) // past b's cache refresh; the pause is still on
	for name, c := range map[string]*Client{"a": a, "b": b} {
		_, err := c.CreateChatCompletion(ctx, request("paused"))
		var u *UnavailableError
		if !errors.As(err, &u) || u.Reason != ReasonRateLimited || u.RetryAfter != maxPause-time.Second {
			t.Fatalf("%s during the pause: %v; want %q with RetryAfter %s (MaxPause less the second gone)",
				name, err, ReasonRateLimited, maxPause-time.Second)
		}
	}
	if n := fake.Requests(); n != 1 {
		t.Fatalf("upstream saw %d calls during the pause, want 1", n)
	}

	// With the default LowRemainingTokens (pause only at 0), 900-odd
	// remaining tokens do not pause.
	fake2 := testutil.OpenAI(t, testutil.OpenAIConfig{TPM: 1000, Window: 30 * time.Second})
	c := newTestClient(t, fake2, Config{Now: clk.Now, DisableFallback: true}, false)
	for i := range 2 {
		if resp, err := c.CreateChatCompletion(ctx, request("plenty left")); err != nil || IsDegraded(resp) {
			t.Fatalf("call %d with tokens left: err %v", i, err)
		}
	}
	if st := c.Stats(); st.Pauses != 0 || fake2.Requests() != 2 {
		t.Fatalf("paused with tokens left: %+v, upstream %d", st, fake2.Requests())
	}
}

// slowLimiter grants every cost after wait on the injected clock, as a
// limiter that makes its caller wait for budget would.
type slowLimiter struct {
	clk  *testutil.Clock
	wait time.Duration
}

func (l *slowLimiter) Allow(context.Context, string, int) (ratelimit.Decision, error) {
	l.clk.Advance(l.wait)
	return ratelimit.Decision{Allowed: true, Remaining: 1}, nil
}

func (l *slowLimiter) Wait(context.Context, string, int) error {
	l.clk.Advance(l.wait)
	return nil
}

func (l *slowLimiter) Adjust(context.Context, string, int) error { return nil }

// Stats.LimiterWait grows by each wait for budget (the shared pause and
// the limiter's wait), measured on the injected clock, and the
// limiter_wait_seconds histogram observes each one.
func TestLimiterWaitIsTheWaitForBudget(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	lim := &slowLimiter{clk: clk}
	reg := prometheus.NewRegistry()
	c := newTestClient(t, fake, Config{Requests: lim, Now: clk.Now, Registerer: reg}, false)
	// The Client's own sleeps (the shared pause) pass on the injected clock.
	c.sleep = func(ctx context.Context, d time.Duration) error { clk.Advance(d); return ctx.Err() }
	ctx := context.Background()
	call := func(want time.Duration) {
		t.Helper()
		if resp, err := c.CreateChatCompletion(ctx, request("wait")); err != nil || IsDegraded(resp) {
			t.Fatalf("err %v, degraded %v", err, IsDegraded(resp))
		}
		if got := c.Stats().LimiterWait; got != want {
			t.Fatalf("Stats().LimiterWait = %s; want %s", got, want)
		}
	}
	call(0) // granted at once
	lim.wait = 1500 * time.Millisecond
	call(1500 * time.Millisecond)
	// A shared pause of 2 s, then 250 ms in the limiter.
	c.br.pause(ctx, clk.Now().Add(2*time.Second).UnixMilli())
	lim.wait = 250 * time.Millisecond
	call(1500*time.Millisecond + 2*time.Second + 250*time.Millisecond)

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() != "ai_chat_client_limiter_wait_seconds" {
			continue
		}
		found = true
		h := mf.GetMetric()[0].GetHistogram()
		if h.GetSampleCount() != 3 || h.GetSampleSum() != 3.75 {
			t.Fatalf("limiter_wait_seconds: %d samples, sum %v; want 3, 3.75", h.GetSampleCount(), h.GetSampleSum())
		}
	}
	if !found {
		t.Fatal("ai_chat_client_limiter_wait_seconds not gathered")
	}
}

// The half-open probe's lease retry: an instance that finds the lease
// taken elsewhere falls back, does not ask again for RefreshEvery, and
// then asks again: once the holder's lease has expired (the holder died
// mid-probe), it takes the lease, probes and closes the breaker for
// everyone.
func TestProbeLeaseRetriedAfterHolderExpires(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	const openFor = 5 * time.Second
	a, b := twoInstances(t, env, fake, Config{MaxAttempts: 1, BreakerMinRequests: 2, OpenFor: openFor, Now: clk.Now})
	ctx := context.Background()
	fake.Always(&testutil.FakeStep{Status: 502})
	for range 2 {
		_, _ = a.CreateChatCompletion(ctx, request("fail"))
	}
	if a.Stats().Breaker != "open" {
		t.Fatalf("a did not trip: %+v", a.Stats())
	}
	fake.Always(nil)
	clk.Advance(openFor + time.Millisecond) // half-open

	// A third instance took the lease and died while probing.
	lease := leaseKey(env.Prefix, "openai")
	if err := env.Client.Set(ctx, lease, "crashed-instance", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	upstream := fake.Requests()
	breakerOpen := func(what string) {
		t.Helper()
		resp, err := b.CreateChatCompletion(ctx, request(what))
		if err != nil || DegradedReason(resp.Header()) != ReasonBreakerOpen {
			t.Fatalf("%s: err %v, reason %q; want the fallback with %q", what, err, DegradedReason(resp.Header()), ReasonBreakerOpen)
		}
		if n := fake.Requests(); n != upstream || b.Stats().Probes != 0 {
			t.Fatalf("%s: upstream %d -> %d calls, %d probes; want no call", what, upstream, n, b.Stats().Probes)
		}
	}
	breakerOpen("lease held elsewhere")

	// The lease expires.
	if err := env.Client.PExpire(ctx, lease, time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	if env.Mini != nil {
		env.Mini.FastForward(time.Millisecond) // the breaker's hash lives 2×OpenFor
	}
	waitFor(t, func() bool { return env.Client.Exists(ctx, lease).Val() == 0 })

	// b does not ask for the lease again before RefreshEvery...
	clk.Advance(99 * time.Millisecond)
	breakerOpen("before the lease retry")
	// ...and then takes it and probes.
	clk.Advance(time.Millisecond)
	resp, err := b.CreateChatCompletion(ctx, request("probe"))
	if err != nil || IsDegraded(resp) {
		t.Fatalf("b after the lease expired: err %v, degraded %v (%q); want its probe answered", err, IsDegraded(resp), DegradedReason(resp.Header()))
	}
	if st := b.Stats(); st.Probes != 1 || st.Breaker != "closed" || fake.Requests() != upstream+1 {
		t.Fatalf("b: %+v, upstream %d; want 1 probe, closed, 1 more call", st, fake.Requests())
	}
	if n := env.Client.Exists(ctx, lease).Val(); n != 0 {
		t.Fatal("the probe's lease is still held after it closed the breaker")
	}
	// The probe closed the breaker for a too.
	clk.Advance(150 * time.Millisecond)
	resp, err = a.CreateChatCompletion(ctx, request("a after close"))
	if err != nil || IsDegraded(resp) || a.Stats().Probes != 0 || a.Stats().Breaker != "closed" {
		t.Fatalf("a after b's probe: err %v, degraded %v, %+v", err, IsDegraded(resp), a.Stats())
	}
}

// The breaker trips when failures reach BreakerRatio of the counted
// attempts, not only when they exceed it; below the ratio it stays
// closed.
func TestBreakerTripsAtTheRatio(t *testing.T) {
	for _, tc := range []struct {
		name      string
		steps     []int // statuses, in order; 200 answers
		wantState string
	}{
		{"2 failures of 4 at ratio 0.5", []int{200, 200, 503, 503}, "open"},
		{"1 failure of 4 at ratio 0.5", []int{200, 200, 200, 503}, "closed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
			c := newTestClient(t, fake, Config{MaxAttempts: 1, BreakerRatio: 0.5, BreakerMinRequests: 4}, false)
			for _, st := range tc.steps {
				if st != 200 {
					fake.Script(testutil.FakeStep{Status: st})
				}
				_, _ = c.CreateChatCompletion(context.Background(), request("x"))
			}
			if s := c.Stats(); s.Breaker != tc.wantState || fake.Requests() != len(tc.steps) {
				t.Fatalf("breaker %s after %v (upstream %d); want %s", s.Breaker, tc.steps, fake.Requests(), tc.wantState)
			}
		})
	}
}

// Retry n waits at most BaseDelay·2^(n-1), capped by MaxDelay, on top of
// the upstream's Retry-After: with the jitter at its maximum the waits
// are exactly those bounds.
func TestBackoffCeilingAndRetryAfterFloor(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	c := newTestClient(t, fake, Config{MaxAttempts: 4, BaseDelay: 250 * time.Millisecond, MaxDelay: 600 * time.Millisecond, BreakerMinRequests: -1}, false)
	c.jitter = func(n int64) int64 { return n - 1 } // the top of [0, n)
	var delays []time.Duration
	c.sleep = func(_ context.Context, d time.Duration) error { delays = append(delays, d); return nil }
	fake.Script(testutil.FakeStep{Status: 503}, testutil.FakeStep{Status: 503}, testutil.FakeStep{Status: 503})
	if resp, err := c.CreateChatCompletion(context.Background(), request("backoff")); err != nil || IsDegraded(resp) {
		t.Fatalf("err %v, degraded %v", err, IsDegraded(resp))
	}
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, 600 * time.Millisecond}
	if len(delays) != 3 || delays[0] != want[0] || delays[1] != want[1] || delays[2] != want[2] {
		t.Fatalf("backoff delays %v; want %v", delays, want)
	}
	// A Retry-After (under MaxDelay) is a floor the jitter adds to.
	delays = nil
	fake.Script(testutil.FakeStep{Status: 503, RetryAfter: 400 * time.Millisecond})
	if resp, err := c.CreateChatCompletion(context.Background(), request("retry-after")); err != nil || IsDegraded(resp) {
		t.Fatalf("err %v, degraded %v", err, IsDegraded(resp))
	}
	if len(delays) != 1 || delays[0] != 400*time.Millisecond+250*time.Millisecond {
		t.Fatalf("delay after Retry-After 400ms: %v; want 650ms", delays)
	}
}

// A Retry-After longer than MaxDelay ends the retries: the call is rate
// limited, with the upstream's delay to pass on, after one attempt.
func TestRetryAfterBeyondMaxDelayEndsRetries(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	fake.Always(&testutil.FakeStep{Status: 503, RetryAfter: 5 * time.Second})
	c := newTestClient(t, fake, Config{MaxAttempts: 3, MaxDelay: time.Second, DisableFallback: true}, false)
	_, err := c.CreateChatCompletion(context.Background(), request("come back later"))
	var u *UnavailableError
	if !errors.As(err, &u) || u.Reason != ReasonRateLimited || u.RetryAfter != 5*time.Second || u.StatusCode != 503 || u.Attempts != 1 {
		t.Fatalf("err %v; want %q after 1 attempt with RetryAfter 5s", err, ReasonRateLimited)
	}
	if n := fake.Requests(); n != 1 {
		t.Fatalf("upstream saw %d calls; want 1", n)
	}
}

// A 429's pause is capped by MaxPause, like the headers' pause: another
// call then waits MaxPause, not the upstream's longer Retry-After.
func TestRateLimitedPauseCappedByMaxPause(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	c := newTestClient(t, fake, Config{MaxAttempts: 1, MaxPause: 2 * time.Second, Now: clk.Now, DisableFallback: true}, false)
	var slept []time.Duration
	c.sleep = func(ctx context.Context, d time.Duration) error {
		slept = append(slept, d)
		clk.Advance(d)
		return ctx.Err()
	}
	fake.Script(testutil.FakeStep{Status: 429, RetryAfter: 10 * time.Second})
	if _, err := c.CreateChatCompletion(context.Background(), request("429")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("429: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if resp, err := c.CreateChatCompletion(ctx, request("after the pause")); err != nil || IsDegraded(resp) {
		t.Fatalf("call within 5s after a 429 capped at MaxPause 2s: %v", err)
	}
	if len(slept) != 1 || slept[0] != 2*time.Second {
		t.Fatalf("paused %v; want [2s]", slept)
	}
}

// A reservation equal to the token budget's burst fits: only one larger
// than the burst is refused as too large.
func TestReservationEqualToBurstFits(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	_, roomy := budgets(t, clk, 1_000_000)
	reserve := newTestClient(t, fake, Config{Tokens: roomy, Now: clk.Now}, false).reservation(request("fits exactly"))
	toks, err := ratelimit.NewLocal(ratelimit.PerMinute(reserve), ratelimit.Config{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, fake, Config{Tokens: toks, Now: clk.Now}, false)
	if resp, err := c.CreateChatCompletion(context.Background(), request("fits exactly")); err != nil || IsDegraded(resp) {
		t.Fatalf("a reservation of %d under a burst of %d: %v", reserve, reserve, err)
	}
	big := request("fits exactly")
	big.MaxCompletionTokens++
	if _, err := c.CreateChatCompletion(context.Background(), big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a reservation of %d under a burst of %d: %v; want ErrTooLarge", reserve+1, reserve, err)
	}
}

// Ending a probe (close.lua) or publishing a trip (extend.lua) releases
// the caller's own lease only, never another instance's.
func TestProbeLeaseReleasedOnlyByItsHolder(t *testing.T) {
	env := testutil.Redis(t)
	s := &redisTrips{rdb: env.Client, stateK: stateKey(env.Prefix, "openai"), leaseK: leaseKey(env.Prefix, "openai")}
	ctx := context.Background()
	until := time.Now().Add(time.Minute).UnixMilli()
	if _, err := s.extend(ctx, "until", until, "status 503", time.Minute, ""); err != nil {
		t.Fatal(err)
	}
	if ok, _, err := s.lease(ctx, "x", time.Minute, 0, until); !ok || err != nil {
		t.Fatalf("lease: %v %v", ok, err)
	}
	if closed, err := s.close(ctx, 0, "y"); closed || err != nil {
		t.Fatalf("y's release: %v %v", closed, err)
	}
	if _, err := s.extend(ctx, "until", until+1000, "timeout", time.Minute, "y"); err != nil {
		t.Fatal(err)
	}
	if holder, err := env.Client.Get(ctx, s.leaseK).Result(); err != nil || holder != "x" {
		t.Fatalf("lease holder %q (%v) after y's release and trip; want x", holder, err)
	}
}
