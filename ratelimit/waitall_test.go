package ratelimit_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// waitAllEnv is a request limiter (10/h) and a token limiter (1000/h)
// sharing a hash tag, so that WaitAll over both is one script, with the
// token budget down to 100 so that a WaitAll of 600 tokens must reserve
// and wait 30 minutes. Hour-long periods keep real-Redis runs exact:
// nothing measurable refills while the test runs (one request takes 6
// minutes to come back, one token 3.6s). On miniredis Redis TIME is frozen.
//
// The sleep hook of both limiters reports the wait on the returned
// channel, then blocks until the WaitAll's ctx ends: the test acts while
// the WaitAll is waiting and ends the wait by cancelling.
func waitAllEnv(t *testing.T) (req, tok *ratelimit.Redis, waiting <-chan time.Duration) {
	t.Helper()
	env := testutil.Redis(t)
	if env.Mini != nil {
		env.Mini.SetTime(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	}
	req = newRedis(t, env.Client, env.Prefix+"req:", ratelimit.PerHour(10), ratelimit.Config{HashTag: "openai"})
	tok = newRedis(t, env.Client, env.Prefix+"tok:", ratelimit.PerHour(1000), ratelimit.Config{HashTag: "openai"})
	ch := make(chan time.Duration, 1)
	hook := func(ctx context.Context, d time.Duration) error {
		ch <- d
		<-ctx.Done()
		return ctx.Err()
	}
	ratelimit.SetSleep(req, hook)
	ratelimit.SetSleep(tok, hook)
	if d, err := tok.Allow(context.Background(), "org", 900); err != nil || !d.Allowed || d.Remaining != 100 {
		t.Fatalf("spending 900 tokens: %+v, %v", d, err)
	}
	return req, tok, ch
}

func remaining(t *testing.T, lim *ratelimit.Redis, key string) int {
	t.Helper()
	n, err := ratelimit.Remaining(context.Background(), lim, key)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// startWaitAll runs WaitAll for 1 request and 600 tokens until the
// sleep hook reports its wait, and returns the cancel that ends it and
// the channel of its result.
func startWaitAll(t *testing.T, req, tok *ratelimit.Redis, waiting <-chan time.Duration) (context.CancelFunc, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- ratelimit.WaitAll(ctx, ratelimit.Cost{Limiter: req, Key: "org", N: 1}, ratelimit.Cost{Limiter: tok, Key: "org", N: 600})
	}()
	select {
	case d := <-waiting:
		// 500 tokens missing at 1000/h: 30 minutes.
		if d < 29*time.Minute || d > 30*time.Minute {
			t.Errorf("WaitAll waits %s, want ~30m (the tokens')", d)
		}
	case err := <-done:
		cancel()
		t.Fatalf("WaitAll returned %v without waiting", err)
	}
	return cancel, done
}

// A WaitAll cancelled while it waits leaves every budget as it found it,
// including the budgets that did not need the wait.
func TestWaitAllCancelledSpendsNothing(t *testing.T) {
	req, tok, waiting := waitAllEnv(t)
	reqBefore, tokBefore := remaining(t, req, "org"), remaining(t, tok, "org")
	if reqBefore != 10 || tokBefore != 100 {
		t.Fatalf("before: %d requests, %d tokens; want 10, 100", reqBefore, tokBefore)
	}
	cancel, done := startWaitAll(t, req, tok, waiting)
	// While it waits it holds exactly its cost of each budget.
	if got := remaining(t, req, "org"); got != reqBefore-1 {
		t.Errorf("requests while waiting: %d left, want %d (one held)", got, reqBefore-1)
	}
	if got := remaining(t, tok, "org"); got != 0 {
		t.Errorf("tokens while waiting: %d left, want 0 (in debt)", got)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled WaitAll = %v, want context.Canceled", err)
	}
	if got := remaining(t, req, "org"); got != reqBefore {
		t.Errorf("requests after the cancelled WaitAll: %d left, want %d as before", got, reqBefore)
	}
	if got := remaining(t, tok, "org"); got != tokBefore {
		t.Errorf("tokens after the cancelled WaitAll: %d left, want %d as before", got, tokBefore)
	}
}

// While a WaitAll waits on the tokens, the request budget it holds is
// one request, not the whole wait's worth.
func TestWaitAllWaiterHoldsItsCost(t *testing.T) {
	req, tok, waiting := waitAllEnv(t)
	cancel, done := startWaitAll(t, req, tok, waiting)
	d, err := req.Allow(context.Background(), "org", 1)
	if err != nil || !d.Allowed || d.Remaining != 8 {
		t.Errorf("another caller's Allow while WaitAll waits = %+v, %v; want allowed with 8 left (10 - the waiter's 1 - its own 1)", d, err)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled WaitAll = %v, want context.Canceled", err)
	}
	if got := remaining(t, req, "org"); got != 9 {
		t.Errorf("requests after the cancelled WaitAll: %d left, want 9 (the other caller's spend only)", got)
	}
}
