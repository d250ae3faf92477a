package faulttest_test

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/internal/faulttest"
	tu "github.com/chatscale/chatscale/internal/testutil"
)

// TestUpstreamStorms runs 200 learners on 4 instances through an upstream
// that answers 429 with Retry-After, then 500 to everything, then hangs,
// then heals, each phase a few seconds (the production figures are 30 s
// phases and a 60 s OpenFor; the test scales them down, with the same
// ratios between them).
func TestUpstreamStorms(t *testing.T) {
	faulttest.Require(t)
	env := tu.Redis(t)
	fake := tu.OpenAI(t, tu.OpenAIConfig{})
	docs := &faulttest.Documents{}
	const (
		phase   = 3 * time.Second
		openFor = 2 * time.Second
	)
	cl := faulttest.Start(t, faulttest.Options{
		Redis:       func() redis.UniversalClient { return env.NewClient() },
		Prefix:      env.Prefix,
		Source:      docs,
		UpstreamURL: fake.URL,
		Client: chat.Config{
			AttemptTimeout: 2 * time.Second,
			BaseDelay:      10 * time.Millisecond,
			MaxDelay:       2 * time.Second,
			OpenFor:        openFor,
			BreakerWindow:  2 * time.Second,
			MaxPause:       2 * time.Second,
		},
		// The thread store is not under test: a turn whose thread call
		// fails on a loaded machine is answered without it.
		Service: chat.ServiceConfig{AnswerWithoutThread: true, TurnTimeout: 8 * time.Second},
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan *faulttest.Tally, 1)
	go func() {
		done <- cl.Run(ctx, faulttest.Load{Learners: 200, Videos: []string{"v1", "v2", "v3"}, Think: 100 * time.Millisecond, TurnTimeout: 10 * time.Second})
	}()

	type mark struct {
		name string
		at   time.Time
	}
	var marks []mark
	at := func(name string) { marks = append(marks, mark{name, time.Now()}) }
	wait := func(d time.Duration) {
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}
	at("healthy")
	wait(phase)
	at("429")
	fake.Always(&tu.FakeStep{Status: 429, RetryAfter: time.Second})
	wait(phase)
	at("500")
	fake.Always(&tu.FakeStep{Status: 500})
	wait(phase)
	at("hang")
	fake.Always(&tu.FakeStep{Hang: true})
	wait(phase)
	at("healed")
	fake.Always(nil)
	healed := time.Now()
	// Recovery: the breaker opened during the 500s stays open for up to
	// OpenFor after its last trip, then one probe closes it.
	wait(openFor + 3*time.Second)
	at("end")
	cancel()
	tally := <-done

	events := fake.Events()
	attemptsBetween := func(from, to time.Time) int {
		n := 0
		for _, e := range events {
			if !e.Arrived.Before(from) && e.Arrived.Before(to) {
				n++
			}
		}
		return n
	}
	for i := 0; i+1 < len(marks); i++ {
		c := tally.Between(marks[i].at, marks[i+1].at)
		n := attemptsBetween(marks[i].at, marks[i+1].at)
		t.Logf("%-7s %s; upstream attempts %d (%.2f per turn)", marks[i].name, c, n, float64(n)/float64(max(1, c.Turns())))
		if c.Failed > 0 {
			t.Errorf("%s: %d turns failed; with the fallback on every turn must be answered", marks[i].name, c.Failed)
		}
	}
	// The retry budget: retries are at most RetryRatio (0.2) of the first
	// attempts over a sliding 10 s window plus RetryFloor (1 per second)
	// per instance, so over the whole run the upstream sees at most 1.2
	// attempts per turn plus 4 per second.
	all := tally.All()
	if limit := 1.2*float64(all.Turns()) + 4*marks[len(marks)-1].at.Sub(marks[0].at).Seconds(); float64(len(events)) > limit {
		t.Errorf("%d upstream attempts for %d turns, over the retry budget's %.0f", len(events), all.Turns(), limit)
	}
	storm := tally.Between(marks[1].at, marks[4].at)
	if storm.Degraded == 0 {
		t.Fatalf("no degraded turn during the storms: %s", storm)
	}
	// The 429s' pause holds every instance: a learner's call waits out
	// each Retry-After (1 s) before its next attempt, so the upstream sees
	// at most one attempt per learner per second, where the learners
	// asked several turns a second each before the storm.
	healthy := tally.Between(marks[0].at, marks[1].at)
	if n, limit := attemptsBetween(marks[1].at, marks[2].at), 200*(int(phase/time.Second)+1); n > limit {
		t.Errorf("%d upstream attempts in the 429 phase, over one per learner per Retry-After (%d): the shared pause does not hold", n, limit)
	} else {
		t.Logf("429 phase: %d upstream attempts in %v, against %d turns in the healthy phase of the same length", n, phase, healthy.Turns())
	}
	// Fallback answers while the breaker is open: their latency.
	var open []time.Duration
	for _, tr := range tally.Turns {
		if tr.Outcome == faulttest.Degraded && len(tr.Reasons) == 1 && tr.Reasons[0] == chat.ReasonBreakerOpen {
			open = append(open, tr.End.Sub(tr.Start))
		}
	}
	if len(open) == 0 {
		t.Fatal("the breaker never answered for the upstream")
	}
	sort.Slice(open, func(i, j int) bool { return open[i] < open[j] })
	t.Logf("breaker open: %d fallback turns, median %v, p99 %v (whole turn, thread open included)",
		len(open), open[len(open)/2], open[len(open)*99/100])

	// Recovery is by one probe: the first attempt after the heal is alone
	// until it has answered.
	var after []*tu.FakeEvent
	for i := range events {
		if !events[i].Arrived.Before(healed) {
			after = append(after, &events[i])
		}
	}
	if len(after) < 2 {
		t.Fatalf("%d upstream attempts after the heal: the cluster did not recover", len(after))
	}
	if probe := after[0]; probe.Released.IsZero() || after[1].Arrived.Before(probe.Released) {
		t.Errorf("second attempt after the heal at %v, before the first (the probe) answered at %v: recovery was not by one probe",
			after[1].Arrived.Sub(healed), probe.Released.Sub(healed))
	}
	per, longest, ok := tally.Recovery(len(cl.Instances), healed)
	if !ok {
		t.Fatalf("not every instance answered a full turn after the heal: %v", per)
	}
	t.Logf("recovered: every instance answered in full %v after the heal (per instance %v)", longest.Round(time.Millisecond), per)
}
