package threads_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/threads"
)

// benchThreads is the number of threads the benchmarks spread their calls
// over; each holds 50 messages of 200 bytes.
const benchThreads = 1000

var benchMsg = threads.Message{Role: threads.RoleUser, Content: strings.Repeat("m", 200)}

// benchStores runs fn on the memory store and on the Redis of testutil
// (miniredis, or the server in CHATSCALE_REDIS_URL), counting Redis round
// trips with a hook.
func benchStores(b *testing.B, fn func(b *testing.B, st threads.Store, ids []string)) {
	run := func(b *testing.B, st threads.Store, hook *roundTrips) {
		ctx := context.Background()
		ids := make([]string, benchThreads)
		for i := range ids {
			th, err := st.GetOrCreate(ctx, fmt.Sprint("user-", i), "course")
			if err != nil {
				b.Fatal(err)
			}
			ids[i] = th.ID
			msgs := make([]threads.Message, 50)
			for j := range msgs {
				msgs[j] = benchMsg
			}
			if err := st.Append(ctx, th.ID, msgs...); err != nil {
				b.Fatal(err)
			}
		}
		_, _ = st.Open(ctx, threads.OpenRequest{UserID: "user-0", CourseID: "course", VideoURL: "v", HistoryLimit: 20})
		_, _ = st.Active(ctx, time.Minute)
		if hook != nil {
			hook.n.Store(0)
		}
		b.ReportAllocs()
		b.ResetTimer()
		fn(b, st, ids)
		b.StopTimer()
		if hook != nil {
			b.ReportMetric(float64(hook.n.Load())/float64(b.N), "roundtrips/op")
		}
	}
	b.Run("memory", func(b *testing.B) {
		run(b, newMemory(b, threads.Config{}), nil)
	})
	b.Run("redis", func(b *testing.B) {
		env := testutil.Redis(b)
		hook := &roundTrips{}
		env.Client.AddHook(hook)
		b.Logf("redis backend: %s", env.Backend)
		run(b, newRedis(b, env.Client, threads.Config{Prefix: env.Prefix}), hook)
	})
}

// BenchmarkOpen measures the turn's hot path: get-or-create, track the
// video and read the newest 20 of 50 messages.
func BenchmarkOpen(b *testing.B) {
	benchStores(b, func(b *testing.B, st threads.Store, _ []string) {
		ctx := context.Background()
		for i := 0; i < b.N; i++ {
			_, err := st.Open(ctx, threads.OpenRequest{
				UserID: fmt.Sprint("user-", i%benchThreads), CourseID: "course", VideoURL: "v", HistoryLimit: 20,
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkAppend measures the end of a turn: append a question and an
// answer of 200 bytes each to a full thread (trimmed to 50).
func BenchmarkAppend(b *testing.B) {
	benchStores(b, func(b *testing.B, st threads.Store, ids []string) {
		ctx := context.Background()
		for i := 0; i < b.N; i++ {
			if err := st.Append(ctx, ids[i%len(ids)], benchMsg, benchMsg); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkActive measures the gauge's count over 1000 active threads.
func BenchmarkActive(b *testing.B) {
	benchStores(b, func(b *testing.B, st threads.Store, _ []string) {
		ctx := context.Background()
		for i := 0; i < b.N; i++ {
			n, err := st.Active(ctx, 15*time.Minute)
			if err != nil || n != benchThreads {
				b.Fatalf("Active = %d, %v; want %d", n, err, benchThreads)
			}
		}
	})
}

// BenchmarkMemoryIdleThread creates b.N idle threads (12-byte user and
// 10-byte course IDs, no messages) in one memory store and reports the heap
// they hold per thread. Run it with -benchtime=100000x.
func BenchmarkMemoryIdleThread(b *testing.B) {
	b.ReportAllocs()
	b.ReportMetric(idleThreadBytes(b, b.N), "B/thread")
}

// BenchmarkRedisPing is the baseline: one PING round trip.
func BenchmarkRedisPing(b *testing.B) {
	env := testutil.Redis(b)
	ctx := context.Background()
	_ = env.Client.Ping(ctx).Err()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := env.Client.Ping(ctx).Err(); err != nil {
			b.Fatal(err)
		}
	}
}
