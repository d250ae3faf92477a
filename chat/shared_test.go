package chat

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// twoInstances returns two Clients sharing trips through env, each with
// its own Redis client, upstream client and gobreaker, like two app
// instances.
func twoInstances(t *testing.T, env *testutil.RedisEnv, fake *testutil.FakeOpenAI, cfg Config) (*Client, *Client) {
	t.Helper()
	cfg.Prefix = env.Prefix
	cfg.Redis = env.Client
	a := newTestClient(t, fake, cfg, false)
	cfg.Redis = env.NewClient()
	b := newTestClient(t, fake, cfg, false)
	return a, b
}

func TestSharedTripThroughRedis(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	a, b := twoInstances(t, env, fake, Config{
		MaxAttempts: 1, BreakerMinRequests: 3, OpenFor: 5 * time.Second, Now: clk.Now,
	})
	ctx := context.Background()

	// b works, then a trips on its own failures.
	if resp, err := b.CreateChatCompletion(ctx, request("b ok")); err != nil || IsDegraded(resp) {
		t.Fatalf("b before: %v", err)
	}
	fake.Always(&testutil.FakeStep{Status: 502})
	for range 3 {
		_, _ = a.CreateChatCompletion(ctx, request("a fails"))
	}
	if a.Stats().Breaker != "open" {
		t.Fatalf("a: %+v", a.Stats())
	}
	upstream := fake.Requests() // 1 + 3

	// b opens without seeing a failure itself, once its cache refreshes
	// (in the background: see TestStaleBreakerStateDoesNotWait).
	clk.Advance(150 * time.Millisecond)
	refreshed(t, b)
	for range 5 {
		resp, err := b.CreateChatCompletion(ctx, request("b while open"))
		if err != nil || DegradedReason(resp.Header()) != ReasonBreakerOpen {
			t.Fatalf("b while open: err %v, reason %q", err, DegradedReason(resp.Header()))
		}
	}
	if fake.Requests() != upstream || b.Stats().Attempts != 1 || b.Stats().Breaker != "open" {
		t.Fatalf("b sent upstream while open: %d calls, %+v", fake.Requests(), b.Stats())
	}

	// After the deadline: exactly one probe in the cluster. It hangs, so
	// every other call meanwhile must fall back.
	fake.Always(nil)
	fake.Script(testutil.FakeStep{Hang: true})
	clk.Advance(5 * time.Second)
	probeCtx, cancelProbe := context.WithCancel(ctx)
	probeDone := make(chan error, 1)
	go func() {
		_, err := a.CreateChatCompletion(probeCtx, request("probe"))
		probeDone <- err
	}()
	if err := fake.WaitRequests(ctx, upstream+1); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 20 {
		c := a
		if i%2 == 1 {
			c = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.CreateChatCompletion(ctx, request("during probe"))
			if err != nil || DegradedReason(resp.Header()) != ReasonBreakerOpen {
				t.Errorf("during probe: err %v, reason %q", err, DegradedReason(resp.Header()))
			}
		}()
	}
	wg.Wait()
	if n := fake.Requests(); n != upstream+1 {
		t.Fatalf("upstream saw %d calls during the probe, want %d", n, upstream+1)
	}
	if p := a.Stats().Probes + b.Stats().Probes; p != 1 {
		t.Fatalf("%d probes, want 1", p)
	}

	// The probe's caller gives up: the lease is released, nothing closes.
	cancelProbe()
	if err := <-probeDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("probe: %v", err)
	}
	// The next probe (here from b) succeeds and closes it for both.
	clk.Advance(150 * time.Millisecond)
	resp, err := b.CreateChatCompletion(ctx, request("probe 2"))
	if err != nil || IsDegraded(resp) || b.Stats().Probes != 1 {
		t.Fatalf("second probe: err %v, degraded %v, %+v", err, IsDegraded(resp), b.Stats())
	}
	clk.Advance(150 * time.Millisecond)
	resp, err = a.CreateChatCompletion(ctx, request("a after close"))
	if err != nil || IsDegraded(resp) || a.Stats().Breaker != "closed" {
		t.Fatalf("a after close: err %v, degraded %v, %+v", err, IsDegraded(resp), a.Stats())
	}
}

// refreshed makes c read the shared breaker state now, as a call that
// finds its cache stale does (in the background), and waits until the
// read has ended. It fails the test when no read was made (the cache was
// not stale).
func refreshed(t *testing.T, c *Client) {
	t.Helper()
	now := c.nowMs()
	c.br.snapshot(context.Background(), now)
	if done := c.br.refreshed(); done != nil {
		<-done
	}
	if e := c.br.cache.Load(); !e.loaded || e.fetched != now {
		t.Fatalf("the shared state was not read at %d: cache %+v", now, e)
	}
}

func TestSecondTripKeepsLaterDeadline(t *testing.T) {
	env := testutil.Redis(t)
	s := &redisTrips{rdb: env.Client, stateK: stateKey(env.Prefix, "openai"), leaseK: leaseKey(env.Prefix, "openai")}
	ctx := context.Background()
	now := time.Now().UnixMilli()
	if st, err := s.extend(ctx, "until", now+60_000, "status 503", time.Minute, ""); err != nil || st.until != now+60_000 {
		t.Fatalf("first trip: %+v %v", st, err)
	}
	st, err := s.extend(ctx, "until", now+30_000, "timeout", time.Minute, "")
	if err != nil || st.until != now+60_000 || st.reason != "status 503" {
		t.Fatalf("earlier trip moved the deadline: %+v %v", st, err)
	}
	if st, _ := s.extend(ctx, "until", now+90_000, "timeout", time.Minute, ""); st.until != now+90_000 || st.reason != "timeout" {
		t.Fatalf("later trip: %+v", st)
	}
	// A lease only for the deadline that holds now: a stale view learns
	// the state instead.
	if ok, st, err := s.lease(ctx, "x", time.Minute, 0, now+60_000); ok || err != nil || st.until != now+90_000 || st.reason != "timeout" {
		t.Fatalf("lease for a stale deadline: %v %+v %v", ok, st, err)
	}
	// One lease at a time; close only for the probed deadline.
	if ok, _, err := s.lease(ctx, "x", time.Minute, 0, now+90_000); !ok || err != nil {
		t.Fatalf("lease: %v %v", ok, err)
	}
	if ok, _, _ := s.lease(ctx, "y", time.Minute, 0, now+90_000); ok {
		t.Fatal("second lease granted")
	}
	if closed, _ := s.close(ctx, now+60_000, "x"); closed {
		t.Fatal("closed a newer trip")
	}
	if ok, _, _ := s.lease(ctx, "y", time.Minute, 0, now+90_000); !ok {
		t.Fatal("lease not released by its holder")
	}
	if closed, err := s.close(ctx, now+90_000, "y"); !closed || err != nil {
		t.Fatalf("close: %v %v", closed, err)
	}
	if st, err := s.load(ctx); err != nil || st.until != 0 {
		t.Fatalf("after close: %+v %v", st, err)
	}
}

func TestSharedBreakerDoesNotSerialiseCalls(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{Latency: 20 * time.Millisecond})
	lim := func(name string, l ratelimit.Limit) *ratelimit.Redis {
		r, err := ratelimit.NewRedis(env.Client, l, ratelimit.Config{Prefix: env.Prefix + "rl:", HashTag: "openai", Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a, b := twoInstances(t, env, fake, Config{
		Requests: lim("requests", ratelimit.PerSecond(100000)),
		Tokens:   lim("tokens", ratelimit.PerSecond(10000000)),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 200 {
		c := a
		if i%2 == 1 {
			c = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := c.CreateChatCompletion(ctx, request("concurrent"))
			if err != nil || IsDegraded(resp) {
				t.Errorf("err %v, degraded %v", err, IsDegraded(resp))
			}
		}()
	}
	close(start)
	wg.Wait()
	if n := fake.Requests(); n != 200 {
		t.Fatalf("upstream saw %d calls, want 200", n)
	}
	if m := fake.MaxInFlight(); m <= 1 {
		t.Fatalf("upstream calls did not overlap (max in flight %d)", m)
	}
	t.Logf("200 calls through a closed shared breaker: max %d in flight upstream", fake.MaxInFlight())
}

func TestSharedRequestBudget(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	reqs, err := ratelimit.NewRedis(env.Client, ratelimit.PerMinute(5), ratelimit.Config{Prefix: env.Prefix + "rl:", HashTag: "openai"})
	if err != nil {
		t.Fatal(err)
	}
	a, b := twoInstances(t, env, fake, Config{Requests: reqs})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var upstream, limited int
	for i := range 10 {
		c := a
		if i%2 == 1 {
			c = b
		}
		resp, err := c.CreateChatCompletion(ctx, request("budget"))
		switch {
		case err != nil:
			t.Fatal(err)
		case IsDegraded(resp) && DegradedReason(resp.Header()) == ReasonRateLimited:
			limited++
		case !IsDegraded(resp):
			upstream++
		}
	}
	if upstream != 5 || limited != 5 || fake.Requests() != 5 {
		t.Fatalf("answered %d, limited %d, upstream calls %d; want 5, 5, 5", upstream, limited, fake.Requests())
	}
}
