package contextcache_test

import (
	"context"
	"testing"

	"github.com/chatscale/chatscale/contextcache"
)

// TestGetL1HitDoesNotAllocate checks the documented contract of Get: a
// fresh L1 copy is returned with no allocation.
func TestGetL1HitDoesNotAllocate(t *testing.T) {
	ctx := context.Background()
	c := newCache(t, staticSource(20_000, nil), contextcache.Config{})
	const course, video = "65f1c0ffee0000000000abcd", "https://cdn.example/v/42.mp4"
	if _, err := c.Get(ctx, course, video); err != nil {
		t.Fatal(err)
	}
	var err error
	allocs := testing.AllocsPerRun(1000, func() {
		var r contextcache.Result
		r, err = c.Get(ctx, course, video)
		if err == nil && r.Tier != contextcache.TierL1 {
			t.Fatalf("Get from %v; want an L1 hit", r.Tier)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if allocs != 0 {
		t.Fatalf("an L1 hit allocates %.1f times; want 0", allocs)
	}
}
