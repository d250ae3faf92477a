package ratelimit_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// reqTok returns a request limiter and a token limiter sharing a hash tag
// on client, as chat uses them.
func reqTok(t *testing.T, env *testutil.RedisEnv, cc *cmdCounter) (*ratelimit.Redis, *ratelimit.Redis) {
	t.Helper()
	client := env.NewClient()
	if cc != nil {
		client.AddHook(cc)
	}
	req := newRedis(t, client, env.Prefix+"req:", ratelimit.PerHour(10), ratelimit.Config{HashTag: "openai"})
	tok := newRedis(t, client, env.Prefix+"tok:", ratelimit.PerHour(1000), ratelimit.Config{HashTag: "openai"})
	return req, tok
}

func TestAllowAllOneRoundTripAllOrNothing(t *testing.T) {
	env := testutil.Redis(t)
	var cc cmdCounter
	req, tok := reqTok(t, env, &cc)
	ctx := context.Background()
	// Load the script once (EVALSHA then EVAL on first use).
	if _, err := ratelimit.AllowAll(ctx, ratelimit.Cost{Limiter: req, Key: "org", N: 1}, ratelimit.Cost{Limiter: tok, Key: "org", N: 100}); err != nil {
		t.Fatal(err)
	}
	cc.n.Store(0)
	d, err := ratelimit.AllowAll(ctx, ratelimit.Cost{Limiter: req, Key: "org", N: 1}, ratelimit.Cost{Limiter: tok, Key: "org", N: 800})
	if err != nil || !d.Allowed || d.Remaining != 8 {
		t.Fatalf("AllowAll = %+v, %v; want allowed, 8 requests left (the smaller remainder)", d, err)
	}
	if n := cc.n.Load(); n != 1 {
		t.Fatalf("AllowAll took %d commands, want 1", n)
	}
	// 100 tokens left: a request of 500 tokens is denied and the request
	// budget is not spent.
	d, err = ratelimit.AllowAll(ctx, ratelimit.Cost{Limiter: req, Key: "org", N: 1}, ratelimit.Cost{Limiter: tok, Key: "org", N: 500})
	if err != nil || d.Allowed {
		t.Fatalf("AllowAll over the token budget = %+v, %v; want denied", d, err)
	}
	// 400 tokens missing at 1000/h: 24 minutes; the request budget would
	// pass now, so the longest wait is the token one.
	if d.RetryAfter < 23*time.Minute || d.RetryAfter > 24*time.Minute {
		t.Fatalf("RetryAfter = %s, want ~24m (the token budget's)", d.RetryAfter)
	}
	if d, _ := req.Allow(ctx, "org", 1); d.Remaining != 7 {
		t.Fatalf("the denied AllowAll spent the request budget: %d left, want 7 after this call", d.Remaining)
	}
	if n := cc.n.Load(); n != 3 {
		t.Fatalf("%d commands for 2 AllowAll and 1 Allow, want 3", n)
	}
}

func TestAllowAllMixedRefunds(t *testing.T) {
	env := testutil.Redis(t)
	req, _ := reqTok(t, env, nil)
	clk := newClock()
	user := newLocal(t, ratelimit.PerHour(1), clk)
	ctx := context.Background()
	costs := []ratelimit.Cost{{Limiter: req, Key: "org", N: 1}, {Limiter: user, Key: "u1", N: 1}, {Limiter: nil, Key: "skipped", N: 1}}
	if d, err := ratelimit.AllowAll(ctx, costs...); err != nil || !d.Allowed {
		t.Fatalf("first: %+v, %v", d, err)
	}
	// The user quota is spent: the org request is spent, then refunded.
	d, err := ratelimit.AllowAll(ctx, costs...)
	if err != nil || d.Allowed || d.RetryAfter != time.Hour {
		t.Fatalf("second: %+v, %v; want denied for 1h by the user quota", d, err)
	}
	if d, _ := req.Allow(ctx, "org", 1); d.Remaining != 8 {
		t.Fatalf("org budget after a refunded spend: %d left, want 8", d.Remaining)
	}
}

func TestAllowAllInvalidSpendsNothing(t *testing.T) {
	env := testutil.Redis(t)
	req, tok := reqTok(t, env, nil)
	ctx := context.Background()
	for _, c := range []struct {
		bad   ratelimit.Cost
		field string
	}{{ratelimit.Cost{Limiter: tok, Key: "", N: 1}, "Key"}, {ratelimit.Cost{Limiter: tok, Key: "org", N: 0}, "N"}, {ratelimit.Cost{Limiter: tok, Key: "org", N: 1001}, "N"}} {
		_, err := ratelimit.AllowAll(ctx, ratelimit.Cost{Limiter: req, Key: "org", N: 1}, c.bad)
		checkInputError(t, fmt.Sprintf("AllowAll with %+v", c.bad), err, c.field)
		err = ratelimit.WaitAll(ctx, ratelimit.Cost{Limiter: req, Key: "org", N: 1}, c.bad)
		checkInputError(t, fmt.Sprintf("WaitAll with %+v", c.bad), err, c.field)
	}
	// A cost over the burst says it can never pass, and gives the burst.
	_, err := ratelimit.AllowAll(ctx, ratelimit.Cost{Limiter: tok, Key: "org", N: 1001})
	if r := checkInputError(t, "AllowAll over the burst", err, "N"); !strings.Contains(r, "never pass") || !strings.Contains(r, "1000") {
		t.Errorf("reason %q does not say the cost can never pass and the burst is 1000", r)
	}
	if d, _ := req.Allow(ctx, "org", 1); d.Remaining != 9 {
		t.Fatalf("invalid calls spent budget: %d left, want 9", d.Remaining)
	}
	if d, err := ratelimit.AllowAll(ctx); err != nil || !d.Allowed {
		t.Fatalf("AllowAll of nothing = %+v, %v", d, err)
	}
}

func TestWaitAllDeadline(t *testing.T) {
	env := testutil.Redis(t)
	req, tok := reqTok(t, env, nil)
	ratelimit.SetSleep(req, noSleep(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ratelimit.WaitAll(ctx, ratelimit.Cost{Limiter: req, Key: "org", N: 1}, ratelimit.Cost{Limiter: tok, Key: "org", N: 1000}); err != nil {
		t.Fatal(err)
	}
	err := ratelimit.WaitAll(ctx, ratelimit.Cost{Limiter: req, Key: "org", N: 1}, ratelimit.Cost{Limiter: tok, Key: "org", N: 500})
	var le *ratelimit.LimitedError
	if !errors.As(err, &le) || le.Key != "org" || le.RetryAfter < 29*time.Minute || le.RetryAfter > 30*time.Minute {
		t.Fatalf("WaitAll = %v, want *LimitedError ~30m", err)
	}
	if ctx.Err() != nil {
		t.Fatal("WaitAll returned only after the deadline")
	}
	if d, _ := req.Allow(ctx, "org", 1); d.Remaining != 8 {
		t.Fatalf("the failed WaitAll spent the request budget: %d left, want 8", d.Remaining)
	}
}

func TestWaitAllReservesTogether(t *testing.T) {
	env := testutil.MiniredisEnv(t)
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	env.Mini.SetTime(t0)
	req := newRedis(t, env.Client, env.Prefix+"req:", ratelimit.PerSecond(10), ratelimit.Config{HashTag: "o"})
	tok := newRedis(t, env.Client, env.Prefix+"tok:", ratelimit.PerSecond(100), ratelimit.Config{HashTag: "o"})
	sl := &sleeps{}
	ratelimit.SetSleep(req, sl.sleep)
	ctx := context.Background()
	costs := []ratelimit.Cost{{Limiter: req, Key: "org", N: 1}, {Limiter: tok, Key: "org", N: 100}}
	if err := ratelimit.WaitAll(ctx, costs...); err != nil {
		t.Fatal(err)
	}
	// Tokens need 1s to come back; requests are plentiful.
	if err := ratelimit.WaitAll(ctx, costs...); err != nil {
		t.Fatal(err)
	}
	if got := sl.calls(); len(got) != 1 || got[0] != time.Second {
		t.Fatalf("sleeps = %v, want [1s]", got)
	}
	// Both costs were reserved in that one round trip, each on its own
	// budget: the request counts from t0, when it was reserved (it is not
	// moved to t0+1s, when the tokens fit), and the tokens from when they
	// fit.
	if got := remaining(t, req, "org"); got != 8 {
		t.Fatalf("requests at t0: %d left, want 8 (two held)", got)
	}
	env.Mini.SetTime(t0.Add(time.Second))
	if d, _ := req.Allow(ctx, "org", 1); !d.Allowed || d.Remaining != 9 {
		t.Fatalf("requests at t0+1s: %+v, want 9 left (both refilled 100ms each after t0)", d)
	}
	if d, _ := tok.Allow(ctx, "org", 1); d.Allowed || d.RetryAfter != 10*time.Millisecond {
		t.Fatalf("tokens at t0+1s: %+v, want denied for 10ms (the reserved 100 just taken)", d)
	}
}

func TestWaitAllLocalPolls(t *testing.T) {
	clk := newClock()
	a := newLocal(t, ratelimit.PerSecond(1), clk)
	b := newLocal(t, ratelimit.PerSecond(2), clk)
	sl := &sleeps{clock: clk}
	ratelimit.SetSleep(a, sl.sleep)
	ctx, cancel := context.WithDeadline(context.Background(), clk.Now().Add(time.Minute))
	defer cancel()
	costs := []ratelimit.Cost{{Limiter: a, Key: "k", N: 1}, {Limiter: b, Key: "k", N: 2}}
	for range 2 {
		if err := ratelimit.WaitAll(ctx, costs...); err != nil {
			t.Fatal(err)
		}
	}
	if got := sl.calls(); len(got) != 1 || got[0] != time.Second {
		t.Fatalf("sleeps = %v, want [1s]", got)
	}
	short, cancel2 := context.WithDeadline(context.Background(), clk.Now().Add(500*time.Millisecond))
	defer cancel2()
	var le *ratelimit.LimitedError
	if err := ratelimit.WaitAll(short, costs...); !errors.As(err, &le) || le.Key != "k" {
		t.Fatalf("WaitAll with a short deadline = %v, want *LimitedError", err)
	}
	if len(sl.calls()) != 1 {
		t.Fatal("WaitAll slept before failing on the deadline")
	}
}

func TestAllowAllFailOpen(t *testing.T) {
	env := testutil.MiniredisEnv(t)
	req := newRedis(t, env.Client, env.Prefix, ratelimit.PerHour(2), ratelimit.Config{HashTag: "o"})
	tok := newRedis(t, env.Client, env.Prefix+"t:", ratelimit.PerHour(100), ratelimit.Config{HashTag: "o"})
	env.Mini.SetError("ERR broken")
	ctx := context.Background()
	costs := []ratelimit.Cost{{Limiter: req, Key: "org", N: 1}, {Limiter: tok, Key: "org", N: 60}}
	if d, err := ratelimit.AllowAll(ctx, costs...); err != nil || !d.Allowed {
		t.Fatalf("fallback: %+v, %v", d, err)
	}
	if d, err := ratelimit.AllowAll(ctx, costs...); err != nil || d.Allowed {
		t.Fatalf("fallback past the token budget: %+v, %v", d, err)
	}
	if s := tok.Stats(); s.Fallback != 2 {
		t.Fatalf("token limiter Stats = %+v, want 2 fallback decisions", s)
	}
	// The request refunded on the fallback: one more passes alone.
	if d, _ := req.Allow(ctx, "org", 1); !d.Allowed {
		t.Fatal("the request spend was not refunded on the fallback")
	}
}

func TestKeySlot(t *testing.T) {
	for key, want := range map[string]uint16{"foo": 12182, "bar": 5061, "123456789": 0x31C3} {
		if got := ratelimit.KeySlot(key); got != want {
			t.Errorf("slot(%q) = %d, want %d", key, got, want)
		}
	}
	if ratelimit.KeySlot("a{tag}b") != ratelimit.KeySlot("{tag}") || ratelimit.KeySlot("{}a") == ratelimit.KeySlot("{}b") {
		t.Error("hash tag rules not followed")
	}
	env := testutil.Redis(t)
	if env.Backend != testutil.Cluster {
		return
	}
	for _, k := range []string{"foo", "p:{u1}", "p:{openai}:org", "x{}y", "{a}{b}", "c{d"} {
		want, err := env.Client.ClusterKeySlot(context.Background(), k).Result()
		if err != nil || uint16(want) != ratelimit.KeySlot(k) {
			t.Errorf("slot(%q) = %d, cluster says %d (%v)", k, ratelimit.KeySlot(k), want, err)
		}
	}
}

func TestAllowAllAcrossSlots(t *testing.T) {
	env := testutil.Redis(t)
	var cc cmdCounter
	client := env.NewClient()
	client.AddHook(&cc)
	// No HashTag: each key is its own tag, so on Cluster "a" and "b" live
	// in different slots and AllowAll falls back to two groups.
	lim := newRedis(t, client, env.Prefix, ratelimit.PerHour(1), ratelimit.Config{})
	ctx := context.Background()
	// Load the script on the nodes of a and b (a refund spends nothing).
	_ = lim.Adjust(ctx, "a", -1)
	_ = lim.Adjust(ctx, "b", -1)
	cc.n.Store(0)
	d, err := ratelimit.AllowAll(ctx, ratelimit.Cost{Limiter: lim, Key: "a", N: 1}, ratelimit.Cost{Limiter: lim, Key: "b", N: 1})
	if err != nil || !d.Allowed {
		t.Fatalf("AllowAll = %+v, %v", d, err)
	}
	want := int64(1)
	if env.Backend == testutil.Cluster {
		want = 2
	}
	if n := cc.n.Load(); n != want {
		t.Fatalf("%d commands on %s, want %d", n, env.Backend, want)
	}
	// "b" is spent: "a" is refunded.
	if d, _ := ratelimit.AllowAll(ctx, ratelimit.Cost{Limiter: lim, Key: "c", N: 1}, ratelimit.Cost{Limiter: lim, Key: "b", N: 1}); d.Allowed {
		t.Fatal("b passed twice")
	}
	if d, _ := lim.Allow(ctx, "c", 1); !d.Allowed {
		t.Fatal("c was not refunded")
	}
}
