package threads_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/threads"
)

// BenchmarkRedisAppendWait measures what Config.WaitReplicas costs an
// Append, on a master and one replica it starts on loopback (it skips
// without redis-server): Append of a question and an answer of 200 bytes
// with WaitReplicas 0 and 1, alternating five times in one run, one caller
// at a time (latency: µs per Append, seq-wait0-µs and seq-wait1-µs) and
// 16 at a time (throughput: par-wait0-appends/s and par-wait1-appends/s).
// Each figure is the median of the five rounds; a round is 1000
// sequential appends, or 4000 appends by 16 callers. WaitTimeout is 1 s,
// so that a slow acknowledgement on a loaded machine counts as slow, not
// as failed. ns/op is meaningless here.
//
//	go test -run '^$' -bench RedisAppendWait -benchtime=1x -count=3 ./threads/
func BenchmarkRedisAppendWait(b *testing.B) {
	master := testutil.StartRedis(b)
	testutil.StartReplica(b, master)
	rdb := master.Client()
	b.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	type mode struct {
		st   *threads.RedisStore
		ids  []string
		turn atomic.Int64
		seq  []float64 // µs per Append
		par  []float64 // appends/s
	}
	modes := make([]*mode, 2)
	for wait := range modes {
		m := &mode{st: newRedis(b, rdb, threads.Config{WaitReplicas: wait, WaitTimeout: time.Second, RedisTimeout: 2 * time.Second})}
		if err := m.st.LoadScripts(ctx); err != nil {
			b.Fatal(err)
		}
		for i := range benchThreads {
			th, err := m.st.GetOrCreate(ctx, fmt.Sprint("user-", wait, "-", i), "course")
			if err != nil {
				b.Fatal(err)
			}
			m.ids = append(m.ids, th.ID)
		}
		modes[wait] = m
	}
	appendTurn := func(m *mode) error {
		n := m.turn.Add(1)
		q, a := benchMsg, benchMsg
		q.ID, a.ID = fmt.Sprint("q", n), fmt.Sprint("a", n)
		return m.st.Append(ctx, m.ids[n%benchThreads], q, a)
	}
	const seqN, parN, callers = 1000, 4000, 16
	b.ResetTimer()
	for range 5 {
		for _, m := range modes {
			start := time.Now()
			for range seqN {
				if err := appendTurn(m); err != nil {
					b.Fatal(err)
				}
			}
			m.seq = append(m.seq, float64(time.Since(start).Microseconds())/seqN)
			start = time.Now()
			var (
				wg   sync.WaitGroup
				left atomic.Int64
				errs = make(chan error, callers)
			)
			left.Store(parN)
			for range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for left.Add(-1) >= 0 {
						if err := appendTurn(m); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			m.par = append(m.par, parN/time.Since(start).Seconds())
		}
	}
	b.StopTimer()
	median := func(v []float64) float64 {
		slices.Sort(v)
		return v[len(v)/2]
	}
	for wait, m := range modes {
		b.ReportMetric(median(m.seq), fmt.Sprintf("seq-wait%d-µs", wait))
		b.ReportMetric(median(m.par), fmt.Sprintf("par-wait%d-appends/s", wait))
	}
}
