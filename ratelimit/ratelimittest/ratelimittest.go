// Package ratelimittest is a conformance suite for ratelimit.Limiter
// implementations: ratelimit's own (Local, Redis, a Redis failing open on
// its fallback) and anyone else's.
//
//	func TestMyLimiter(t *testing.T) {
//		ratelimittest.Run(t, func(t *testing.T, l ratelimit.Limit) ratelimit.Limiter {
//			return newMyLimiter(t, l)
//		})
//	}
//
// The suite treats the limiter as a black box and runs on the wall clock.
// It uses hour-long periods, so nothing measurable refills while a check
// runs and the expected counts are exact; it never sleeps. Run it with
// -race.
package ratelimittest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/ratelimit"
)

// NewLimiter returns a fresh, empty limiter enforcing l on every key.
// It registers its own cleanup with t.
type NewLimiter func(t *testing.T, l ratelimit.Limit) ratelimit.Limiter

// Run checks that the limiters newLimiter makes honour the Limiter
// contract: bursts and remainders, independent keys, a
// *chatscale.InputError (Field "Key" or "N") for bad input, Adjust in both directions, Wait's deadline rule, exact counts
// under concurrency, and AllowAll's all-or-nothing spend.
func Run(t *testing.T, newLimiter NewLimiter) {
	t.Run("Burst", func(t *testing.T) { testBurst(t, newLimiter) })
	t.Run("Keys", func(t *testing.T) { testKeys(t, newLimiter) })
	t.Run("Cost", func(t *testing.T) { testCost(t, newLimiter) })
	t.Run("Invalid", func(t *testing.T) { testInvalid(t, newLimiter) })
	t.Run("Adjust", func(t *testing.T) { testAdjust(t, newLimiter) })
	t.Run("WaitDeadline", func(t *testing.T) { testWaitDeadline(t, newLimiter) })
	t.Run("WaitCancelled", func(t *testing.T) { testWaitCancelled(t, newLimiter) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, newLimiter) })
	t.Run("AllowAll", func(t *testing.T) { testAllowAll(t, newLimiter) })
}

// oneUnit is the time one unit of PerHour(10) takes to come back.
const oneUnit = 6 * time.Minute

func testBurst(t *testing.T, newLimiter NewLimiter) {
	lim := newLimiter(t, ratelimit.PerHour(10))
	ctx := context.Background()
	for i := range 10 {
		d, err := lim.Allow(ctx, "k", 1)
		if err != nil || !d.Allowed || d.Remaining != 9-i || d.RetryAfter != 0 {
			t.Fatalf("call %d: %+v, %v; want allowed, %d remaining, no RetryAfter", i, d, err, 9-i)
		}
	}
	d, err := lim.Allow(ctx, "k", 1)
	if err != nil || d.Allowed || d.Remaining != 0 {
		t.Fatalf("past the burst: %+v, %v; want denied, 0 remaining", d, err)
	}
	if d.RetryAfter <= oneUnit-time.Minute || d.RetryAfter > oneUnit {
		t.Fatalf("RetryAfter = %s, want just under %s", d.RetryAfter, oneUnit)
	}
	if d.ResetAfter <= time.Hour-time.Minute || d.ResetAfter > time.Hour {
		t.Fatalf("ResetAfter = %s, want just under 1h", d.ResetAfter)
	}
}

func testKeys(t *testing.T, newLimiter NewLimiter) {
	lim := newLimiter(t, ratelimit.PerHour(1))
	ctx := context.Background()
	for _, k := range []string{"a", "b", "a:b", "{a}", "a}", "é", "a b"} {
		if d, err := lim.Allow(ctx, k, 1); err != nil || !d.Allowed {
			t.Fatalf("first spend on %q: %+v, %v; keys must not share budgets", k, d, err)
		}
	}
	if d, _ := lim.Allow(ctx, "a", 1); d.Allowed {
		t.Fatal(`"a" passed twice with a burst of 1`)
	}
}

func testCost(t *testing.T, newLimiter NewLimiter) {
	lim := newLimiter(t, ratelimit.PerHour(10))
	ctx := context.Background()
	if d, err := lim.Allow(ctx, "k", 10); err != nil || !d.Allowed || d.Remaining != 0 {
		t.Fatalf("a cost equal to the burst: %+v, %v; want allowed", d, err)
	}
	lim = newLimiter(t, ratelimit.PerHour(10))
	if d, _ := lim.Allow(ctx, "k", 6); !d.Allowed || d.Remaining != 4 {
		t.Fatalf("cost 6: %+v, want 4 remaining", d)
	}
	d, err := lim.Allow(ctx, "k", 5)
	if err != nil || d.Allowed || d.Remaining != 4 || d.RetryAfter <= 0 || d.RetryAfter > oneUnit {
		t.Fatalf("cost 5 with 4 left: %+v, %v; want denied, 4 remaining, RetryAfter within one unit", d, err)
	}
	if d, _ := lim.Allow(ctx, "k", 4); !d.Allowed {
		t.Fatalf("cost 4 with 4 left: %+v; a denied cost must spend nothing", d)
	}
}

func testInvalid(t *testing.T, newLimiter NewLimiter) {
	lim := newLimiter(t, ratelimit.PerHour(10))
	ctx := context.Background()
	for _, c := range []struct {
		key   string
		n     int
		field string
	}{{"", 1, "Key"}, {"k", 0, "N"}, {"k", -1, "N"}, {"k", 11, "N"}} {
		_, err := lim.Allow(ctx, c.key, c.n)
		checkInputError(t, fmt.Sprintf("Allow(%q, %d)", c.key, c.n), err, c.field)
		err = lim.Wait(ctx, c.key, c.n)
		checkInputError(t, fmt.Sprintf("Wait(%q, %d)", c.key, c.n), err, c.field)
	}
	checkInputError(t, `Adjust("", 1)`, lim.Adjust(ctx, "", 1), "Key")
	if d, _ := lim.Allow(ctx, "k", 10); !d.Allowed {
		t.Error("bad calls spent budget")
	}
}

// checkInputError checks that err is a *chatscale.InputError about field,
// matching chatscale.ErrInvalidInput.
func checkInputError(t *testing.T, call string, err error, field string) {
	t.Helper()
	var ie *chatscale.InputError
	if !errors.As(err, &ie) || !errors.Is(err, chatscale.ErrInvalidInput) || ie.Field != field || ie.Reason == "" {
		t.Errorf("%s = %v, want a *chatscale.InputError for %s", call, err, field)
	}
}

func testAdjust(t *testing.T, newLimiter NewLimiter) {
	lim := newLimiter(t, ratelimit.PerHour(10))
	ctx := context.Background()
	if d, _ := lim.Allow(ctx, "k", 10); !d.Allowed {
		t.Fatal("burst denied")
	}
	if err := lim.Adjust(ctx, "k", -3); err != nil {
		t.Fatal(err)
	}
	if d, _ := lim.Allow(ctx, "k", 3); !d.Allowed || d.Remaining != 0 {
		t.Fatalf("after refunding 3: %+v, want 3 allowed, 0 left", d)
	}
	if err := lim.Adjust(ctx, "k", -100); err != nil {
		t.Fatal(err)
	}
	if d, _ := lim.Allow(ctx, "k", 1); !d.Allowed || d.Remaining != 9 {
		t.Fatalf("after an oversized refund: %+v, want 9 left (never beyond the burst)", d)
	}
	if err := lim.Adjust(ctx, "k", 0); err != nil {
		t.Fatalf("Adjust by 0 = %v", err)
	}
	// Charging 20 on 9 left puts 11 units in debt: the next unit is 12
	// units away, and the charge did not wait.
	if err := lim.Adjust(ctx, "k", 20); err != nil {
		t.Fatal(err)
	}
	d, _ := lim.Allow(ctx, "k", 1)
	if d.Allowed || d.RetryAfter <= 11*oneUnit || d.RetryAfter > 12*oneUnit {
		t.Fatalf("after charging into debt: %+v, want denied for just under 72m", d)
	}
}

func testWaitDeadline(t *testing.T, newLimiter NewLimiter) {
	lim := newLimiter(t, ratelimit.PerHour(2))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for range 2 {
		if err := lim.Wait(ctx, "k", 1); err != nil {
			t.Fatalf("Wait with budget left = %v", err)
		}
	}
	before, _ := lim.Allow(ctx, "k", 1)
	// The next unit is ~30 minutes away, past the 10-minute deadline.
	err := lim.Wait(ctx, "k", 1)
	var le *ratelimit.LimitedError
	if !errors.As(err, &le) || !errors.Is(err, ratelimit.ErrLimited) {
		t.Fatalf("Wait past the deadline = %v, want a *LimitedError", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Wait slept until the deadline instead of failing at once")
	}
	if le.Key != "k" || le.RetryAfter <= 10*time.Minute {
		t.Fatalf("LimitedError = %+v, want key k and a RetryAfter past the deadline", le)
	}
	after, _ := lim.Allow(ctx, "k", 1)
	if after.RetryAfter > before.RetryAfter+time.Minute {
		t.Fatalf("the failed Wait spent budget: RetryAfter went from %s to %s", before.RetryAfter, after.RetryAfter)
	}
}

func testWaitCancelled(t *testing.T, newLimiter NewLimiter) {
	lim := newLimiter(t, ratelimit.PerHour(1))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := lim.Wait(ctx, "k", 1); err == nil {
		t.Fatal("Wait with a cancelled ctx succeeded")
	}
	if d, _ := lim.Allow(context.Background(), "k", 1); !d.Allowed {
		t.Fatal("a Wait with a cancelled ctx spent budget")
	}
}

func testConcurrent(t *testing.T, newLimiter NewLimiter) {
	lim := newLimiter(t, ratelimit.PerHour(50))
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			for range 10 {
				d, err := lim.Allow(context.Background(), "k", 1)
				if err != nil {
					t.Error(err)
					return
				}
				if d.Allowed {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := allowed.Load(); got != 50 {
		t.Fatalf("allowed %d of 200 concurrent calls with a burst of 50", got)
	}
}

func testAllowAll(t *testing.T, newLimiter NewLimiter) {
	req := newLimiter(t, ratelimit.PerHour(10))
	tok := newLimiter(t, ratelimit.PerHour(1000))
	ctx := context.Background()
	costs := func(tokens int) []ratelimit.Cost {
		return []ratelimit.Cost{{Limiter: req, Key: "org", N: 1}, {Limiter: tok, Key: "org", N: tokens}}
	}
	if d, err := ratelimit.AllowAll(ctx, costs(900)...); err != nil || !d.Allowed {
		t.Fatalf("AllowAll = %+v, %v", d, err)
	}
	d, err := ratelimit.AllowAll(ctx, costs(200)...)
	if err != nil || d.Allowed || d.RetryAfter <= 0 {
		t.Fatalf("AllowAll past the token budget = %+v, %v; want denied with a RetryAfter", d, err)
	}
	if d, _ := req.Allow(ctx, "org", 1); d.Remaining != 8 {
		t.Fatalf("a denied AllowAll spent the request budget: %+v", d)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	// 500 tokens missing at 1000 per hour: 30 minutes, past the deadline.
	var le *ratelimit.LimitedError
	if err := ratelimit.WaitAll(wctx, costs(600)...); !errors.As(err, &le) || wctx.Err() != nil {
		t.Fatalf("WaitAll past the deadline = %v, want a *LimitedError at once", err)
	}
	if d, _ := req.Allow(ctx, "org", 1); d.Remaining != 7 {
		t.Fatalf("a failed WaitAll spent the request budget: %+v", d)
	}
}
