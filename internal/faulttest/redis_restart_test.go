package faulttest_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/internal/faulttest"
	tu "github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/threads"
)

// TestRedisRestart kills a real redis-server (SIGKILL) under 200 learners
// on 4 instances, keeps it down 3 s and starts it again on the same port
// and folder: once without persistence (it comes back empty) and once with
// AOF and appendfsync always.
func TestRedisRestart(t *testing.T) {
	faulttest.Require(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"empty", nil},
		{"aof-always", []string{"--appendonly", "yes", "--appendfsync", "always"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := tu.StartRedis(t, tc.args...)
			fake := tu.OpenAI(t, tu.OpenAIConfig{})
			const prefix = "fault:"
			cl := faulttest.Start(t, faulttest.Options{
				Redis: func() redis.UniversalClient {
					return redis.NewClient(&redis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true, MaxRetries: -1})
				},
				Prefix:            prefix,
				Source:            &faulttest.Documents{},
				UpstreamURL:       fake.URL,
				RequestsPerMinute: 1_000_000,
				TokensPerMinute:   100_000_000,
				// Keep every message, so that a turn missing afterwards was
				// lost, not trimmed.
				Threads: threads.Config{MaxMessages: -1},
				Service: chat.ServiceConfig{AnswerWithoutThread: true, TurnTimeout: 4 * time.Second},
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
			killed := time.Now()
			srv.Kill()
			pause(3 * time.Second)
			srv.Restart()
			restarted := time.Now()
			pause(4 * time.Second)
			cancel()
			tally := <-done
			t.Logf("upstream attempts per turn over the run: %.2f (%d for %d turns)", float64(fake.Requests())/float64(max(1, tally.All().Turns())), fake.Requests(), tally.All().Turns())

			before, down, after := tally.Between(t0, killed), tally.Between(killed, restarted), tally.Between(restarted, time.Now())
			t.Logf("before  %s", before)
			t.Logf("down    %s", down)
			t.Logf("after   %s", after)
			for name, c := range map[string]faulttest.Counts{"down": down, "after": after} {
				for kind, n := range c.Errors {
					if kind != "deadline" && kind != "unavailable:"+string(chat.ReasonThreadsDown) {
						t.Errorf("%s: %d turns failed with %q", name, n, kind)
					}
				}
				if c.Longest >= 5*time.Second {
					t.Errorf("%s: a turn took %v, the learner's whole deadline", name, c.Longest)
				}
			}
			if down.Reasons[chat.ReasonThreadsDown] == 0 {
				t.Errorf("no turn was answered without its thread while Redis was down: %s", down)
			}
			per, longest, ok := tally.Recovery(len(cl.Instances), restarted)
			if !ok {
				t.Fatalf("not every instance answered in full after the restart: %v", per)
			}
			t.Logf("recovered: every instance answered in full %v after the restart", longest.Round(time.Millisecond))

			check := cl.Instances[0].Store
			lctx, lcancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer lcancel()
			lost, err := tally.Lost(lctx, check, "course")
			if err != nil {
				t.Fatal(err)
			}
			var ackedBefore, lostBefore, lostAfter int
			for _, tr := range tally.Turns {
				if tr.Stored && tr.End.Before(killed) {
					ackedBefore++
				}
			}
			for _, tr := range lost {
				switch {
				case tr.End.Before(killed):
					lostBefore++
				case !tr.Start.Before(restarted):
					lostAfter++
				}
			}
			t.Logf("acknowledged before the kill: %d, lost: %d; lost among the turns started after the restart: %d (of %d lost in all)",
				ackedBefore, lostBefore, lostAfter, len(lost))
			if ackedBefore == 0 {
				t.Fatal("no turn was acknowledged before the kill")
			}
			if lostAfter > 0 {
				t.Errorf("%d turns acknowledged after the restart are missing", lostAfter)
			}
			if tc.args == nil {
				// Without persistence Redis comes back empty: every turn
				// acknowledged before the kill is gone, as the threads
				// package doc says.
				if lostBefore != ackedBefore {
					t.Errorf("without persistence %d of %d turns acknowledged before the kill were lost, want all", lostBefore, ackedBefore)
				}
			} else if len(lost) > 0 {
				t.Errorf("with appendfsync always %d acknowledged turns were lost, want none (first: %s)", len(lost), lost[0].Message)
			}
		})
	}
}
