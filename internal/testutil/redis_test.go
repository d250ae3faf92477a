package testutil_test

import (
	"context"
	"strings"
	"testing"

	"github.com/chatscale/chatscale/internal/testutil"
)

func TestRedisPrefixIsUniqueAndCleaned(t *testing.T) {
	ctx := context.Background()
	var first *testutil.RedisEnv
	t.Run("write", func(t *testing.T) {
		first = testutil.Redis(t)
		if !strings.HasSuffix(first.Prefix, ":") || strings.ContainsAny(first.Prefix, "{}") {
			t.Fatalf("prefix %q: want a trailing ':' and no braces", first.Prefix)
		}
		other := first.NewClient()
		if err := first.Client.Set(ctx, first.Prefix+"a", "1", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if got, err := other.Get(ctx, first.Prefix+"a").Result(); err != nil || got != "1" {
			t.Fatalf("second client reads %q, %v; want 1", got, err)
		}
		keys, err := first.Keys(ctx)
		if err != nil || len(keys) != 1 {
			t.Fatalf("Keys = %v, %v; want one key", keys, err)
		}
	})
	if first.Backend == testutil.Miniredis {
		return // the whole server went away with the subtest
	}
	check := testutil.Redis(t)
	if check.Prefix == first.Prefix {
		t.Fatalf("two tests share prefix %q", check.Prefix)
	}
	n, err := check.Client.Exists(ctx, first.Prefix+"a").Result()
	if err != nil || n != 0 {
		t.Fatalf("key of a finished test still exists (n=%d, err=%v)", n, err)
	}
}
