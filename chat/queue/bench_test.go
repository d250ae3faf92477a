package queue_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/chat/queue"
	tu "github.com/chatscale/chatscale/internal/testutil"
)

// enqueueAll enqueues n jobs from 16 goroutines.
func (r *rig) enqueueAll(n, from int) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				r.enqueue(request(fmt.Sprint("learner-", i), fmt.Sprint("question ", i)))
			}
		})
	}
	for i := range n {
		next <- from + i
	}
	close(next)
	wg.Wait()
}

// waitDone waits until the worker registered on reg has finished n jobs
// of the default priority.
func waitDone(b *testing.B, reg *prometheus.Registry, n int) {
	b.Helper()
	done := func() bool {
		v, _ := counter(b, reg, "ai_chat_queue_jobs_total", map[string]string{"queue": "default", "status": "done"})
		return int(v) >= n
	}
	if !tu.Eventually(5*time.Minute, done) {
		b.Fatalf("%d jobs not done within 5 minutes", n)
	}
}

// BenchmarkEnqueueToDone measures what the queue adds to a turn whose
// upstream answers at once. idle: one job at a time, enqueue to Wait's
// return, with the idle Worker's pickup delay (PollInterval) and Wait
// polling every millisecond. saturated: b.N jobs enqueued together; ns/op
// is the wall time per job once the Worker is busy.
func BenchmarkEnqueueToDone(b *testing.B) {
	for _, poll := range []time.Duration{queue.DefaultPollInterval, 10 * time.Millisecond} {
		b.Run("idle/poll="+poll.String(), func(b *testing.B) {
			r := newRig(b, rigOpts{queue: queue.Config{PollInterval: poll, WaitPoll: time.Millisecond, WaitMaxPoll: time.Millisecond}})
			r.worker(r.service(svcOpts{}), nil)
			b.ResetTimer()
			for i := range b.N {
				if st := r.wait(r.enqueue(request("ada", fmt.Sprint("question ", i)))); st.State != queue.StateDone {
					b.Fatal(describe(st))
				}
			}
		})
	}
	b.Run("saturated", func(b *testing.B) {
		r := newRig(b, rigOpts{queue: queue.Config{PollInterval: queue.DefaultPollInterval}})
		_, reg := r.worker(r.service(svcOpts{}), nil)
		b.ResetTimer()
		r.enqueueAll(b.N, 0)
		waitDone(b, reg, b.N)
	})
}

// BenchmarkThroughput runs batches of 200 jobs against an upstream that
// takes the given latency, with a Worker of the given Concurrency and the
// default intervals. jobs/s is the rate; latencies/batch the batch's wall
// time in upstream latencies (200 jobs at concurrency 10 need 20 of them).
func BenchmarkThroughput(b *testing.B) {
	const jobs = 200
	for _, tc := range []struct {
		c       int
		latency time.Duration
	}{
		{10, 200 * time.Millisecond}, {100, 200 * time.Millisecond}, {queue.DefaultConcurrency, 200 * time.Millisecond},
		{100, time.Second}, {queue.DefaultConcurrency, time.Second},
	} {
		c, latency := tc.c, tc.latency
		b.Run(fmt.Sprintf("concurrency=%d/latency=%v", c, latency), func(b *testing.B) {
			r := newRig(b, rigOpts{
				fake:  tu.OpenAIConfig{Latency: latency},
				queue: queue.Config{PollInterval: queue.DefaultPollInterval, RetryCheckInterval: queue.DefaultRetryCheckInterval},
			})
			_, reg := r.worker(r.service(svcOpts{client: chat.Config{AttemptTimeout: time.Minute}}), func(cfg *queue.Config) { cfg.Concurrency = c })
			var total time.Duration
			b.ResetTimer()
			for i := range b.N {
				start := time.Now()
				r.enqueueAll(jobs, i*jobs)
				waitDone(b, reg, (i+1)*jobs)
				total += time.Since(start)
			}
			b.ReportMetric(float64(jobs*b.N)/total.Seconds(), "jobs/s")
			b.ReportMetric(total.Seconds()/float64(b.N)/latency.Seconds(), "latencies/batch")
		})
	}
}
