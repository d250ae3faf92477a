package faulttest_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/internal/faulttest"
	tu "github.com/chatscale/chatscale/internal/testutil"
)

// TestRedisSlowThenHung puts a loopback proxy between 4 instances and
// Redis while 200 learners ask: first it adds 200 ms to every reply, then
// it stops answering, then it heals. The instances' go-redis clients are
// set as the README advises (ContextTimeoutEnabled), every package's
// RedisTimeout is the default 1 s, and the Service answers without a
// thread when the thread store fails.
func TestRedisSlowThenHung(t *testing.T) {
	faulttest.Require(t)
	env := tu.Redis(t)
	c, ok := env.Client.(*redis.Client)
	if !ok {
		t.Skipf("the proxy fronts one server; %s has several", env.Backend)
	}
	proxy := tu.NewProxy(t, c.Options().Addr)
	fake := tu.OpenAI(t, tu.OpenAIConfig{})
	cl := faulttest.Start(t, faulttest.Options{
		Redis: func() redis.UniversalClient {
			return redis.NewClient(&redis.Options{Addr: proxy.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
		},
		Prefix:            env.Prefix,
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
		done <- cl.Run(ctx, faulttest.Load{Learners: 200, Videos: []string{"v1", "v2"}, Think: 50 * time.Millisecond, TurnTimeout: 5 * time.Second})
	}()
	pause := func(d time.Duration) {
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}
	t0 := time.Now()
	pause(2 * time.Second)
	base := runtime.NumGoroutine()
	slow := time.Now()
	proxy.SetDelay(200 * time.Millisecond)
	pause(3 * time.Second)
	proxy.SetDelay(0)
	hung := time.Now()
	fellBack := cl.Fallbacks()
	proxy.Hang()
	pause(3 * time.Second)
	fellBack = cl.Fallbacks() - fellBack
	during := runtime.NumGoroutine()
	proxy.Heal()
	healed := time.Now()
	pause(4 * time.Second)
	after := runtime.NumGoroutine()
	cancel()
	tally := <-done
	t.Logf("upstream attempts per turn over the run: %.2f (%d for %d turns)", float64(fake.Requests())/float64(max(1, tally.All().Turns())), fake.Requests(), tally.All().Turns())

	before, slowC, hungC := tally.Between(t0, slow), tally.Between(slow, hung), tally.Between(hung, healed)
	t.Logf("healthy %s", before)
	t.Logf("slow    %s", slowC)
	t.Logf("hung    %s", hungC)
	t.Logf("healed  %s", tally.Between(healed, time.Now()))
	t.Logf("goroutines under load: %d before the fault, %d at the end of the hang, %d 4 s after the heal", base, during, after)
	// Turns keep their deadlines: a turn either answers (degraded without
	// its thread when a thread call passed its 1 s bound, or waited too
	// long for one of a client's connections, all busy 200 ms a call) or
	// ends with the Service's TurnTimeout (4 s) as a typed error, never
	// with the learner's own 5 s deadline.
	for name, c := range map[string]faulttest.Counts{"slow": slowC, "hung": hungC} {
		for kind, n := range c.Errors {
			if kind != "deadline" && kind != "unavailable:"+string(chat.ReasonThreadsDown) {
				t.Errorf("%s Redis: %d turns failed with %q", name, n, kind)
			}
		}
		if c.Longest >= 5*time.Second {
			t.Errorf("%s Redis: a turn took %v, the learner's whole deadline", name, c.Longest)
		}
	}
	// The budgets fail open (the default): their decisions come from
	// each instance's local limiter while Redis hangs.
	t.Logf("budget decisions answered locally during the hang: %d", fellBack)
	if fellBack == 0 {
		t.Error("hung Redis: no budget decision fell back to the local limiter")
	}
	if hungC.Reasons[chat.ReasonThreadsDown] == 0 {
		t.Errorf("hung Redis: no turn answered without its thread: %s", hungC)
	}
	// Goroutines do not pile up: one per learner and per call in flight,
	// not one per call made during the hang.
	if during > base+4*200 {
		t.Errorf("goroutines grew from %d to %d during the hang", base, during)
	}
	per, longest, ok := tally.Recovery(len(cl.Instances), healed)
	if !ok {
		t.Fatalf("not every instance answered in full after the heal: %v", per)
	}
	t.Logf("recovered: every instance answered in full %v after the heal", longest.Round(time.Millisecond))
	if after > base+100 {
		t.Errorf("goroutines did not come back after the heal: %d under the same load, %d before the fault", after, base)
	}
}
