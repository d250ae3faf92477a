package contextcache_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/internal/testutil"
)

// transcript returns a document of about textLen bytes with a segment per
// 100 bytes, like a real lecture transcript.
func transcript(course, video string, textLen int) contextcache.Document {
	const phrase = "so the gradient of the loss points uphill and we step the other way "
	words := strings.Repeat(phrase, textLen/len(phrase)+1)[:textLen]
	d := contextcache.Document{CourseID: course, VideoURL: video, Title: "Lecture " + video, Text: words,
		UpdatedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	for i := 0; i+100 <= textLen; i += 100 {
		d.Segments = append(d.Segments, contextcache.Segment{
			Start: time.Duration(i) * 40 * time.Millisecond, End: time.Duration(i+100) * 40 * time.Millisecond,
			Text: words[i : i+100],
		})
	}
	return d
}

func staticSource(textLen int, loads *atomic.Int64) contextcache.Source {
	return contextcache.SourceFunc(func(_ context.Context, course, video string) (contextcache.Document, error) {
		if loads != nil {
			loads.Add(1)
		}
		return transcript(course, video, textLen), nil
	})
}

func BenchmarkGetL1Hit(b *testing.B) {
	ctx := context.Background()
	c := newCache(b, staticSource(20_000, nil), contextcache.Config{})
	if _, err := c.Get(ctx, "65f1c0ffee0000000000abcd", "https://cdn.example/v/42.mp4"); err != nil {
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Get(ctx, "65f1c0ffee0000000000abcd", "https://cdn.example/v/42.mp4"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.Get(ctx, "65f1c0ffee0000000000abcd", "https://cdn.example/v/42.mp4"); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// BenchmarkGetL2Hit measures a Get that misses L1 and hits L2: one script
// call to Redis plus decoding (and inflating, for large transcripts).
// Run it with CHATSCALE_REDIS_URL set for a real Redis.
func BenchmarkGetL2Hit(b *testing.B) {
	backend := testutil.Miniredis
	switch {
	case os.Getenv(testutil.EnvRedisCluster) != "":
		backend = testutil.Cluster
	case os.Getenv(testutil.EnvRedisURL) != "":
		backend = testutil.Server
	}
	for _, size := range []int{2_000, 20_000, 100_000} {
		b.Run(fmt.Sprintf("%s/text=%dB", backend, size), func(b *testing.B) {
			env := testutil.Redis(b)
			ctx := context.Background()
			clk := newClock()
			// Each iteration moves the clock past L1TTL; the L2 copy stays
			// fresh for far more iterations than a benchmark runs.
			c := newCache(b, staticSource(size, nil), contextcache.Config{Redis: env.Client, Prefix: env.Prefix,
				Now: clk.Now, L2TTL: 50 * 365 * 24 * time.Hour, L2Jitter: -1})
			if _, err := c.Get(ctx, "course", "video"); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				clk.Advance(contextcache.DefaultL1TTL) // the L1 copy is no longer fresh
				r, err := c.Get(ctx, "course", "video")
				if err != nil || r.Tier != contextcache.TierL2 {
					b.Fatalf("Get: %v from %v; want an L2 hit", err, r.Tier)
				}
			}
		})
	}
}

// BenchmarkZipfSourceLoads replays requests for 1000 videos whose
// popularity follows a Zipf law (s=1.1, fixed seed) at 20 requests/s on a
// simulated clock with the default TTLs, and reports how many Source loads
// (MongoDB queries) each 1000 requests cost. Without the cache it is 1000.
func BenchmarkZipfSourceLoads(b *testing.B) {
	const (
		videos = 1000
		step   = 50 * time.Millisecond // 20 requests/s over the cluster
	)
	run := func(b *testing.B, instances int, withRedis bool) {
		var loads atomic.Int64
		clk := newClock()
		var env *testutil.RedisEnv
		cfg := contextcache.Config{Now: clk.Now}
		if withRedis {
			env = testutil.MiniredisEnv(b) // FastForward keeps Redis on the simulated clock
			cfg.Redis, cfg.Prefix = env.Client, env.Prefix
		}
		caches := make([]*contextcache.Cache, instances)
		for i := range caches {
			caches[i] = newCache(b, staticSource(5_000, &loads), cfg)
		}
		zipf := rand.NewZipf(rand.New(rand.NewPCG(1, 2)), 1.1, 1, videos-1)
		ctx := context.Background()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			clk.Advance(step)
			if env != nil {
				env.Mini.FastForward(step)
			}
			video := fmt.Sprintf("https://cdn.example/v/%d.mp4", zipf.Uint64())
			if _, err := caches[i%instances].Get(ctx, "course", video); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(loads.Load())*1000/float64(b.N), "loads/1000req")
		b.ReportMetric(float64(b.N)*float64(step)/float64(time.Hour), "simulated-hours")
	}
	b.Run("1-instance-L1", func(b *testing.B) { run(b, 1, false) })
	b.Run("4-instances-L1", func(b *testing.B) { run(b, 4, false) })
	b.Run("4-instances-L1+L2", func(b *testing.B) { run(b, 4, true) })
}
