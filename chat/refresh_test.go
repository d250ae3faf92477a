package chat

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale/internal/testutil"
)

// stateReads is a go-redis hook on the breaker's reads of its shared
// state (HMGET of key): it counts them and, while held, blocks each one
// until released.
type stateReads struct {
	key     string
	n       atomic.Int32
	mu      sync.Mutex
	held    chan struct{} // non-nil: reads wait until it is closed
	entered chan struct{} // receives one value per read that starts
}

func newStateReads(key string) *stateReads {
	return &stateReads{key: key, entered: make(chan struct{}, 100)}
}

func (h *stateReads) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *stateReads) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *stateReads) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if args := cmd.Args(); cmd.Name() == "hmget" && len(args) > 1 && fmt.Sprint(args[1]) == h.key {
			h.n.Add(1)
			h.entered <- struct{}{}
			h.mu.Lock()
			held := h.held
			h.mu.Unlock()
			if held != nil {
				<-held
			}
		}
		return next(ctx, cmd)
	}
}

// hold makes the next reads wait; the returned func releases them.
func (h *stateReads) hold() (release func()) {
	ch := make(chan struct{})
	h.mu.Lock()
	h.held = ch
	h.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			h.mu.Lock()
			h.held = nil
			h.mu.Unlock()
			close(ch)
		})
	}
}

// waitEntered waits for a read to start, failing after 10 s.
func (h *stateReads) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-h.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no read of the shared state started")
	}
}

// sharedClient returns a Client on env whose Redis client records (and
// can hold) the reads of the breaker's shared state, and a trip function
// that opens the breaker in Redis as another instance would.
func sharedClient(t *testing.T, env *testutil.RedisEnv, fake *testutil.FakeOpenAI, clk *testutil.Clock) (*Client, *stateReads, func()) {
	t.Helper()
	rdb := env.NewClient()
	reads := newStateReads(stateKey(env.Prefix, "openai"))
	rdb.AddHook(reads)
	c := newTestClient(t, fake, Config{Redis: rdb, Prefix: env.Prefix, Now: clk.Now, MaxAttempts: 1}, false)
	other := &redisTrips{rdb: env.Client, stateK: stateKey(env.Prefix, "openai"), leaseK: leaseKey(env.Prefix, "openai")}
	trip := func() {
		t.Helper()
		if _, err := other.extend(context.Background(), "until", clk.Now().Add(time.Minute).UnixMilli(), "status 503", 2*time.Minute, ""); err != nil {
			t.Fatal(err)
		}
	}
	return c, reads, trip
}

// A call that finds the cached state stale starts one read of Redis in
// the background and goes on with the cache; the calls meanwhile do not
// start another. Close waits for the read; after Close, a stale cache is
// read by the call itself.
func TestStaleBreakerStateDoesNotWait(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	c, reads, trip := sharedClient(t, env, fake, clk)
	ctx := context.Background()
	if _, err := c.CreateChatCompletion(ctx, request("first")); err != nil {
		t.Fatal(err)
	}
	if n := reads.n.Load(); n != 1 {
		t.Fatalf("%d reads for the first call, want 1", n)
	}
	<-reads.entered

	trip() // another instance opens the breaker
	clk.Advance(150 * time.Millisecond)
	release := reads.hold()
	defer release()
	for i := range 3 {
		resp, err := callWithin(t, "a call with a stale cache", func() (openai.ChatCompletionResponse, error) {
			return c.CreateChatCompletion(ctx, request("stale"))
		})
		// The cache still says closed: the call goes upstream.
		if err != nil || IsDegraded(resp) {
			t.Fatalf("call %d: err %v, degraded %v; want the upstream's answer from the stale state", i, err, IsDegraded(resp))
		}
	}
	reads.waitEntered(t)
	if n := reads.n.Load(); n != 2 {
		t.Fatalf("%d reads, want 2: one for the first call, one in the background for the stale ones", n)
	}

	closed := make(chan struct{})
	go func() {
		_ = c.Close()
		close(closed)
	}()
	release()
	<-closed
	if st := c.br.peek(); st.until == 0 {
		t.Fatal("Close returned before the running read stored the trip")
	}
	if c.br.refreshed() != nil {
		t.Fatal("a read still runs after Close")
	}

	// After Close: the call reads a stale cache itself.
	if _, err := c.br.store.close(ctx, c.br.peek().until, ""); err != nil { // the other instance's probe closed it
		t.Fatal(err)
	}
	clk.Advance(150 * time.Millisecond)
	resp, err := c.CreateChatCompletion(ctx, request("after close"))
	if err != nil || IsDegraded(resp) || reads.n.Load() != 3 {
		t.Fatalf("after Close: err %v, degraded %v (%q), %d reads; want the state read in the call (closed)",
			err, IsDegraded(resp), DegradedReason(resp.Header()), reads.n.Load())
	}
}

// Until the shared state has been read once, callers wait for that read,
// one read for all of them: a new instance sees a trip published before
// it started.
func TestFirstBreakerReadIsWaitedFor(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	c, reads, trip := sharedClient(t, env, fake, clk)
	trip()
	release := reads.hold()
	var wg sync.WaitGroup
	reasons := make([]Reason, 8)
	for i := range reasons {
		wg.Go(func() {
			resp, err := c.CreateChatCompletion(context.Background(), request("first calls"))
			if err != nil {
				t.Error(err)
			}
			reasons[i] = DegradedReason(resp.Header())
		})
	}
	reads.waitEntered(t)
	release()
	wg.Wait()
	for i, r := range reasons {
		if r != ReasonBreakerOpen {
			t.Errorf("first call %d: reason %q, want %q", i, r, ReasonBreakerOpen)
		}
	}
	if n := reads.n.Load(); n != 1 || fake.Requests() != 0 {
		t.Fatalf("%d reads, %d upstream calls; want 1 read and none", n, fake.Requests())
	}
}

// LoadScripts makes the first read, so that no call waits for it.
func TestLoadScriptsReadsTheSharedState(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	c, reads, trip := sharedClient(t, env, fake, clk)
	trip()
	if err := c.LoadScripts(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := reads.n.Load(); n != 1 || c.br.peek().until == 0 {
		t.Fatalf("%d reads, state %+v; want the trip read once", n, c.br.peek())
	}
	<-reads.entered
	release := reads.hold()
	defer release()
	resp, err := callWithin(t, "the first call after LoadScripts", func() (openai.ChatCompletionResponse, error) {
		return c.CreateChatCompletion(context.Background(), request("first"))
	})
	if err != nil || DegradedReason(resp.Header()) != ReasonBreakerOpen || reads.n.Load() != 1 {
		t.Fatalf("err %v, reason %q, %d reads", err, DegradedReason(resp.Header()), reads.n.Load())
	}
}
