package ratelimit_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// BenchmarkLocalAllow measures Allow on the local limiter (target: under
// 200 ns and no allocation).
func BenchmarkLocalAllow(b *testing.B) {
	ctx := context.Background()
	newLim := func(l ratelimit.Limit) *ratelimit.Local {
		lim, err := ratelimit.NewLocal(l, ratelimit.Config{})
		if err != nil {
			b.Fatal(err)
		}
		return lim
	}
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprint("user-", i)
	}
	b.Run("allowed", func(b *testing.B) {
		lim := newLim(ratelimit.PerSecond(100_000_000))
		b.ReportAllocs()
		for b.Loop() {
			_, _ = lim.Allow(ctx, "org", 1)
		}
	})
	b.Run("denied", func(b *testing.B) {
		lim := newLim(ratelimit.PerHour(1))
		b.ReportAllocs()
		for b.Loop() {
			_, _ = lim.Allow(ctx, "org", 1)
		}
	})
	b.Run("1000keys", func(b *testing.B) {
		lim := newLim(ratelimit.PerSecond(100_000_000))
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			_, _ = lim.Allow(ctx, keys[i%len(keys)], 1)
			i++
		}
	})
	b.Run("1000keys-parallel", func(b *testing.B) {
		lim := newLim(ratelimit.PerSecond(100_000_000))
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				_, _ = lim.Allow(ctx, keys[i%len(keys)], 1)
				i++
			}
		})
	})
}

// BenchmarkRedis compares Allow on Redis with a plain GET on the same
// server in the same run, serial and parallel, and counts the commands
// AllowAll sends for a request and a token limiter sharing a hash tag.
// Run it on a real server: CHATSCALE_REDIS_URL=redis://127.0.0.1:6379.
func BenchmarkRedis(b *testing.B) {
	env := testutil.Redis(b)
	ctx := context.Background()
	var cc cmdCounter
	client := env.NewClient()
	client.AddHook(&cc)
	big := ratelimit.Limit{Rate: 10_000_000, Period: time.Second}
	req := newRedis(b, client, env.Prefix+"req:", big, ratelimit.Config{HashTag: "openai"})
	tok := newRedis(b, client, env.Prefix+"tok:", big, ratelimit.Config{HashTag: "openai"})
	getKey := env.Prefix + "get"
	if err := client.Set(ctx, getKey, "x", time.Hour).Err(); err != nil {
		b.Fatal(err)
	}
	_, _ = ratelimit.AllowAll(ctx, ratelimit.Cost{Limiter: req, Key: "org", N: 1}, ratelimit.Cost{Limiter: tok, Key: "org", N: 1})

	nsPerOp := map[string]float64{}
	bench := func(name string, parallel bool, op func() error) {
		b.Run(name, func(b *testing.B) {
			cc.n.Store(0)
			if parallel {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := op(); err != nil {
							b.Error(err)
							return
						}
					}
				})
			} else {
				for b.Loop() {
					if err := op(); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
			b.ReportMetric(float64(cc.n.Load())/float64(b.N), "roundtrips/op")
			nsPerOp[name] = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		})
	}
	get := func() error { return client.Get(ctx, getKey).Err() }
	allow := func() error { _, err := req.Allow(ctx, "org", 1); return err }
	allowAll := func() error {
		_, err := ratelimit.AllowAll(ctx, ratelimit.Cost{Limiter: req, Key: "org", N: 1}, ratelimit.Cost{Limiter: tok, Key: "org", N: 500})
		return err
	}
	bench("GET", false, get)
	bench("Allow", false, allow)
	bench("AllowAll2", false, allowAll)
	bench("GET-parallel", true, get)
	bench("Allow-parallel", true, allow)
	bench("AllowAll2-parallel", true, allowAll)
	for _, p := range [][2]string{{"Allow", "GET"}, {"AllowAll2", "GET"}, {"Allow-parallel", "GET-parallel"}, {"AllowAll2-parallel", "GET-parallel"}} {
		if nsPerOp[p[0]] > 0 && nsPerOp[p[1]] > 0 {
			b.Logf("%s: %.2fx the ops/s of %s (%s)", p[0], nsPerOp[p[1]]/nsPerOp[p[0]], p[1], env.Backend)
		}
	}
}

// BenchmarkRedisBound measures what Config.RedisTimeout costs a decision:
// Allow on the same client and key with a bound (a timer and a goroutine
// per call, whatever its length) and with none (RedisTimeout -1, the call
// made directly), serial and parallel, one after the other. The bound is
// a minute, so that a stall of the machine does not turn the run into
// fallback decisions (one timeout sends a ProbeInterval's worth of calls
// to the fallback); fallbacks/op reports any. Run it on a real server,
// several times: CHATSCALE_REDIS_URL=redis://127.0.0.1:6379.
func BenchmarkRedisBound(b *testing.B) {
	env := testutil.Redis(b)
	ctx := context.Background()
	big := ratelimit.Limit{Rate: 10_000_000, Period: time.Second}
	bounded := newRedis(b, env.Client, env.Prefix, big, ratelimit.Config{RedisTimeout: time.Minute})
	unbounded := newRedis(b, env.Client, env.Prefix, big, ratelimit.Config{RedisTimeout: -1})
	if err := bounded.LoadScripts(ctx); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		lim      *ratelimit.Redis
		parallel bool
	}{
		{"bounded", bounded, false},
		{"unbounded", unbounded, false},
		{"bounded-parallel", bounded, true},
		{"unbounded-parallel", unbounded, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			fb := tc.lim.Stats().Fallback
			allow := func() error {
				d, err := tc.lim.Allow(ctx, "org", 1)
				if err == nil && !d.Allowed {
					err = errors.New("denied")
				}
				return err
			}
			if tc.parallel {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := allow(); err != nil {
							b.Error(err)
							return
						}
					}
				})
			} else {
				for b.Loop() {
					if err := allow(); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(tc.lim.Stats().Fallback-fb)/float64(b.N), "fallbacks/op")
		})
	}
}
