package faulttest_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/internal/faulttest"
	tu "github.com/chatscale/chatscale/internal/testutil"
)

// TestSentinelFailover kills the master of a Sentinel setup (a master, two
// replicas, one Sentinel with a 1 s down-after) with SIGKILL while 200
// learners ask through 4 instances, each with its own go-redis failover
// client. No instance is restarted: they find the promoted replica through
// the Sentinel.
func TestSentinelFailover(t *testing.T) {
	faulttest.Require(t)
	const downAfter = time.Second
	set := tu.StartSentinelSet(t, 2, downAfter)
	fake := tu.OpenAI(t, tu.OpenAIConfig{})
	cl := faulttest.Start(t, faulttest.Options{
		Redis: func() redis.UniversalClient {
			return set.FailoverClient(&redis.FailoverOptions{ContextTimeoutEnabled: true, MaxRetries: -1})
		},
		Prefix:            "fault:",
		Source:            &faulttest.Documents{},
		UpstreamURL:       fake.URL,
		RequestsPerMinute: 1_000_000,
		TokensPerMinute:   100_000_000,
		Service:           chat.ServiceConfig{AnswerWithoutThread: true, TurnTimeout: 4 * time.Second},
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan *faulttest.Tally, 1)
	go func() {
		done <- cl.Run(ctx, faulttest.Load{Learners: 200, Videos: []string{"v1", "v2"}, Think: 100 * time.Millisecond, TurnTimeout: 5 * time.Second})
	}()
	pause := func(d time.Duration) {
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}
	t0 := time.Now()
	pause(2 * time.Second)
	old := set.Master.Addr
	killed := time.Now()
	set.Master.Kill()
	var promoted time.Time
	if !tu.Eventually(30*time.Second, func() bool {
		actx, acancel := context.WithTimeout(context.Background(), time.Second)
		defer acancel()
		addr, err := set.MasterAddr(actx)
		if err == nil && addr != old {
			promoted = time.Now()
			return true
		}
		return false
	}) {
		t.Fatal("the Sentinel promoted no replica within 30 s")
	}
	pause(6 * time.Second)
	cancel()
	tally := <-done
	t.Logf("upstream attempts per turn over the run: %.2f (%d for %d turns)", float64(fake.Requests())/float64(max(1, tally.All().Turns())), fake.Requests(), tally.All().Turns())

	before, switching, after := tally.Between(t0, killed), tally.Between(killed, promoted), tally.Between(promoted, time.Now())
	t.Logf("before     %s", before)
	t.Logf("switching  %s (%v from the kill to the promotion)", switching, promoted.Sub(killed).Round(time.Millisecond))
	t.Logf("after      %s", after)
	for name, c := range map[string]faulttest.Counts{"switching": switching, "after": after} {
		for kind, n := range c.Errors {
			if kind != "deadline" && kind != "unavailable:"+string(chat.ReasonThreadsDown) {
				t.Errorf("%s: %d turns failed with %q", name, n, kind)
			}
		}
		if c.Longest >= 5*time.Second {
			t.Errorf("%s: a turn took %v, the learner's whole deadline", name, c.Longest)
		}
	}
	per, longest, ok := tally.Recovery(len(cl.Instances), killed)
	if !ok {
		t.Fatalf("not every instance answered in full after the failover: %v", per)
	}
	t.Logf("recovered: every instance answered in full %v after the kill (the promotion came %v after it)",
		longest.Round(time.Millisecond), promoted.Sub(killed).Round(time.Millisecond))
	// The documented recovery: Sentinel's down-after, its failover, then
	// the clients' next dial finds the new master. Allow the promotion
	// plus 5 s.
	if bound := promoted.Sub(killed) + 5*time.Second; longest > bound {
		t.Errorf("recovery took %v, over the promotion plus 5 s (%v)", longest, bound)
	}
}
