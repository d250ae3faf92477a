package ratelimit_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

func newLocal(t *testing.T, l ratelimit.Limit, clk *testutil.Clock) *ratelimit.Local {
	t.Helper()
	lim, err := ratelimit.NewLocal(l, ratelimit.Config{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return lim
}

func TestLocalBurstThenRefill(t *testing.T) {
	clk := newClock()
	lim := newLocal(t, ratelimit.PerMinute(60), clk)
	ctx := context.Background()
	for i := range 60 {
		d, err := lim.Allow(ctx, "k", 1)
		if err != nil || !d.Allowed || d.Remaining != 59-i {
			t.Fatalf("call %d: %+v, %v; want allowed with %d remaining", i, d, err, 59-i)
		}
	}
	d, err := lim.Allow(ctx, "k", 1)
	if err != nil || d.Allowed || d.RetryAfter != time.Second || d.ResetAfter != time.Minute {
		t.Fatalf("over the burst: %+v, %v; want denied, retry after 1s, reset after 1m", d, err)
	}
	if d, _ := lim.Allow(ctx, "other", 1); !d.Allowed {
		t.Fatalf("another key shares the budget: %+v", d)
	}
	clk.Advance(time.Second)
	if d, _ := lim.Allow(ctx, "k", 1); !d.Allowed {
		t.Fatalf("after 1s one unit should be back: %+v", d)
	}
	if d, _ := lim.Allow(ctx, "k", 1); d.Allowed {
		t.Fatalf("only one unit came back: %+v", d)
	}
}

func TestLocalInvalid(t *testing.T) {
	for _, c := range []struct {
		l     ratelimit.Limit
		field string
	}{
		{ratelimit.Limit{}, "limit.Rate"},
		{ratelimit.Limit{Rate: 1}, "limit.Period"},
		{ratelimit.Limit{Period: time.Second}, "limit.Rate"},
		{ratelimit.Limit{Rate: -1, Period: time.Second}, "limit.Rate"},
		{ratelimit.Limit{Rate: 1, Period: -time.Second}, "limit.Period"},
		{ratelimit.Limit{Rate: 1, Period: time.Second, Burst: -1}, "limit.Burst"},
		{ratelimit.Limit{Rate: 2e9, Period: time.Second}, "limit"},
	} {
		_, err := ratelimit.NewLocal(c.l, ratelimit.Config{})
		checkConfigError(t, fmt.Sprintf("NewLocal(%s)", c.l), err, c.field)
	}
	// NewLocal refuses the Configs NewRedis refuses.
	for _, c := range badConfigs {
		_, err := ratelimit.NewLocal(ratelimit.PerHour(1), c.cfg)
		checkConfigError(t, fmt.Sprintf("NewLocal(%+v)", c.cfg), err, c.field)
	}
	lim := newLocal(t, ratelimit.PerMinute(10), newClock())
	ratelimit.SetSleep(lim, noSleep(t))
	checkInvalid(t, lim, 10)
	var zero ratelimit.Local
	_, err := zero.Allow(context.Background(), "k", 1)
	checkConfigError(t, "Allow on the zero Local", err, "Local")
	checkConfigError(t, "Adjust on the zero Local", zero.Adjust(context.Background(), "k", 1), "Local")
}

// badConfigs are impossible Configs and the Field their error names.
var badConfigs = []struct {
	cfg   ratelimit.Config
	field string
}{
	{ratelimit.Config{Prefix: "a{b"}, "Config.Prefix"},
	{ratelimit.Config{HashTag: "x}"}, "Config.HashTag"},
	{ratelimit.Config{Name: "{n}"}, "Config.Name"},
	{ratelimit.Config{ExpectedInstances: -1}, "Config.ExpectedInstances"},
	{ratelimit.Config{ConstLabels: prometheus.Labels{"limiter": "x"}}, "Config.ConstLabels"},
	{ratelimit.Config{ConstLabels: prometheus.Labels{"result": "x"}}, "Config.ConstLabels"},
}

// checkInvalid checks that bad arguments fail at once with a
// *chatscale.InputError naming the argument.
func checkInvalid(t *testing.T, lim ratelimit.Limiter, burst int) {
	t.Helper()
	ctx := context.Background()
	for _, c := range []struct {
		key   string
		n     int
		field string
	}{{"", 1, "Key"}, {"k", 0, "N"}, {"k", -1, "N"}, {"k", burst + 1, "N"}} {
		_, err := lim.Allow(ctx, c.key, c.n)
		checkInputError(t, fmt.Sprintf("Allow(%q, %d)", c.key, c.n), err, c.field)
		err = lim.Wait(ctx, c.key, c.n)
		checkInputError(t, fmt.Sprintf("Wait(%q, %d)", c.key, c.n), err, c.field)
	}
	_, err := lim.Allow(ctx, "k", burst+1)
	want := fmt.Sprintf("ratelimit: invalid N: %d is more than the burst %d: it can never pass", burst+1, burst)
	if err == nil || err.Error() != want {
		t.Errorf("Allow over the burst = %v, want %q", err, want)
	}
	checkInputError(t, "Adjust with an empty key", lim.Adjust(ctx, "", 1), "Key")
}

func TestLocalWaitDeadline(t *testing.T) {
	clk := newClock()
	lim := newLocal(t, ratelimit.PerSecond(1), clk)
	ratelimit.SetSleep(lim, noSleep(t))
	ctx := context.Background()
	if err := lim.Wait(ctx, "k", 1); err != nil {
		t.Fatalf("first Wait: %v", err)
	}
	dctx, cancel := context.WithDeadline(ctx, clk.Now().Add(500*time.Millisecond))
	defer cancel()
	err := lim.Wait(dctx, "k", 1)
	var le *ratelimit.LimitedError
	if !errors.As(err, &le) || !errors.Is(err, ratelimit.ErrLimited) || le.RetryAfter != time.Second || le.Key != "k" {
		t.Fatalf("Wait past the deadline = %v, want *LimitedError{k, 1s}", err)
	}
	if dctx.Err() != nil {
		t.Fatal("Wait returned only after the deadline")
	}
	// Nothing was reserved: after 1s the unit is there for Allow.
	clk.Advance(time.Second)
	if d, _ := lim.Allow(ctx, "k", 1); !d.Allowed {
		t.Fatalf("a failed Wait kept its reservation: %+v", d)
	}
}

func TestLocalWaitSleepsExactly(t *testing.T) {
	clk := newClock()
	lim := newLocal(t, ratelimit.PerSecond(2), clk)
	sl := &sleeps{clock: clk}
	ratelimit.SetSleep(lim, sl.sleep)
	ctx, cancel := context.WithDeadline(context.Background(), clk.Now().Add(time.Minute))
	defer cancel()
	for range 4 {
		if err := lim.Wait(ctx, "k", 1); err != nil {
			t.Fatal(err)
		}
	}
	got := sl.calls()
	if len(got) != 2 || got[0] != 500*time.Millisecond || got[1] != 500*time.Millisecond {
		t.Fatalf("sleeps = %v, want [500ms 500ms] after the burst of 2", got)
	}
}

func TestLocalWaitCancelledGivesBack(t *testing.T) {
	clk := newClock()
	lim := newLocal(t, ratelimit.PerSecond(1), clk)
	sl := &sleeps{clock: clk, err: context.Canceled}
	ratelimit.SetSleep(lim, sl.sleep)
	ctx := context.Background()
	_ = lim.Wait(ctx, "k", 1)
	if err := lim.Wait(ctx, "k", 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait = %v, want the sleep's error", err)
	}
	clk.Advance(time.Second)
	if d, _ := lim.Allow(ctx, "k", 1); !d.Allowed {
		t.Fatalf("the cancelled Wait kept its reservation: %+v", d)
	}
}

func TestLocalAdjustRefund(t *testing.T) {
	clk := newClock()
	lim := newLocal(t, ratelimit.PerMinute(100), clk)
	ctx := context.Background()
	if d, _ := lim.Allow(ctx, "k", 100); !d.Allowed {
		t.Fatal("the whole burst should pass")
	}
	if err := lim.Adjust(ctx, "k", -30); err != nil {
		t.Fatal(err)
	}
	if d, _ := lim.Allow(ctx, "k", 30); !d.Allowed || d.Remaining != 0 {
		t.Fatalf("after a refund of 30: %+v, want 30 allowed and 0 left", d)
	}
	// A refund never fills beyond the burst.
	if err := lim.Adjust(ctx, "k", -1000); err != nil {
		t.Fatal(err)
	}
	if d, _ := lim.Allow(ctx, "k", 1); !d.Allowed || d.Remaining != 99 {
		t.Fatalf("after an oversized refund: %+v, want 99 left", d)
	}
	// Refunding a key never seen does nothing and keeps no entry.
	if err := lim.Adjust(ctx, "never", -5); err != nil {
		t.Fatal(err)
	}
	if got := lim.Stats().Keys; got != 1 {
		t.Fatalf("Keys = %d, want 1", got)
	}
}

func TestLocalAdjustCharge(t *testing.T) {
	clk := newClock()
	lim := newLocal(t, ratelimit.PerMinute(100), clk)
	ctx := context.Background()
	// Charge 250 on a full bucket of 100: 150 in debt, 90s to pay back,
	// then 1 unit takes another 0.6s.
	if err := lim.Adjust(ctx, "k", 250); err != nil {
		t.Fatal(err)
	}
	d, _ := lim.Allow(ctx, "k", 1)
	if d.Allowed || d.RetryAfter != 90*time.Second+600*time.Millisecond {
		t.Fatalf("after a charge into debt: %+v, want retry after 90.6s", d)
	}
	if err := lim.Adjust(ctx, "k", 0); err != nil {
		t.Fatal(err)
	}
}

func TestLocalKeysBounded(t *testing.T) {
	clk := newClock()
	lim, err := ratelimit.NewLocal(ratelimit.PerMinute(1), ratelimit.Config{Now: clk.Now, MaxKeys: 1000})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 5000 {
		_, _ = lim.Allow(ctx, fmt.Sprint("cold-", i), 1)
	}
	if got := lim.Stats().Keys; got > 1000+32 {
		t.Fatalf("Keys = %d with MaxKeys 1000", got)
	}
	// Idle keys are dropped exactly: spend "hot" 30s before the cold
	// keys refill, touch many new keys, and "hot" is still limited.
	clk.Advance(30 * time.Second)
	if d, _ := lim.Allow(ctx, "hot", 1); !d.Allowed {
		t.Fatal("hot should pass once")
	}
	clk.Advance(31 * time.Second) // the cold keys are full again
	for i := range 200 {
		_, _ = lim.Allow(ctx, fmt.Sprint("new-", i), 1)
	}
	if d, _ := lim.Allow(ctx, "hot", 1); d.Allowed || !near(d.RetryAfter, 29*time.Second) {
		t.Fatalf("hot after the sweep: %+v, want denied for 29s more", d)
	}
	// Each of the 32 shards sweeps when it reaches its share of MaxKeys,
	// so up to one share per shard may still hold refilled keys.
	if got := lim.Stats().Keys; got > 201+32*31/2 {
		t.Fatalf("Keys = %d: refilled keys were not dropped", got)
	}
}

func TestLocalConcurrentExact(t *testing.T) {
	clk := newClock()
	lim := newLocal(t, ratelimit.PerHour(500), clk)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				if d, _ := lim.Allow(context.Background(), "k", 1); d.Allowed {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := allowed.Load(); got != 500 {
		t.Fatalf("allowed %d of 1600 calls with a burst of 500 and a frozen clock", got)
	}
}

// near reports whether got is want up to float rounding (1µs).
func near(got, want time.Duration) bool {
	return got >= want-time.Microsecond && got <= want+time.Microsecond
}
