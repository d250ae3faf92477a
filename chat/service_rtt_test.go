package chat_test

import (
	"context"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/ratelimit"
)

// tripRecorder is a go-redis hook that records when each round trip (a
// command or a pipeline) started and ended.
// Each trip is held for delay before it is sent, as a network would, so
// that trips sent concurrently surely overlap in time.
type tripRecorder struct {
	delay time.Duration
	mu    sync.Mutex
	trips []trip
}

type trip struct {
	start, end time.Time
	name       string
}

func (r *tripRecorder) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (r *tripRecorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		start := time.Now()
		time.Sleep(r.delay)
		err := next(ctx, cmd)
		r.add(trip{start, time.Now(), cmd.Name()})
		return err
	}
}

func (r *tripRecorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		start := time.Now()
		time.Sleep(r.delay)
		err := next(ctx, cmds)
		names := make([]string, len(cmds))
		for i, c := range cmds {
			names[i] = c.Name()
		}
		r.add(trip{start, time.Now(), "pipeline(" + strings.Join(names, ",") + ")"})
		return err
	}
}

func (r *tripRecorder) add(t trip) {
	if t.name == "hello" || t.name == "pipeline(client,client)" {
		// The handshake of a new connection: a pool that grows, not the
		// turn's protocol.
		return
	}
	r.mu.Lock()
	r.trips = append(r.trips, t)
	r.mu.Unlock()
}

// take returns the trips recorded since the last take and how many of
// them were sequential: the largest set of trips that do not overlap in
// time (trips sent concurrently overlap; a trip that waits for another's
// answer does not).
func (r *tripRecorder) take() (trips []trip, sequential int) {
	r.mu.Lock()
	trips, r.trips = r.trips, nil
	r.mu.Unlock()
	byEnd := append([]trip(nil), trips...)
	sort.Slice(byEnd, func(i, j int) bool { return byEnd[i].end.Before(byEnd[j].end) })
	var last time.Time
	for _, t := range byEnd {
		if t.start.After(last) {
			sequential++
			last = t.end
		}
	}
	return trips, sequential
}

func names(trips []trip) []string {
	out := make([]string, len(trips))
	for i, t := range trips {
		out[i] = t.name
	}
	return out
}

func TestTripRecorderCountsSequentialTrips(t *testing.T) {
	base := time.Now()
	at := func(a, b int) trip {
		return trip{start: base.Add(time.Duration(a) * time.Millisecond), end: base.Add(time.Duration(b) * time.Millisecond)}
	}
	r := &tripRecorder{}
	for _, tr := range []trip{at(0, 10), at(11, 20), at(12, 19), at(21, 30)} {
		r.add(tr)
	}
	if trips, seq := r.take(); len(trips) != 4 || seq != 3 {
		t.Fatalf("got %d trips, %d sequential; want 4 and 3 (two of them in parallel)", len(trips), seq)
	}
}

// TestServiceRoundTripsPerTurn counts, with a hook on the Redis client
// every part shares, the round trips of a turn whose transcript is in the
// in-process cache: at most 3 sequential (thread open, budgets, append),
// on whatever Redis the environment gives (miniredis, a server, a
// Cluster, Sentinel).
func TestServiceRoundTripsPerTurn(t *testing.T) {
	for _, withQuota := range []bool{false, true} {
		t.Run(map[bool]string{false: "shared budgets", true: "shared budgets and learner quota"}[withQuota], func(t *testing.T) {
			ctx := context.Background()
			h := newHarness(t, harnessOpts{
				// The breaker's shared state and the token settlement are
				// read and written in the background (see their tests);
				// here they stay out of the count.
				client: chat.Config{RefreshEvery: time.Hour, SettleDelay: time.Hour},
			})
			lim := func(name, tag string, l ratelimit.Limit) *ratelimit.Redis {
				r, err := ratelimit.NewRedis(h.env.Client, l, ratelimit.Config{Name: name, HashTag: tag, Prefix: h.env.Prefix})
				if err != nil {
					t.Fatal(err)
				}
				if err := r.LoadScripts(ctx); err != nil {
					t.Fatal(err)
				}
				return r
			}
			client, err := chat.NewClient(chat.NewOpenAI(h.fake.URL, "sk", 8), chat.Config{
				Requests: lim("requests", "openai", ratelimit.PerMinute(100_000)),
				Tokens:   lim("tokens", "openai", ratelimit.PerMinute(100_000_000)),
				Redis:    h.env.Client, Prefix: h.env.Prefix, RefreshEvery: time.Hour, SettleDelay: time.Hour,
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = client.Close() })
			cfg := chat.ServiceConfig{Threads: h.store, Transcripts: h.cache, Completer: client, Model: "gpt-4o-mini"}
			if withQuota {
				cfg.UserRequests = lim("learner-turns", "", ratelimit.PerMinute(1000))
			}
			svc, err := chat.NewService(cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = svc.Close(ctx) })
			if err := client.LoadScripts(ctx); err != nil {
				t.Fatal(err)
			}
			if err := h.cache.LoadScripts(ctx); err != nil {
				t.Fatal(err)
			}
			type loader interface{ LoadScripts(context.Context) error }
			if err := h.store.(loader).LoadScripts(ctx); err != nil {
				t.Fatal(err)
			}
			rec := &tripRecorder{delay: 20 * time.Millisecond}
			h.env.Client.AddHook(rec)
			req := chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "Warm up"}
			// Warm up: the transcript into L1, the breaker's state read,
			// the pool's connections dialled.
			for range 2 {
				if _, err := svc.Ask(ctx, req); err != nil {
					t.Fatal(err)
				}
			}
			rec.take()
			for i := range 5 {
				req.Message = "Question " + string(rune('A'+i))
				r, err := svc.Ask(ctx, req)
				if err != nil {
					t.Fatal(err)
				}
				if !r.Stored || r.TranscriptTier.String() != "l1" {
					t.Fatalf("turn %d: stored %v, tier %v", i, r.Stored, r.TranscriptTier)
				}
				trips, seq := rec.take()
				want := 3
				if withQuota {
					want = 4 // the quota is asked alongside the shared budgets
				}
				if seq > 3 || len(trips) > want {
					t.Errorf("turn %d: %d round trips, %d sequential (%v); want at most %d, 3 sequential", i, len(trips), seq, names(trips), want)
				}
				if i == 0 {
					t.Logf("%s: %d round trips, %d sequential: %v", h.env.Backend, len(trips), seq, names(trips))
				}
			}
		})
	}
}
