package ratelimit_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// TestRedisStoresTheExactArrivalTime checks that a key holds its
// theoretical arrival time exactly, as the double the script computed:
// with an interval that is no whole number of microseconds, a value
// rounded on its way into Redis (Lua's tostring prints 14 significant
// digits on a real server) would drift from the budget a little with every
// spend. Each spend here moves the stored time by exactly cost * interval,
// as the bucket never refills in between; on miniredis, whose clock the
// test sets, the first stored time is checked too.
func TestRedisStoresTheExactArrivalTime(t *testing.T) {
	const epoch = 1700000000 // the script's, in seconds
	env := testutil.Redis(t)
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 123456000, time.UTC)
	if env.Mini != nil {
		env.Mini.SetTime(t0)
	}
	limit := ratelimit.PerHour(7)
	lim := newRedis(t, env.Client, env.Prefix, limit, ratelimit.Config{})
	ctx := context.Background()
	iv := float64(limit.Period) / float64(time.Microsecond) / float64(limit.Rate)
	stored := func() (string, float64) {
		t.Helper()
		raw, err := env.Client.Get(ctx, lim.Key("k")).Result()
		if err != nil {
			t.Fatal(err)
		}
		v, err := strconv.ParseFloat(raw, 64)
		if err != nil {
			t.Fatalf("stored %q: %v", raw, err)
		}
		return raw, v
	}
	var tat float64
	for i, n := range []int{3, 2, 1} {
		if d, err := lim.Allow(ctx, "k", n); err != nil || !d.Allowed {
			t.Fatalf("Allow(%d) = %+v, %v", n, d, err)
		}
		raw, got := stored()
		switch {
		case i > 0:
			tat += float64(n) * iv
		case env.Mini != nil:
			tat = float64((t0.Unix()-epoch)*1_000_000+int64(t0.Nanosecond()/1000)) + float64(n)*iv
		default:
			tat = got // the server's clock is unknown
		}
		if got != tat {
			t.Fatalf("after spending %d: stored %q; want exactly %v", n, raw, tat)
		}
	}
}
