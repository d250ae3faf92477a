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
// (600 per minute for 2 minutes, 200 calls per 5s step: steps shorter
// than burst/rate, so the overload is sustained). On a real server
// or cluster the time is real and the period short (600 per 2s for 3s),
// and usage is measured over the spans in which denials prove the
// overload (see accuracyReal).
func TestAccuracySharedBudget(t *testing.T) {
	env := testutil.Redis(t)
	const instances, goroutines = 4, 200
	limit := ratelimit.Limit{Rate: 600, Period: time.Minute, Burst: 60}
	if env.Backend != testutil.Miniredis {
		limit.Period = 2 * time.Second
	}
	lims := make([]*ratelimit.Redis, instances)
	for i := range lims {
		// 200 callers queue for miniredis's one Lua interpreter (slower
		// still under -race) longer than the default RedisTimeout: the
		// test measures the budget, not the bound.
		lims[i] = newRedis(t, env.NewClient(), env.Prefix, limit, ratelimit.Config{RedisTimeout: time.Minute})
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

// call is one Allow as the test saw it: the script decided somewhere
// between start and end.
type call struct {
	start, end time.Time
	allowed    bool
}

func accuracyReal(t *testing.T, lims []*ratelimit.Redis, limit ratelimit.Limit, goroutines int) {
	const run = 3 * time.Second
	const maxCallsPerGoroutine = 100000
	ctx, cancel := context.WithTimeout(context.Background(), run+10*time.Second)
	defer cancel()
	perG := make([][]call, goroutines)
	stop := time.Now().Add(run)
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
				if err != nil {
					t.Error(err)
					return
				}
				perG[g] = append(perG[g], call{start, end, d.Allowed})
			}
		})
	}
	wg.Wait()
	var calls, allowed []call
	for _, cs := range perG {
		calls = append(calls, cs...)
	}
	for _, c := range calls {
		if c.allowed {
			allowed = append(allowed, c)
		}
	}

	// Upper bound: each allowed call is placed in a window only if it
	// started and ended inside it, so scheduling noise can only lower the
	// counts checked.
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
	if maxWin > limit.Rate+limit.Burst {
		t.Errorf("a window of %s allowed %d, more than rate+burst = %d", limit.Period, maxWin, limit.Rate+limit.Burst)
	}

	// Lower bound, measured only while the overload is proven, so that a
	// stall of this process (which leaves Redis without callers, and lets
	// the budget go unused through no fault of the limiter) cannot fail it.
	// A denied call proves the bucket was empty when the script ran. Two
	// denials, the second running less than (burst-1) units of time after
	// the first, prove the bucket never filled up in between, so GCRA owes
	// the rate over that span: a chain of such denials is a span of
	// sustained overload. Time is counted between the end of a chain's
	// first denial and the start of its last. An allowed call is counted
	// in a span when the middle of its [start, end] falls inside: the
	// script ran somewhere in between, and on a loaded machine, where
	// calls take long, counting only the calls that started and ended
	// inside would drop many that the limiter did allow at the edges and
	// fail a correct limiter.
	refill := time.Duration(limit.Burst-1) * limit.Period / time.Duration(limit.Rate)
	var denied []call
	for _, c := range calls {
		if !c.allowed {
			denied = append(denied, c)
		}
	}
	sort.Slice(denied, func(i, j int) bool { return denied[i].end.Before(denied[j].end) })
	type interval struct{ from, to time.Time }
	var spans []interval
	first, last := -1, -1
	flush := func() {
		if first >= 0 && last > first {
			spans = append(spans, interval{denied[first].end, denied[last].start})
		}
	}
	for i, c := range denied {
		switch {
		case first < 0:
			first, last = i, i
		case !c.start.After(denied[last].end):
			// Overlaps the chain's last denial: order in Redis unknown.
		case c.end.Sub(denied[last].start) < refill:
			last = i
		default:
			flush()
			first, last = i, i
		}
	}
	flush()
	var covered time.Duration
	used := 0
	for _, sp := range spans {
		covered += sp.to.Sub(sp.from)
		for _, c := range allowed {
			mid := c.start.Add(c.end.Sub(c.start) / 2)
			if !mid.Before(sp.from) && mid.Before(sp.to) {
				used++
			}
		}
	}
	owed := float64(limit.Rate) * float64(covered) / float64(limit.Period)
	t.Logf("real %s: %d calls, %d allowed; busiest %s window %d (bound %d); overload proven for %s in %d spans: %d allowed of %.0f owed (%.1f %%)",
		run, len(calls), len(allowed), limit.Period, maxWin, limit.Rate+limit.Burst,
		covered.Round(time.Millisecond), len(spans), used, owed, 100*float64(used)/owed)
	if covered < run/3 {
		t.Fatalf("overload proven for only %s of %s: the test process was too starved to measure usage", covered, run)
	}
	if float64(used) < 0.95*owed {
		t.Errorf("under sustained overload allowed %d, less than 95 %% of the %.0f owed over %s", used, owed, covered)
	}
}
