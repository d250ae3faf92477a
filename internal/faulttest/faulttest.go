// Package faulttest runs the tutor turn under load while a test breaks one
// of its dependencies: a few chat.Service instances, each with its own
// Redis client, transcript cache and upstream client as separate processes
// would have, share one Redis and one upstream, and simulated learners ask
// questions through them. A Run records every turn, so that a test can say
// what learners saw during a fault and how long the instances took to
// recover after it.
package faulttest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/ratelimit"
	"github.com/chatscale/chatscale/threads"
)

// Options describe the instances of a Cluster.
type Options struct {
	// Instances is the number of Service instances. Zero means 4.
	Instances int
	// Redis opens one client per instance. Required.
	Redis func() redis.UniversalClient
	// Prefix starts every key of every component.
	Prefix string
	// Source is the transcript source every instance's cache reads;
	// NewSource, when set, gives each instance a Source of its own
	// instead (a MongoDB client per instance, for one). One is required.
	Source    contextcache.Source
	NewSource func() contextcache.Source
	// UpstreamURL is the base URL of the OpenAI-compatible upstream.
	UpstreamURL string
	// Threads, Cache, Client and Service are the components' Configs;
	// Redis clients, prefixes and the parts a Service needs are filled in.
	Threads threads.Config
	Cache   contextcache.Config
	Client  chat.Config
	Service chat.ServiceConfig
	// RequestsPerMinute and TokensPerMinute, when positive, give every
	// instance's Client the shared request and token budgets (ratelimit
	// Redis limiters on one hash tag), with Limits' Config.
	RequestsPerMinute, TokensPerMinute int
	Limits                             ratelimit.Config
}

// Instance is one Service with the components it owns.
type Instance struct {
	Redis   redis.UniversalClient
	Store   threads.Store
	Cache   *contextcache.Cache
	Client  *chat.Client
	Service *chat.Service
	// Limits are the Client's shared budgets, when Options asked for them.
	Limits []*ratelimit.Redis
}

// Cluster is a set of Instances sharing one Redis and one upstream.
type Cluster struct {
	Instances []*Instance
}

// Start builds the Cluster; the test's cleanup closes it.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Instances == 0 {
		o.Instances = 4
	}
	c := &Cluster{}
	for range o.Instances {
		in := &Instance{Redis: o.Redis()}
		t.Cleanup(func() { _ = in.Redis.Close() })
		tc := o.Threads
		tc.Prefix = o.Prefix
		st, err := threads.NewRedis(in.Redis, tc)
		if err != nil {
			t.Fatal(err)
		}
		in.Store = st
		cc := o.Cache
		cc.Redis, cc.Prefix = in.Redis, o.Prefix
		src := o.Source
		if o.NewSource != nil {
			src = o.NewSource()
		}
		cache, err := contextcache.New(src, cc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cache.Close() })
		in.Cache = cache
		kc := o.Client
		kc.Redis, kc.Prefix = in.Redis, o.Prefix
		for _, b := range []struct {
			per  int
			name string
			dst  *ratelimit.Limiter
		}{{o.RequestsPerMinute, "requests", &kc.Requests}, {o.TokensPerMinute, "tokens", &kc.Tokens}} {
			if b.per <= 0 {
				continue
			}
			lc := o.Limits
			lc.Prefix, lc.Name, lc.HashTag = o.Prefix, b.name, "openai"
			lim, err := ratelimit.NewRedis(in.Redis, ratelimit.PerMinute(b.per), lc)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = lim.Close() })
			*b.dst = lim
			in.Limits = append(in.Limits, lim)
		}
		client, err := chat.NewClient(chat.NewOpenAI(o.UpstreamURL, "sk-test", 64), kc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = client.Close() })
		in.Client = client
		sc := o.Service
		sc.Threads, sc.Transcripts, sc.Completer = st, cache, client
		if sc.Model == "" {
			sc.Model = "gpt-4o-mini"
		}
		svc, err := chat.NewService(sc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := svc.Close(ctx); err != nil {
				t.Errorf("Service.Close: %v", err)
			}
		})
		in.Service = svc
		c.Instances = append(c.Instances, in)
	}
	return c
}

// Load describes the simulated learners of a Run.
type Load struct {
	// Learners is the number of concurrent learners. Zero means 200.
	Learners int
	// Course and Videos are what the learners watch; each learner stays
	// on one video.
	Course string
	Videos []string
	// Think is the mean pause between a learner's answer and its next
	// question (exponentially distributed). Zero means 20 ms.
	Think time.Duration
	// TurnTimeout bounds each turn as the learner's own deadline. Zero
	// means 10 s.
	TurnTimeout time.Duration
	// MaxTurns stops the Run after that many turns in all. Zero means
	// 200,000.
	MaxTurns int
	// Seed seeds the learners' choices.
	Seed uint64
}

// Outcome is how a turn ended for the learner.
type Outcome int

const (
	// OK is a full answer: no part missing.
	OK Outcome = iota
	// Degraded is an answer with a part missing (Response.Degraded).
	Degraded
	// Failed is an error.
	Failed
)

// Turn records one turn.
type Turn struct {
	Instance     int
	User         string
	Message      string
	Start, End   time.Time
	Outcome      Outcome
	Reasons      []chat.Reason
	Err          error
	Stored       bool
	TurnDeadline time.Duration
}

// Tally is what a Run recorded.
type Tally struct {
	Turns []Turn
}

// Run drives the learners through the Cluster's instances until ctx ends
// or MaxTurns turns were asked, and returns when every learner's last turn
// has ended. Learner i asks instance i mod n every time, so that each
// instance's own recovery shows.
func (c *Cluster) Run(ctx context.Context, l Load) *Tally {
	if l.Learners == 0 {
		l.Learners = 200
	}
	if l.Think == 0 {
		l.Think = 20 * time.Millisecond
	}
	if l.TurnTimeout == 0 {
		l.TurnTimeout = 10 * time.Second
	}
	if l.MaxTurns == 0 {
		l.MaxTurns = 200_000
	}
	if l.Course == "" {
		l.Course = "course"
	}
	var (
		mu    sync.Mutex
		tally = &Tally{}
		wg    sync.WaitGroup
	)
	budget := make(chan struct{}, l.MaxTurns)
	for range l.MaxTurns {
		budget <- struct{}{}
	}
	for i := range l.Learners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(l.Seed, uint64(i)))
			user := fmt.Sprintf("learner-%d", i)
			video := "video"
			if len(l.Videos) > 0 {
				video = l.Videos[i%len(l.Videos)]
			}
			inst := i % len(c.Instances)
			for n := 0; ; n++ {
				select {
				case <-ctx.Done():
					return
				case <-budget:
				default:
					return
				}
				msg := fmt.Sprintf("question %d of %s", n, user)
				tctx, cancel := context.WithTimeout(context.Background(), l.TurnTimeout)
				start := time.Now()
				resp, err := c.Instances[inst].Service.Ask(tctx, chat.Request{UserID: user, CourseID: l.Course, VideoURL: video, Message: msg})
				end := time.Now()
				cancel()
				tr := Turn{Instance: inst, User: user, Message: msg, Start: start, End: end, Err: err, TurnDeadline: l.TurnTimeout}
				switch {
				case err != nil:
					tr.Outcome = Failed
				case resp.Degraded:
					tr.Outcome, tr.Reasons, tr.Stored = Degraded, resp.Reasons, resp.Stored
				default:
					tr.Outcome, tr.Stored = OK, resp.Stored
				}
				mu.Lock()
				tally.Turns = append(tally.Turns, tr)
				mu.Unlock()
				pause := time.Duration(rng.ExpFloat64() * float64(l.Think))
				select {
				case <-ctx.Done():
					return
				case <-time.After(pause):
				}
			}
		}()
	}
	wg.Wait()
	sort.Slice(tally.Turns, func(i, j int) bool { return tally.Turns[i].Start.Before(tally.Turns[j].Start) })
	return tally
}

// Lost returns the turns whose exchange the Service said it stored
// (Response.Stored) and that are not in the learner's thread now, read
// through st. A thread that is gone loses all its turns.
func (t *Tally) Lost(ctx context.Context, st threads.Store, course string) ([]Turn, error) {
	f, ok := st.(threads.Finder)
	if !ok {
		return nil, errors.New("faulttest: the store cannot look threads up")
	}
	byUser := map[string][]Turn{}
	for _, tr := range t.Turns {
		if tr.Stored {
			byUser[tr.User] = append(byUser[tr.User], tr)
		}
	}
	var lost []Turn
	for user, turns := range byUser {
		th, err := f.Find(ctx, user, course)
		if errors.Is(err, threads.ErrNotFound) {
			lost = append(lost, turns...)
			continue
		}
		if err != nil {
			return nil, err
		}
		msgs, err := st.History(ctx, th.ID, 0)
		if err != nil {
			return nil, err
		}
		have := map[string]bool{}
		for _, m := range msgs {
			if m.Role == threads.RoleUser {
				have[m.Content] = true
			}
		}
		for _, tr := range turns {
			if !have[tr.Message] {
				lost = append(lost, tr)
			}
		}
	}
	return lost, nil
}

// Counts are the outcomes of the turns that started within a span.
type Counts struct {
	OK, Degraded, Failed int
	// Reasons counts degraded turns by reason; Errors failed turns by kind.
	Reasons map[chat.Reason]int
	Errors  map[string]int
	// Longest is the longest turn.
	Longest time.Duration
}

// Fallbacks returns the decisions the instances' budgets answered from
// their local fallback while Redis failed.
func (c *Cluster) Fallbacks() uint64 {
	var n uint64
	for _, in := range c.Instances {
		for _, l := range in.Limits {
			n += l.Stats().Fallback
		}
	}
	return n
}

// Turns returns the number of turns counted.
func (c Counts) Turns() int { return c.OK + c.Degraded + c.Failed }

func (c Counts) String() string {
	return fmt.Sprintf("%d turns: %d ok, %d degraded %v, %d failed %v, longest %v",
		c.Turns(), c.OK, c.Degraded, c.Reasons, c.Failed, c.Errors, c.Longest.Round(time.Millisecond))
}

// Between counts the turns that started in [from, to).
func (t *Tally) Between(from, to time.Time) Counts {
	c := Counts{Reasons: map[chat.Reason]int{}, Errors: map[string]int{}}
	for _, tr := range t.Turns {
		if tr.Start.Before(from) || !tr.Start.Before(to) {
			continue
		}
		c.Longest = max(c.Longest, tr.End.Sub(tr.Start))
		switch tr.Outcome {
		case OK:
			c.OK++
		case Degraded:
			c.Degraded++
			for _, r := range tr.Reasons {
				c.Reasons[r]++
			}
		case Failed:
			c.Failed++
			c.Errors[ErrorKind(tr.Err)]++
		}
	}
	return c
}

// All counts every turn.
func (t *Tally) All() Counts {
	return t.Between(time.Time{}, time.Now().Add(time.Hour))
}

// Recovery returns, for each instance, how long after healed its first
// turn that started then and ended OK ended, and the longest of them;
// ok is false when an instance had none.
func (t *Tally) Recovery(instances int, healed time.Time) (per []time.Duration, longest time.Duration, ok bool) {
	per = make([]time.Duration, instances)
	seen := make([]bool, instances)
	for _, tr := range t.Turns {
		if tr.Outcome != OK || tr.Start.Before(healed) || seen[tr.Instance] {
			continue
		}
		seen[tr.Instance] = true
		per[tr.Instance] = tr.End.Sub(healed)
	}
	if slices.Contains(seen, false) {
		return per, 0, false
	}
	return per, slices.Max(per), true
}

// ErrorKind names the kind of a turn's error the way a host would sort
// it: invalid request, rate limited, unavailable (with the reason),
// deadline, or other.
func ErrorKind(err error) string {
	var (
		ve *chat.ValidationError
		ue *chat.UnavailableError
	)
	switch {
	case errors.As(err, &ve):
		return "invalid"
	case errors.Is(err, chat.ErrRateLimited):
		return "rate_limited"
	case errors.As(err, &ue):
		return "unavailable:" + string(ue.Reason)
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "other: " + strings.SplitN(err.Error(), ":", 2)[0]
}

// Documents is a transcript Source holding the same short transcript for
// every video, counting its loads; Down makes it fail.
type Documents struct {
	mu    sync.Mutex
	down  bool
	loads int
}

// Load implements contextcache.Source.
func (d *Documents) Load(_ context.Context, courseID, videoURL string) (contextcache.Document, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.loads++
	if d.down {
		return contextcache.Document{}, errors.New("transcript source down")
	}
	return contextcache.Document{CourseID: courseID, VideoURL: videoURL, Title: videoURL,
		Text: "This video explains " + videoURL + " step by step, with examples."}, nil
}

// SetDown makes Load fail (true) or answer again (false).
func (d *Documents) SetDown(down bool) {
	d.mu.Lock()
	d.down = down
	d.mu.Unlock()
}

// Loads returns the number of Load calls.
func (d *Documents) Loads() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.loads
}

// EnvFaults names the environment variable that turns the fault suite on:
// its tests start real processes and run for tens of seconds under load,
// so a plain go test skips them and .ci/run sets it.
const EnvFaults = "CHATSCALE_FAULTS"

// Require skips the test unless EnvFaults is set to 1 (and in -short).
func Require(t testing.TB) {
	t.Helper()
	if testing.Short() || os.Getenv(EnvFaults) != "1" {
		t.Skipf("a fault test under load; set %s=1 to run it", EnvFaults)
	}
}
