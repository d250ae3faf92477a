package queue_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/chat/queue"
	tu "github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// envJobs sets the number of jobs of TestThroughputFollowsBudget; 1000
// (about 100 s) is a burst of 1000 learners' questions.
const envJobs = "CHATSCALE_QUEUE_JOBS"

// A worker capped at 10 jobs would hold 10 turns at the upstream. One
// Worker with the default Concurrency has 200 there at the same moment:
// the upstream never answers, so every turn stays in flight until the
// test has counted them all.
func TestDefaultConcurrencyIsNotTheBottleneck(t *testing.T) {
	r := newRig(t, rigOpts{})
	r.fake.Always(&tu.FakeStep{Hang: true})
	w, _ := r.worker(r.service(svcOpts{client: chat.Config{AttemptTimeout: time.Hour}}), nil)
	const n = 200
	for i := range n {
		r.enqueue(request(fmt.Sprint("learner-", i), fmt.Sprint("question ", i)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := r.fake.WaitRequests(ctx, n); err != nil {
		t.Fatalf("%v; %d turns at the upstream at most", err, r.fake.MaxInFlight())
	}
	if got := r.fake.InFlight(); got != n {
		t.Errorf("%d turns in flight, want %d", got, n)
	}
	// Close hands the hung jobs back.
	cctx, ccancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer ccancel()
	if err := w.Close(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v, want the running jobs handed back", err)
	}
}

// The pace is the budget's, not the workers': with two workers, an upstream
// that takes 800 ms and a shared budget of 600 requests/min (burst 10),
// turns go at the budget's pace, about 10/s, whatever the worker count,
// and the upstream (whose own limit is the budget's) never answers 429.
// Every job is done at its first attempt: a job the budget cannot serve
// within its timeout is re-queued, not failed.
func TestThroughputFollowsBudget(t *testing.T) {
	n := 60
	if s := os.Getenv(envJobs); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n <= 20 {
			t.Fatalf("%s=%q: want a number over 20", envJobs, s)
		}
	}
	const perMinute, burst = 600, 10
	r := newRig(t, rigOpts{fake: tu.OpenAIConfig{Latency: 800 * time.Millisecond, RPM: perMinute + burst, Window: time.Minute}})
	budget, err := ratelimit.NewRedis(r.env.Client, ratelimit.Limit{Rate: perMinute, Period: time.Minute, Burst: burst},
		ratelimit.Config{Prefix: r.env.Prefix, Name: "requests", HashTag: "openai"})
	if err != nil {
		t.Fatal(err)
	}
	var regs []*prometheus.Registry
	for range 2 {
		_, reg := r.worker(r.service(svcOpts{client: chat.Config{Requests: budget, DisableFallback: true}}), nil)
		regs = append(regs, reg)
	}
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { ids[i] = r.enqueue(request(fmt.Sprint("learner-", i), fmt.Sprint("question ", i))) })
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(n)*200*time.Millisecond+time.Minute)
	defer cancel()
	for _, id := range ids {
		st, err := r.client.Wait(ctx, id)
		if err != nil || st.State != queue.StateDone || st.Attempts != 1 {
			t.Fatalf("%s: %s, %v", id, describe(st), err)
		}
	}
	ev := r.fake.Events()
	if len(ev) != n {
		t.Fatalf("upstream got %d requests, want %d", len(ev), n)
	}
	for _, e := range ev {
		if e.Status == http.StatusTooManyRequests {
			t.Fatalf("upstream answered 429 to request %d", e.Seq)
		}
	}
	// After the burst, requests arrive at the budget's rate.
	arrived := make([]time.Time, len(ev))
	for i, e := range ev {
		arrived[i] = e.Arrived
	}
	slices.SortFunc(arrived, func(a, b time.Time) int { return a.Compare(b) })
	span := arrived[n-1].Sub(arrived[burst])
	perSecond := float64(n-1-burst) / span.Seconds()
	heldOff := 0
	for _, reg := range regs {
		heldOff += runs(t, reg, "held_off")
	}
	t.Logf("%d jobs, 2 workers: %.1f turns/s after the burst (budget %d/s), %d in flight at most, busiest second %d requests, %d re-queues for the budget",
		n, perSecond, perMinute/60, r.fake.MaxInFlight(), r.fake.MaxRequestsPerWindow(time.Second), heldOff)
	if most := r.fake.MaxRequestsPerWindow(time.Second); most > burst+perMinute/60+1 {
		t.Errorf("%d requests within one second, over the budget's burst %d plus %d/s", most, burst, perMinute/60)
	}
	if perSecond < 0.8*perMinute/60 {
		t.Errorf("%.1f turns/s, well under the budget's %d/s", perSecond, perMinute/60)
	}
}
