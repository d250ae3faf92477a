package chat

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// With MaxBudgetWait, a call whose shared budget would come later than
// that is refused at once, spending nothing, with the time the budget
// gave: the fallback reply, or an *UnavailableError with RetryAfter. The
// caller's own deadline, a minute away, is not what ends it.
func TestMaxBudgetWaitRefusesALongWaitAtOnce(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	// One request per 10 s: the second call would wait about 10 s.
	lim, err := ratelimit.NewRedis(env.Client, ratelimit.Limit{Rate: 1, Period: 10 * time.Second, Burst: 1},
		ratelimit.Config{Prefix: env.Prefix, Name: "requests"})
	if err != nil {
		t.Fatal(err)
	}
	for _, fallback := range []bool{true, false} {
		key := "with-fallback"
		if !fallback {
			key = "without-fallback"
		}
		c := newTestClient(t, fake, Config{Requests: lim, RequestKey: key, MaxBudgetWait: 100 * time.Millisecond, DisableFallback: !fallback}, true)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if resp, err := c.CreateChatCompletion(ctx, request("first")); err != nil || IsDegraded(resp) {
			t.Fatalf("first call: %v", err)
		}
		before := fake.Requests()
		resp, err := c.CreateChatCompletion(ctx, request("second"))
		cancel()
		if fallback {
			if err != nil || !IsDegraded(resp) || DegradedReason(resp.Header()) != ReasonRateLimited {
				t.Fatalf("second call: %v, degraded %v (%q); want the fallback for %s", err, IsDegraded(resp), DegradedReason(resp.Header()), ReasonRateLimited)
			}
		} else {
			var ue *UnavailableError
			if !errors.As(err, &ue) || ue.Reason != ReasonRateLimited || ue.RetryAfter < 5*time.Second {
				t.Fatalf("second call: %v; want an *UnavailableError %s with RetryAfter about 10s", err, ReasonRateLimited)
			}
		}
		if fake.Requests() != before {
			t.Fatalf("the refused call reached the upstream")
		}
	}
}

// An adaptive pause longer than MaxBudgetWait is not slept: the call is
// refused at once.
func TestMaxBudgetWaitCoversThePause(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	c := newTestClient(t, fake, Config{MaxAttempts: 1, MaxBudgetWait: 100 * time.Millisecond, DisableFallback: true}, false)
	var slept []time.Duration
	c.sleep = func(ctx context.Context, d time.Duration) error {
		slept = append(slept, d)
		return ctx.Err()
	}
	fake.Script(testutil.FakeStep{Status: 429, RetryAfter: 10 * time.Second})
	if _, err := c.CreateChatCompletion(context.Background(), request("429")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("429: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := c.CreateChatCompletion(ctx, request("during the pause"))
	var ue *UnavailableError
	if !errors.As(err, &ue) || ue.Reason != ReasonRateLimited {
		t.Fatalf("call during a 10 s pause: %v; want %s at once", err, ReasonRateLimited)
	}
	if len(slept) != 0 || fake.Requests() != 1 {
		t.Fatalf("slept %v, upstream requests %d; want no sleep and no second request", slept, fake.Requests())
	}
}
