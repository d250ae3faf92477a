package ratelimit_test

import (
	"context"
	"testing"

	"github.com/chatscale/chatscale/ratelimit"
)

// TestLocalAllowDoesNotAllocate checks that a decision of the local
// limiter on a known key, allowed or denied, allocates nothing.
func TestLocalAllowDoesNotAllocate(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		limit   ratelimit.Limit
		allowed bool
	}{
		{"allowed", ratelimit.PerSecond(100_000_000), true},
		{"denied", ratelimit.PerHour(1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lim, err := ratelimit.NewLocal(tc.limit, ratelimit.Config{})
			if err != nil {
				t.Fatal(err)
			}
			_, _ = lim.Allow(ctx, "org", 1) // creates the key's bucket
			var d ratelimit.Decision
			allocs := testing.AllocsPerRun(1000, func() {
				d, err = lim.Allow(ctx, "org", 1)
			})
			if err != nil || d.Allowed != tc.allowed {
				t.Fatalf("Allow = %+v, %v; want Allowed %v", d, err, tc.allowed)
			}
			if allocs != 0 {
				t.Fatalf("Allow allocates %.1f times; want 0", allocs)
			}
		})
	}
}
