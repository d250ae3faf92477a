package ratelimit_test

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// TestAccuracySharedBudget: 4 limiters on 4 clients (4 instances), 200
// goroutines pounding one budget. In any window of one period the
// instances together never allow more than rate + burst, and under
// sustained overload they use at least 95 % of the budget.
//
// On miniredis the window is simulated: Redis TIME is set step by step
// (600 per minute for 2 minutes, 200 calls per 5s step: steps shorter than burst/rate, so the overload is sustained). On a real server
// or cluster the time is real and the period short (600 per 2s for 3s);
// each allowed call is placed in a window only if it started and ended
// inside it, so scheduling noise can only lower the counts checked.
func TestAccuracySharedBudget(t *testing.T) {
	env := testutil.Redis(t)
	const instances, goroutines = 4, 200
	limit := ratelimit.Limit{Rate: 600, Period: time.Minute, Burst: 60}
	if env.Backend != testutil.Miniredis {
		limit.Period = 2 * time.Second
	}
	lims := make([]*ratelimit.Redis, instances)
	for i := range lims {
		lims[i] = newRedis(t, env.NewClient(), env.Prefix, limit, ratelimit.Config{})
	}
	if env.Backend == testutil.Miniredis {
		accuracySimulated(t, env, lims, limit, goroutines)
	} else {
		accuracyReal(t, lims, limit, goroutines)
	}
	for i, l := range lims {
		if s := l.Stats(); s.Fallback != 0 || s.StoreErrors != 0 {
			t.Errorf("instance %d used the fallback: %+v", i, s)
		}
	}
}

func accuracySimulated(t *testing.T, env *testutil.RedisEnv, lims []*ratelimit.Redis, limit ratelimit.Limit, goroutines int) {
	const step, steps = 5 * time.Second, 25
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	ctx := context.Background()
	perStep := make([]int, steps)
	for s := range steps {
		env.Mini.SetTime(t0.Add(time.Duration(s) * step))
		var allowed atomic.Int64
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Go(func() {
				d, err := lims[g%len(lims)].Allow(ctx, "org", 1)
				if err != nil {
					t.Error(err)
				}
				if d.Allowed {
					allowed.Add(1)
				}
			})
		}
		wg.Wait()
		perStep[s] = int(allowed.Load())
	}
	// A closed window of one period holds period/step + 1 steps.
	span := int(limit.Period/step) + 1
	maxWin := 0
	for s := 0; s+span <= steps; s++ {
		sum := 0
		for _, n := range perStep[s : s+span] {
			sum += n
		}
		maxWin = max(maxWin, sum)
	}
	total := 0
	for _, n := range perStep {
		total += n
	}
	elapsed := time.Duration(steps-1) * step
	budget := float64(limit.Burst) + float64(limit.Rate)*float64(elapsed)/float64(limit.Period)
	t.Logf("simulated %s: allowed %d of %d calls, budget %.0f (%.1f %%), busiest %s window %d (bound %d)",
		elapsed, total, steps*goroutines, budget, 100*float64(total)/budget, limit.Period, maxWin, limit.Rate+limit.Burst)
	if maxWin > limit.Rate+limit.Burst {
		t.Errorf("a window of %s allowed %d, more than rate+burst = %d", limit.Period, maxWin, limit.Rate+limit.Burst)
	}
	if float64(total) < 0.95*budget {
		t.Errorf("allowed %d, less than 95 %% of the budget %.0f", total, budget)
	}
}

type span struct{ start, end time.Time }

func accuracyReal(t *testing.T, lims []*ratelimit.Redis, limit ratelimit.Limit, goroutines int) {
	const run = 3 * time.Second
	const maxCallsPerGoroutine = 100000
	ctx, cancel := context.WithTimeout(context.Background(), run+10*time.Second)
	defer cancel()
	var (
		mu      sync.Mutex
		allowed []span
		calls   atomic.Int64
	)
	begin := time.Now()
	stop := begin.Add(run)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			lim := lims[g%len(lims)]
			for range maxCallsPerGoroutine {
				start := time.Now()
				if !start.Before(stop) {
					return
				}
				d, err := lim.Allow(ctx, "org", 1)
				end := time.Now()
				calls.Add(1)
				if err != nil {
					t.Error(err)
					return
				}
				if d.Allowed {
					mu.Lock()
					allowed = append(allowed, span{start, end})
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	sort.Slice(allowed, func(i, j int) bool { return allowed[i].start.Before(allowed[j].start) })
	maxWin := 0
	for i := range allowed {
		winEnd := allowed[i].start.Add(limit.Period)
		n := 0
		for _, s := range allowed[i:] {
			if !s.start.Before(winEnd) {
				break
			}
			if s.end.Before(winEnd) {
				n++
			}
		}
		maxWin = max(maxWin, n)
	}
	// The overload lasts from begin to stop: every goroutine keeps a call
	// in flight. Calls still in flight after stop may add a few more.
	elapsed := stop.Sub(begin)
	budget := float64(limit.Burst) + float64(limit.Rate)*float64(elapsed)/float64(limit.Period)
	total := len(allowed)
	t.Logf("real %s: allowed %d of %d calls, budget %.0f (%.1f %%), busiest %s window %d (bound %d)",
		elapsed.Round(time.Millisecond), total, calls.Load(), budget, 100*float64(total)/budget, limit.Period, maxWin, limit.Rate+limit.Burst)
	if maxWin > limit.Rate+limit.Burst {
		t.Errorf("a window of %s allowed %d, more than rate+burst = %d", limit.Period, maxWin, limit.Rate+limit.Burst)
	}
	if float64(total) < 0.95*budget {
		t.Errorf("allowed %d, less than 95 %% of the budget %.0f", total, budget)
	}
}
