package app

import (
	"testing"
	"time"
)

// The shared budgets admit at most the configured limit in any 60 s: a
// GCRA budget admits its burst plus its rate over a window.
func TestUpstreamLimitStaysWithinTheLimit(t *testing.T) {
	for _, tc := range []struct{ perMinute, minBurst int }{
		{500, 1}, {10_000, 1}, {3, 1}, {1, 1}, {200_000, 16_384}, {10_000_000, 16_384}, {20_000, 16_384},
	} {
		l := upstreamLimit(tc.perMinute, tc.minBurst)
		if l.Period != time.Minute || l.Burst < 1 || l.Rate < 1 {
			t.Errorf("%d/min: %+v", tc.perMinute, l)
		}
		if tc.perMinute > 1 && l.Rate+l.Burst > tc.perMinute {
			t.Errorf("%d/min: rate %d + burst %d admit more in a minute", tc.perMinute, l.Rate, l.Burst)
		}
		if want := min(tc.minBurst, tc.perMinute/2); l.Burst < want {
			t.Errorf("%d/min: burst %d under %d", tc.perMinute, l.Burst, want)
		}
	}
}
