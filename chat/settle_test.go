package chat

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sashabaranov/go-openai"
	"go.uber.org/goleak"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// scriptOp is one run of the ratelimit script seen on the wire: Adjust
// (adjust) or a spend (Allow, Wait), with its keys and costs.
type scriptOp struct {
	adjust bool
	keys   []string
	costs  []int
}

// scriptLog is a go-redis hook that records the ratelimit script's runs
// that Redis answered.
type scriptLog struct {
	mu   sync.Mutex
	ops  []scriptOp
	onOp func(scriptOp) // nil, or called with each op, outside mu
}

// notify makes l call f with each op from now on (nil: none).
func (l *scriptLog) notify(f func(scriptOp)) {
	l.mu.Lock()
	l.onOp = f
	l.mu.Unlock()
}

func (l *scriptLog) DialHook(next redis.DialHook) redis.DialHook { return next }

func (l *scriptLog) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (l *scriptLog) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		// evalsha|eval, script, numkeys, keys..., mode, then (interval,
		// offset, cost) per key.
		args := cmd.Args()
		if err != nil || len(args) < 4 || (cmd.Name() != "evalsha" && cmd.Name() != "eval") {
			return err
		}
		n, ok := args[2].(int)
		if !ok || len(args) != 3+n+1+3*n {
			return err
		}
		op := scriptOp{adjust: fmt.Sprint(args[3+n]) == "-1"}
		for i := range n {
			op.keys = append(op.keys, fmt.Sprint(args[3+i]))
			cost, _ := args[3+n+1+3*i+2].(int)
			op.costs = append(op.costs, cost)
		}
		l.mu.Lock()
		l.ops = append(l.ops, op)
		on := l.onOp
		l.mu.Unlock()
		if on != nil {
			on(op)
		}
		return err
	}
}

// adjusts returns the deltas Adjust sent for key, in order.
func (l *scriptLog) adjusts(key string) []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int
	for _, op := range l.ops {
		for i, k := range op.keys {
			if op.adjust && k == key {
				out = append(out, op.costs[i])
			}
		}
	}
	return out
}

// log returns the ops recorded so far.
func (l *scriptLog) log() []scriptOp {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]scriptOp(nil), l.ops...)
}

// slowBudget is a Limit that refills 1 unit per 36 s: what a test spends
// stays spent for the test's duration, so budgets compare exactly.
func slowBudget(burst int) ratelimit.Limit {
	return ratelimit.Limit{Rate: burst, Period: time.Duration(burst) * 36 * time.Second, Burst: burst}
}

// redisBudgets returns request and token limiters on their own client to
// env's Redis, recording their scripts in log.
func redisBudgets(t *testing.T, env *testutil.RedisEnv, reqLimit, tokLimit ratelimit.Limit) (reqs, toks *ratelimit.Redis, log *scriptLog) {
	t.Helper()
	rdb := env.NewClient()
	log = &scriptLog{}
	rdb.AddHook(log)
	var err error
	cfg := ratelimit.Config{Prefix: env.Prefix, HashTag: "openai", Name: "requests"}
	if reqs, err = ratelimit.NewRedis(rdb, reqLimit, cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Name = "tokens"
	if toks, err = ratelimit.NewRedis(rdb, tokLimit, cfg); err != nil {
		t.Fatal(err)
	}
	if err := reqs.LoadScripts(context.Background()); err != nil {
		t.Fatal(err)
	}
	return reqs, toks, log
}

// manualFlush makes c's settlements wait until fire sends.
func manualFlush(c *Client) (fire chan time.Time) {
	fire = make(chan time.Time)
	c.settle.after = func(time.Duration) <-chan time.Time { return fire }
	return fire
}

// flushNow fires c's flush timer and waits until the flusher is done.
func flushNow(t *testing.T, c *Client, fire chan time.Time) {
	t.Helper()
	done := c.settle.flushing()
	if done == nil {
		t.Fatal("nothing pending: no flusher runs")
	}
	fire <- time.Now()
	<-done
}

// running counts the goroutines whose stack holds fn.
func running(fn string) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, fn) {
			n++
		}
	}
	return n
}

const flusherFunc = "chat.(*settler).run"

// noFlusher fails the test unless no flusher goroutine is left (one that
// closed its done channel may still be returning: it is given 10 s).
func noFlusher(t *testing.T) {
	t.Helper()
	if !testutil.Eventually(10*time.Second, func() bool { return running(flusherFunc) == 0 }) {
		t.Fatalf("%d flusher goroutines left", running(flusherFunc))
	}
}

// Calls on Redis budgets settle later, coalesced: one Adjust per budget
// key per flush, with the summed delta, and the budgets end where
// inline settlement leaves them.
func TestSettlementsCoalescedPerKey(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	reqs, toks, log := redisBudgets(t, env, slowBudget(1000), slowBudget(1_000_000))
	ctx := context.Background()
	refused := request("refused before sending")
	refused.Stream = true // go-openai refuses it on a unary call: both budgets given back

	const ok, bad = 10, 3
	var usage []int
	calls := func(c *Client) {
		t.Helper()
		usage = usage[:0]
		for i := range ok {
			resp, err := c.CreateChatCompletion(ctx, request(fmt.Sprintf("question %d", i)))
			if err != nil || IsDegraded(resp) {
				t.Fatalf("call %d: %v", i, err)
			}
			usage = append(usage, resp.Usage.TotalTokens)
		}
		for range bad {
			if _, err := c.CreateChatCompletion(ctx, refused); !errors.Is(err, openai.ErrChatCompletionStreamNotSupported) {
				t.Fatalf("refused call: %v", err)
			}
		}
	}

	// Inline (SettleDelay < 0), on keys of its own: one Adjust per settlement.
	inline := newTestClient(t, fake, Config{Requests: reqs, Tokens: toks, SettleDelay: -1,
		RequestKey: "inline:requests", TokenKey: "inline:tokens"}, false)
	calls(inline)
	if n := len(log.adjusts(toks.Key("inline:tokens"))); n != ok+bad {
		t.Fatalf("inline: %d token Adjusts, want %d", n, ok+bad)
	}
	if d := log.adjusts(reqs.Key("inline:requests")); len(d) != bad {
		t.Fatalf("inline: request Adjusts %v, want %d of -1", d, bad)
	}

	// Deferred: nothing until the flush, then one Adjust per key.
	c := newTestClient(t, fake, Config{Requests: reqs, Tokens: toks}, false)
	fire := manualFlush(c)
	calls(c)
	reserve := c.reservation(request("question 0")) // that of every "question %d"
	if d := log.adjusts(toks.Key("openai:tokens")); len(d) != 0 {
		t.Fatalf("Adjusts %v made before the flush", d)
	}
	if c.settle.flushing() == nil {
		t.Fatal("no flusher runs while settlements are pending")
	}
	flushNow(t, c, fire)
	want := -bad * c.reservation(refused)
	for _, u := range usage {
		want += u - reserve
	}
	if d := log.adjusts(toks.Key("openai:tokens")); len(d) != 1 || d[0] != want {
		t.Fatalf("token Adjusts %v, want one of %d", d, want)
	}
	if d := log.adjusts(reqs.Key("openai:requests")); len(d) != 1 || d[0] != -bad {
		t.Fatalf("request Adjusts %v, want one of %d", d, -bad)
	}

	// The same totals as inline settlement.
	for _, k := range [][2]string{{"inline:requests", "openai:requests"}, {"inline:tokens", "openai:tokens"}} {
		lim := ratelimit.Limiter(reqs)
		if strings.HasSuffix(k[0], "tokens") {
			lim = toks
		}
		if a, b := left(t, lim, k[0]), left(t, lim, k[1]); a != b {
			t.Errorf("%s: %d left inline, %d deferred", k[1], a, b)
		}
	}
	if got, want := left(t, reqs, "openai:requests"), 1000-ok; got != want {
		t.Errorf("request budget %d, want %d", got, want)
	}
	if c.settle.flushing() != nil {
		t.Fatal("a flusher still runs with nothing pending")
	}
	noFlusher(t)
}

// A zero sum makes no Adjust, and the flusher's timer is SettleDelay.
func TestSettleSkipsZeroSumsAndUsesSettleDelay(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	reqs, toks, log := redisBudgets(t, env, slowBudget(1000), slowBudget(1_000_000))
	c := newTestClient(t, fake, Config{Requests: reqs, Tokens: toks, SettleDelay: 30 * time.Millisecond}, false)
	var (
		mu     sync.Mutex
		delays []time.Duration
	)
	fire := make(chan time.Time)
	c.settle.after = func(d time.Duration) <-chan time.Time {
		mu.Lock()
		delays = append(delays, d)
		mu.Unlock()
		return fire
	}
	c.adjust(context.Background(), toks, "openai:tokens", 5)
	c.adjust(context.Background(), toks, "openai:tokens", -5)
	c.adjust(context.Background(), reqs, "openai:requests", -1)
	flushNow(t, c, fire)
	if d := log.adjusts(toks.Key("openai:tokens")); len(d) != 0 {
		t.Fatalf("token Adjusts %v for a zero sum", d)
	}
	if d := log.adjusts(reqs.Key("openai:requests")); len(d) != 1 || d[0] != -1 {
		t.Fatalf("request Adjusts %v, want [-1]", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(delays) != 1 || delays[0] != 30*time.Millisecond {
		t.Fatalf("flush timers %v, want [30ms]", delays)
	}
}

// With the real timer, a settlement lands by itself and the flusher then
// goes away.
func TestSettleTimerFlushes(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	_, toks, log := redisBudgets(t, env, slowBudget(1000), slowBudget(1_000_000))
	c := newTestClient(t, fake, Config{Tokens: toks, SettleDelay: 20 * time.Millisecond}, false)
	resp, err := c.CreateChatCompletion(context.Background(), request("timer"))
	if err != nil {
		t.Fatal(err)
	}
	want := resp.Usage.TotalTokens - c.reservation(request("timer"))
	landed := testutil.Eventually(10*time.Second, func() bool {
		d := log.adjusts(toks.Key("openai:tokens"))
		return len(d) == 1 && d[0] == want && c.settle.flushing() == nil
	})
	if !landed {
		t.Fatalf("Adjusts %v, flusher running %v; want [%d] and none", log.adjusts(toks.Key("openai:tokens")), c.settle.flushing() != nil, want)
	}
	if got := left(t, toks, "openai:tokens"); got != 1_000_000-resp.Usage.TotalTokens {
		t.Fatalf("token budget %d, want %d", got, 1_000_000-resp.Usage.TotalTokens)
	}
}

// Close makes what is pending at once and waits for it; after Close,
// settlements are made in the call.
func TestCloseFlushesSettlements(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	_, toks, log := redisBudgets(t, env, slowBudget(1000), slowBudget(1_000_000))
	c := newTestClient(t, fake, Config{Tokens: toks, SettleDelay: time.Hour}, false)
	ctx := context.Background()
	spent := 0
	for range 3 {
		resp, err := c.CreateChatCompletion(ctx, request("before close"))
		if err != nil {
			t.Fatal(err)
		}
		spent += resp.Usage.TotalTokens
	}
	if d := log.adjusts(toks.Key("openai:tokens")); len(d) != 0 {
		t.Fatalf("Adjusts %v before Close", d)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if d := log.adjusts(toks.Key("openai:tokens")); len(d) != 1 {
		t.Fatalf("Adjusts %v after Close, want one", d)
	}
	if c.settle.flushing() != nil {
		t.Fatal("a flusher runs after Close")
	}
	noFlusher(t)
	if got := left(t, toks, "openai:tokens"); got != 1_000_000-spent {
		t.Fatalf("token budget %d after Close, want %d", got, 1_000_000-spent)
	}

	resp, err := c.CreateChatCompletion(ctx, request("after close"))
	if err != nil {
		t.Fatal(err)
	}
	// The flush, left's own Adjust(-1), then the call's.
	want := resp.Usage.TotalTokens - c.reservation(request("after close"))
	if d := log.adjusts(toks.Key("openai:tokens")); len(d) != 3 || d[2] != want || c.settle.flushing() != nil {
		t.Fatalf("after Close: Adjusts %v, flusher %v; want the call's own (%d), inline", d, c.settle.flushing() != nil, want)
	}
	spent += resp.Usage.TotalTokens
	if got := left(t, toks, "openai:tokens"); got != 1_000_000-spent {
		t.Fatalf("token budget %d, want %d", got, 1_000_000-spent)
	}
}

// A refund that precedes a retry is made before the retry waits for
// budget: on a token budget that holds one reservation, a 429 (tokens
// given back) is retried at once instead of waiting for its own refund.
// The retry's settlement (not followed by a retry) is deferred.
func TestRefundBeforeRetryIsInline(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	req := request("retried")
	_, roomy := budgets(t, newClock(), 1_000_000)
	reserve := newTestClient(t, fake, Config{Tokens: roomy}, false).reservation(req)
	_, toks, log := redisBudgets(t, env, slowBudget(1000), slowBudget(reserve))
	c := newTestClient(t, fake, Config{Tokens: toks, MaxAttempts: 2, DisableFallback: true}, false)
	fire := manualFlush(c)
	fake.Script(testutil.FakeStep{Status: 429})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.CreateChatCompletion(ctx, req)
	if err != nil || fake.Requests() != 2 {
		t.Fatalf("err %v after %d upstream calls; want the retry answered", err, fake.Requests())
	}
	key := toks.Key("openai:tokens")
	var seq []string
	for _, op := range log.log() {
		if len(op.keys) == 1 && op.keys[0] == key {
			seq = append(seq, fmt.Sprintf("%v %d", map[bool]string{true: "adjust", false: "spend"}[op.adjust], op.costs[0]))
		}
	}
	want := []string{fmt.Sprintf("spend %d", reserve), fmt.Sprintf("adjust %d", -reserve), fmt.Sprintf("spend %d", reserve)}
	if strings.Join(seq, ",") != strings.Join(want, ",") {
		t.Fatalf("token budget ops %v, want %v", seq, want)
	}
	flushNow(t, c, fire)
	if d := log.adjusts(key); len(d) != 2 || d[1] != resp.Usage.TotalTokens-reserve {
		t.Fatalf("Adjusts %v, want the refund then %d", d, resp.Usage.TotalTokens-reserve)
	}
}

// recordingLimiter grants everything and records Adjust calls; it stands
// for a Limiter that does I/O.
type recordingLimiter struct {
	mu      sync.Mutex
	adjusts map[string][]int
	spent   map[string]int
}

func (l *recordingLimiter) Allow(_ context.Context, key string, n int) (ratelimit.Decision, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spent == nil {
		l.spent = map[string]int{}
	}
	l.spent[key] += n
	return ratelimit.Decision{Allowed: true, Remaining: 1}, nil
}

func (l *recordingLimiter) Wait(ctx context.Context, key string, n int) error {
	_, err := l.Allow(ctx, key, n)
	return err
}

func (l *recordingLimiter) Adjust(_ context.Context, key string, delta int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.adjusts == nil {
		l.adjusts = map[string][]int{}
	}
	l.adjusts[key] = append(l.adjusts[key], delta)
	if l.spent == nil {
		l.spent = map[string]int{}
	}
	l.spent[key] += delta
	return nil
}

func (l *recordingLimiter) get(key string) (adjusts []int, spent int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]int(nil), l.adjusts[key]...), l.spent[key]
}

// NewClient starts no goroutine; a flusher runs only while settlements
// are pending, and none is left once they are made.
func TestNoSettleGoroutineAtRest(t *testing.T) {
	before := goleak.IgnoreCurrent()
	toks := &recordingLimiter{}
	inner := stubCompleter{resp: openai.ChatCompletionResponse{Usage: openai.Usage{TotalTokens: 20}}}
	c, err := NewClient(inner, Config{Tokens: toks})
	if err != nil {
		t.Fatal(err)
	}
	if err := goleak.Find(before); err != nil {
		t.Fatalf("NewClient started a goroutine: %v", err)
	}
	fire := manualFlush(c)
	if _, err := c.CreateChatCompletion(context.Background(), request("at rest")); err != nil {
		t.Fatal(err)
	}
	if c.settle.flushing() == nil {
		t.Fatal("no flusher runs while a settlement is pending")
	}
	flushNow(t, c, fire)
	if err := goleak.Find(before); err != nil {
		t.Fatalf("goroutines left after the flush: %v", err)
	}
	if d, _ := toks.get("openai:tokens"); len(d) != 1 || d[0] != 20-c.reservation(request("at rest")) {
		t.Fatalf("Adjusts %v", d)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// One flush makes the Adjusts of many keys, at most maxFlushers at once,
// one per key.
func TestFlushManyKeys(t *testing.T) {
	lim := &recordingLimiter{}
	c, err := NewClient(stubCompleter{}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	fire := manualFlush(c)
	const keys = 3*maxFlushers + 1
	for i := range keys {
		c.adjust(context.Background(), lim, fmt.Sprintf("user-%d", i), -2)
		c.adjust(context.Background(), lim, fmt.Sprintf("user-%d", i), -1)
	}
	flushNow(t, c, fire)
	for i := range keys {
		if d, _ := lim.get(fmt.Sprintf("user-%d", i)); len(d) != 1 || d[0] != -3 {
			t.Fatalf("user-%d: Adjusts %v, want [-3]", i, d)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// A *ratelimit.Local settles inline, and so does a Limiter that cannot key
// a map.
func TestSettleInlineForLocalAndUncomparable(t *testing.T) {
	clk := newClock()
	_, toks := budgets(t, clk, 1000)
	c, err := NewClient(stubCompleter{}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := toks.Allow(context.Background(), "k", 10); err != nil {
		t.Fatal(err)
	}
	c.adjust(context.Background(), toks, "k", -10)
	if got := left(t, toks, "k"); got != 1000 || c.settle.flushing() != nil {
		t.Fatalf("Local: %d left, flusher %v; want 1000 at once", got, c.settle.flushing() != nil)
	}
	unc := uncomparable{&recordingLimiter{}}
	c.adjust(context.Background(), unc, "k", -1)
	if d, _ := unc[0].get("k"); len(d) != 1 || c.settle.flushing() != nil {
		t.Fatalf("uncomparable Limiter: Adjusts %v, flusher %v; want one, inline", d, c.settle.flushing() != nil)
	}
}

// uncomparable is a Limiter whose value cannot be a map key (a slice).
type uncomparable []*recordingLimiter

func (u uncomparable) Allow(ctx context.Context, key string, n int) (ratelimit.Decision, error) {
	return u[0].Allow(ctx, key, n)
}
func (u uncomparable) Wait(ctx context.Context, key string, n int) error {
	return u[0].Wait(ctx, key, n)
}
func (u uncomparable) Adjust(ctx context.Context, key string, d int) error {
	return u[0].Adjust(ctx, key, d)
}
