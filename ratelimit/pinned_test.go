package ratelimit_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// TestRedisFailOpenInstancesShareTheRateOverTime: while Redis fails, N
// instances (N limiters with ExpectedInstances N, each with its own
// client on one failing Redis) together let through about the configured
// limit, burst plus rate over time, over several periods, not N times it.
// TestRedisFailOpen checks only the fallback's burst. The fake clock
// (Config.Now) drives the fallbacks and the probes.
func TestRedisFailOpenInstancesShareTheRateOverTime(t *testing.T) {
	const instances, periods = 4, 5
	limit := ratelimit.Limit{Rate: 40, Period: time.Minute, Burst: 20}
	const step = time.Second
	const offered = 3 // calls per instance per step: 180/min each, far over the share of 10/min
	env := testutil.MiniredisEnv(t)
	env.Mini.SetError("ERR down")
	clk := newClock()
	lims := make([]*ratelimit.Redis, instances)
	for i := range lims {
		lims[i] = newRedis(t, env.NewClient(), env.Prefix, limit, ratelimit.Config{ExpectedInstances: instances, Now: clk.Now})
	}
	ctx := context.Background()
	allowed := make([]int, instances)
	steps := int(periods * limit.Period / step)
	for range steps {
		for i, lim := range lims {
			for range offered {
				d, err := lim.Allow(ctx, "org", 1)
				if err != nil {
					t.Fatalf("Allow while Redis fails: %v", err)
				}
				if d.Allowed {
					allowed[i]++
				}
			}
		}
		clk.Advance(step)
	}
	elapsed := time.Duration(steps-1) * step
	// The configured limit over the run: the burst, then the rate.
	want := float64(limit.Burst) + float64(limit.Rate)*float64(elapsed)/float64(limit.Period)
	total := 0
	for i, n := range allowed {
		total += n
		share := want / instances
		if float64(n) < 0.9*share || float64(n) > share+1 {
			t.Errorf("instance %d let %d through in %v; want about %.0f (limit/ExpectedInstances)", i, n, elapsed, share)
		}
		if s := lims[i].Stats(); s.Fallback != uint64(steps*offered) || !s.Unavailable {
			t.Errorf("instance %d: Stats = %+v; want every call answered by the fallback", i, s)
		}
	}
	t.Logf("%d instances let %d through over %v (%d periods); the limit allows %.0f", instances, total, elapsed, periods, want)
	if float64(total) < 0.9*want || float64(total) > want+instances {
		t.Fatalf("%d instances failing open let %d through over %v; want about %.0f (burst %d + rate %d/%v), not %d times it",
			instances, total, elapsed, want, limit.Burst, limit.Rate, limit.Period, instances)
	}
}

// TestAllDenialsNameTheBlockingBudget: when AllowAll or WaitAll is denied
// over a request budget and a token budget on different keys, the
// Decision's RetryAfter and the *LimitedError's Key and RetryAfter are
// those of the budget that blocked, whichever it is, whether the costs
// share one script, run as separate groups (two clients) or mix a *Local
// and a *Redis.
//
// Hour-long periods keep real-Redis runs exact to a few seconds: one
// request takes 6 minutes to come back, 500 tokens 30 minutes.
func TestAllDenialsNameTheBlockingBudget(t *testing.T) {
	layouts := []struct {
		name string
		// oneScript: the costs are decided together, so the error names
		// the budget with the longest wait. Otherwise the first group
		// denied is reported (see AllowAll).
		oneScript bool
		make      func(t *testing.T, env *testutil.RedisEnv) (req, tok ratelimit.Limiter)
	}{
		{"OneScript", true, func(t *testing.T, env *testutil.RedisEnv) (ratelimit.Limiter, ratelimit.Limiter) {
			c := env.NewClient()
			return newRedis(t, c, env.Prefix+"req:", ratelimit.PerHour(10), ratelimit.Config{HashTag: "openai"}),
				newRedis(t, c, env.Prefix+"tok:", ratelimit.PerHour(1000), ratelimit.Config{HashTag: "openai"})
		}},
		{"SeparateGroups", false, func(t *testing.T, env *testutil.RedisEnv) (ratelimit.Limiter, ratelimit.Limiter) {
			return newRedis(t, env.NewClient(), env.Prefix+"req:", ratelimit.PerHour(10), ratelimit.Config{HashTag: "openai"}),
				newRedis(t, env.NewClient(), env.Prefix+"tok:", ratelimit.PerHour(1000), ratelimit.Config{HashTag: "openai"})
		}},
		{"LocalRequests", false, func(t *testing.T, env *testutil.RedisEnv) (ratelimit.Limiter, ratelimit.Limiter) {
			return newLocal(t, ratelimit.PerHour(10), newClock()),
				newRedis(t, env.NewClient(), env.Prefix+"tok:", ratelimit.PerHour(1000), ratelimit.Config{HashTag: "openai"})
		}},
	}
	near := func(got, want time.Duration) bool { return got > want-time.Minute && got <= want }
	for _, lay := range layouts {
		t.Run(lay.name, func(t *testing.T) {
			env := testutil.Redis(t)
			req, tok := lay.make(t, env)
			ratelimit.SetSleep(req, noSleep(t))
			ratelimit.SetSleep(tok, noSleep(t))
			ctx := context.Background()
			costs := func(tokens int) []ratelimit.Cost {
				return []ratelimit.Cost{{Limiter: req, Key: "user-1", N: 1}, {Limiter: tok, Key: "org", N: tokens}}
			}
			// denied checks that AllowAll and WaitAll of costs(tokens) are
			// denied, naming one of the blockers with its own wait.
			denied := func(what string, tokens int, blockers ...blocker) {
				t.Helper()
				d, err := ratelimit.AllowAll(ctx, costs(tokens)...)
				if err != nil || d.Allowed || !slices.ContainsFunc(blockers, func(b blocker) bool { return near(d.RetryAfter, b.wait) }) {
					t.Errorf("%s: AllowAll = %+v, %v; want denied with the RetryAfter of %v", what, d, err, blockers)
				}
				wctx, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()
				err = ratelimit.WaitAll(wctx, costs(tokens)...)
				var le *ratelimit.LimitedError
				if !errors.As(err, &le) || !slices.ContainsFunc(blockers, func(b blocker) bool { return le.Key == b.key && near(le.RetryAfter, b.wait) }) {
					t.Errorf("%s: WaitAll = %v; want a *LimitedError naming %v", what, err, blockers)
				}
			}
			reqs, toks := blocker{"user-1", 6 * time.Minute}, blocker{"org", 30 * time.Minute}
			if d, err := tok.Allow(ctx, "org", 900); err != nil || !d.Allowed {
				t.Fatalf("spending 900 tokens: %+v, %v", d, err)
			}
			// Tokens short (500 missing), requests plentiful.
			denied("tokens short", 600, toks)
			// Requests short, tokens plentiful.
			if d, err := req.Allow(ctx, "user-1", 10); err != nil || !d.Allowed {
				t.Fatalf("spending the 10 requests: %+v, %v (a denied call spent some?)", d, err)
			}
			denied("requests short", 50, reqs)
			// Both short: one script reports the longest wait; separate
			// groups the first group denied, with its own RetryAfter.
			if lay.oneScript {
				denied("both short", 600, toks)
			} else {
				denied("both short", 600, reqs, toks)
			}
			// Nothing was spent by the denials.
			if d, err := tok.Allow(ctx, "org", 100); err != nil || !d.Allowed {
				t.Errorf("the 100 tokens left after the denials: %+v, %v; want allowed", d, err)
			}
		})
	}
}

// blocker is a budget that denies a cost: its key and the wait it needs.
type blocker struct {
	key  string
	wait time.Duration
}

func (b blocker) String() string { return fmt.Sprintf("%q (~%v)", b.key, b.wait) }

// TestRedisWaitWithinDeadlineReservesAndSleeps: a Wait or WaitAll whose
// ctx deadline leaves room for the wait reserves the cost and sleeps
// until it fits, instead of failing. The other tests give Wait either no
// deadline or one too short, so a max wait sent to the script in the
// wrong unit (ms for µs: a 10-minute deadline read as 0.6 s) went unseen.
func TestRedisWaitWithinDeadlineReservesAndSleeps(t *testing.T) {
	env := testutil.Redis(t)
	ctx := context.Background()
	dctx, cancel := context.WithTimeout(ctx, 40*time.Minute)
	defer cancel()

	lim := newRedis(t, env.Client, env.Prefix+"one:", ratelimit.PerHour(10), ratelimit.Config{})
	sl := &sleeps{}
	ratelimit.SetSleep(lim, sl.sleep)
	if d, err := lim.Allow(ctx, "k", 10); err != nil || !d.Allowed {
		t.Fatalf("spending the burst: %+v, %v", d, err)
	}
	if err := lim.Wait(dctx, "k", 1); err != nil {
		t.Fatalf("Wait for one unit (~6m) with 40m to the deadline = %v; want it reserved and waited for", err)
	}
	if got := sl.calls(); len(got) != 1 || got[0] <= 5*time.Minute || got[0] > 6*time.Minute {
		t.Fatalf("Wait slept %v; want once, ~6m", got)
	}

	req, tok := reqTok(t, env, nil)
	sl2 := &sleeps{}
	ratelimit.SetSleep(req, sl2.sleep)
	if d, err := tok.Allow(ctx, "org", 900); err != nil || !d.Allowed {
		t.Fatalf("spending 900 tokens: %+v, %v", d, err)
	}
	costs := []ratelimit.Cost{{Limiter: req, Key: "user-1", N: 1}, {Limiter: tok, Key: "org", N: 600}}
	if err := ratelimit.WaitAll(dctx, costs...); err != nil {
		t.Fatalf("WaitAll for 500 missing tokens (~30m) with 40m to the deadline = %v; want it reserved and waited for", err)
	}
	if got := sl2.calls(); len(got) != 1 || got[0] <= 29*time.Minute || got[0] > 30*time.Minute {
		t.Fatalf("WaitAll slept %v; want once, ~30m", got)
	}
}

// TestRedisKeyLivesUntilTheBucketIsFull: a budget's key expires when its
// bucket is full again, not before (a key that vanishes early hands out a
// fresh burst). Before this test only the real-Redis run of
// TestAccuracySharedBudget caught a TTL set in the wrong unit: miniredis
// never expires keys by itself (its clock moves only by hand), so it
// accepted keys that a real server drops within a second. Reading the
// TTL back catches it on every backend.
func TestRedisKeyLivesUntilTheBucketIsFull(t *testing.T) {
	env := testutil.Redis(t)
	ctx := context.Background()
	lim := newRedis(t, env.Client, env.Prefix, ratelimit.PerHour(10), ratelimit.Config{})
	for _, n := range []int{1, 3} { // 1 then 4 units spent: full again in 6m, then 24m
		d, err := lim.Allow(ctx, "k", n)
		if err != nil || !d.Allowed {
			t.Fatalf("Allow(%d) = %+v, %v", n, d, err)
		}
		pttl, err := env.Client.PTTL(ctx, lim.Key("k")).Result()
		if err != nil {
			t.Fatal(err)
		}
		if pttl > d.ResetAfter+time.Millisecond || pttl < d.ResetAfter-time.Second {
			t.Fatalf("after spending: key TTL %v, ResetAfter %v; want the key to live until the bucket is full", pttl, d.ResetAfter)
		}
	}
}
