package ratelimit_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

func newRedis(t testing.TB, client redis.UniversalClient, prefix string, l ratelimit.Limit, cfg ratelimit.Config) *ratelimit.Redis {
	t.Helper()
	cfg.Prefix = prefix
	lim, err := ratelimit.NewRedis(client, l, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return lim
}

// Hour-long periods keep real-time tests exact: nothing measurable
// refills while they run.
func TestRedisBurstThenLimited(t *testing.T) {
	env := testutil.Redis(t)
	lim := newRedis(t, env.Client, env.Prefix, ratelimit.PerHour(10), ratelimit.Config{})
	ctx := context.Background()
	for i := range 10 {
		d, err := lim.Allow(ctx, "k", 1)
		if err != nil || !d.Allowed || d.Remaining != 9-i {
			t.Fatalf("call %d: %+v, %v; want allowed with %d remaining", i, d, err, 9-i)
		}
	}
	d, err := lim.Allow(ctx, "k", 1)
	if err != nil || d.Allowed || d.RetryAfter <= 5*time.Minute || d.RetryAfter > 6*time.Minute || d.ResetAfter <= 59*time.Minute {
		t.Fatalf("over the burst: %+v, %v; want denied, retry after ~6m", d, err)
	}
	if d, _ := lim.Allow(ctx, "other", 10); !d.Allowed {
		t.Fatalf("another key shares the budget: %+v", d)
	}
	keys, err := env.Keys(ctx)
	if err != nil || len(keys) != 2 {
		t.Fatalf("keys %v, %v; want 2", keys, err)
	}
	for _, k := range keys {
		if k != lim.Key("k") && k != lim.Key("other") {
			t.Errorf("unexpected key %q", k)
		}
		if ttl := env.Client.PTTL(ctx, k).Val(); ttl <= 0 || ttl > time.Hour {
			t.Errorf("key %q has TTL %s, want (0, 1h]", k, ttl)
		}
	}
	if s := lim.Stats(); s.Allowed != 11 || s.Limited != 1 || s.Fallback != 0 || s.Unavailable {
		t.Errorf("Stats = %+v", s)
	}
}

func TestRedisKeyLayout(t *testing.T) {
	env := testutil.MiniredisEnv(t)
	a := newRedis(t, env.Client, "p:", ratelimit.PerHour(1), ratelimit.Config{})
	b := newRedis(t, env.Client, "p:", ratelimit.PerHour(1), ratelimit.Config{HashTag: "openai"})
	if got := a.Key("u1"); got != "p:ratelimit:{u1}" {
		t.Errorf("Key = %q", got)
	}
	if got := b.Key("u1"); got != "p:ratelimit:{openai}:u1" {
		t.Errorf("Key with HashTag = %q", got)
	}
	// The default Prefix is the module's.
	def, err := ratelimit.NewRedis(env.Client, ratelimit.PerHour(1), ratelimit.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if got := def.Key("u1"); got != "chatscale:ratelimit:{u1}" {
		t.Errorf("Key with the default Prefix = %q", got)
	}
	tagged, err := ratelimit.NewRedis(env.Client, ratelimit.PerHour(1), ratelimit.Config{HashTag: "openai"})
	if err != nil {
		t.Fatal(err)
	}
	if got := tagged.Key("org"); got != "chatscale:ratelimit:{openai}:org" {
		t.Errorf("Key with the default Prefix and a HashTag = %q", got)
	}
	// The keys written are the keys Key names.
	ctx := context.Background()
	if d, err := tagged.Allow(ctx, "org", 1); err != nil || !d.Allowed {
		t.Fatalf("Allow = %+v, %v", d, err)
	}
	if keys := env.Mini.Keys(); len(keys) != 1 || keys[0] != "chatscale:ratelimit:{openai}:org" {
		t.Errorf("keys written: %q", keys)
	}
	for _, c := range badConfigs {
		_, err := ratelimit.NewRedis(env.Client, ratelimit.PerHour(1), c.cfg)
		checkConfigError(t, fmt.Sprintf("NewRedis(%+v)", c.cfg), err, c.field)
	}
	_, err = ratelimit.NewRedis(env.Client, ratelimit.Limit{}, ratelimit.Config{})
	checkConfigError(t, "NewRedis with the zero limit", err, "limit.Rate")
	_, err = ratelimit.NewRedis(env.Client, ratelimit.PerSecond(20_000_000), ratelimit.Config{})
	checkConfigError(t, "NewRedis with a limit finer than the script's clock", err, "limit")
	if _, err := ratelimit.NewRedis(env.Client, ratelimit.PerSecond(10_000_000), ratelimit.Config{}); err != nil {
		t.Errorf("1e7 units per second: %v", err)
	}
	_, err = ratelimit.NewRedis(nil, ratelimit.PerHour(1), ratelimit.Config{})
	checkConfigError(t, "NewRedis with a nil client", err, "rdb")
}

func TestRedisInvalidSendsNothing(t *testing.T) {
	env := testutil.Redis(t)
	var cc cmdCounter
	client := env.NewClient()
	client.AddHook(&cc)
	lim := newRedis(t, client, env.Prefix, ratelimit.PerHour(10), ratelimit.Config{})
	ratelimit.SetSleep(lim, noSleep(t))
	checkInvalid(t, lim, 10)
	if n := cc.n.Load(); n != 0 {
		t.Errorf("bad input sent %d commands", n)
	}
}

func TestRedisWaitDeadline(t *testing.T) {
	env := testutil.Redis(t)
	lim := newRedis(t, env.Client, env.Prefix, ratelimit.PerHour(1), ratelimit.Config{})
	ratelimit.SetSleep(lim, noSleep(t))
	ctx := context.Background()
	if err := lim.Wait(ctx, "k", 1); err != nil {
		t.Fatalf("first Wait: %v", err)
	}
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err := lim.Wait(dctx, "k", 1)
	var le *ratelimit.LimitedError
	if !errors.As(err, &le) || le.Key != "k" || le.RetryAfter < 59*time.Minute {
		t.Fatalf("Wait = %v, want *LimitedError for k with ~1h", err)
	}
	if dctx.Err() != nil {
		t.Fatal("Wait returned only after the deadline")
	}
	if d, _ := lim.Allow(ctx, "k", 1); d.Allowed || d.RetryAfter > time.Hour {
		t.Fatalf("the failed Wait spent budget: %+v", d)
	}
}

// On miniredis the script's clock (Redis TIME) is set by hand.
func TestRedisWaitReservesInOrder(t *testing.T) {
	env := testutil.MiniredisEnv(t)
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	env.Mini.SetTime(t0)
	lim := newRedis(t, env.Client, env.Prefix, ratelimit.PerSecond(2), ratelimit.Config{})
	sl := &sleeps{}
	ratelimit.SetSleep(lim, sl.sleep)
	ctx := context.Background()
	for range 4 {
		if err := lim.Wait(ctx, "k", 1); err != nil {
			t.Fatal(err)
		}
	}
	// The burst of 2 passes at once; the next two are reserved in one
	// round trip each, 500ms and 1s ahead.
	got := sl.calls()
	if len(got) != 2 || got[0] != 500*time.Millisecond || got[1] != time.Second {
		t.Fatalf("sleeps = %v, want [500ms 1s]", got)
	}
	d, _ := lim.Allow(ctx, "k", 1)
	if d.Allowed || d.RetryAfter != 1500*time.Millisecond {
		t.Fatalf("Allow behind two reservations: %+v, want retry after 1.5s", d)
	}
	// A cancelled wait gives its reservation back.
	sl.err = context.Canceled
	if err := lim.Wait(ctx, "k", 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait = %v, want context.Canceled", err)
	}
	if d, _ := lim.Allow(ctx, "k", 1); d.RetryAfter != 1500*time.Millisecond {
		t.Fatalf("after the cancelled Wait: %+v, want retry after 1.5s again", d)
	}
	env.Mini.SetTime(t0.Add(1500 * time.Millisecond))
	if d, _ := lim.Allow(ctx, "k", 1); !d.Allowed {
		t.Fatalf("after 1.5s: %+v, want allowed", d)
	}
}

func TestRedisAdjust(t *testing.T) {
	env := testutil.MiniredisEnv(t)
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	env.Mini.SetTime(t0)
	lim := newRedis(t, env.Client, env.Prefix, ratelimit.PerMinute(100), ratelimit.Config{})
	ctx := context.Background()
	if d, _ := lim.Allow(ctx, "k", 100); !d.Allowed {
		t.Fatal("the whole burst should pass")
	}
	if err := lim.Adjust(ctx, "k", -30); err != nil {
		t.Fatal(err)
	}
	if d, _ := lim.Allow(ctx, "k", 30); !d.Allowed || d.Remaining != 0 {
		t.Fatalf("after a refund of 30: %+v", d)
	}
	if err := lim.Adjust(ctx, "k", -1000); err != nil {
		t.Fatal(err)
	}
	if d, _ := lim.Allow(ctx, "k", 1); !d.Allowed || d.Remaining != 99 {
		t.Fatalf("after an oversized refund: %+v, want 99 left", d)
	}
	// Charge 249 more (250 spent on a burst of 100): 150 in debt.
	if err := lim.Adjust(ctx, "k", 249); err != nil {
		t.Fatal(err)
	}
	d, _ := lim.Allow(ctx, "k", 1)
	if d.Allowed || d.RetryAfter != 90*time.Second+600*time.Millisecond {
		t.Fatalf("after a charge into debt: %+v, want retry after 90.6s", d)
	}
}

// outageEnv is a Redis limiter on miniredis with a fake clock for probes
// and a captured log.
func outageEnv(t *testing.T, cfg ratelimit.Config) (*testutil.RedisEnv, *ratelimit.Redis, *testutil.Clock, *logBuffer) {
	env := testutil.MiniredisEnv(t)
	// One dial attempt and no retries, so that a stopped server fails
	// each call at once (go-redis defaults to 5 dial attempts 100ms apart).
	client := redis.NewClient(&redis.Options{Addr: env.Mini.Addr(), MaxRetries: -1, DialerRetries: 1, DialTimeout: time.Second})
	t.Cleanup(func() { _ = client.Close() })
	clk := newClock()
	logs := &logBuffer{}
	cfg.Now = clk.Now
	cfg.Logger = logs.logger()
	return env, newRedis(t, client, env.Prefix, ratelimit.PerHour(40), cfg), clk, logs
}

func TestRedisFailOpen(t *testing.T) {
	reg := prometheus.NewRegistry()
	env, lim, clk, logs := outageEnv(t, ratelimit.Config{ExpectedInstances: 4, Registerer: reg, Name: "requests"})
	ctx := context.Background()
	if d, err := lim.Allow(ctx, "k", 1); err != nil || !d.Allowed {
		t.Fatalf("with Redis up: %+v, %v", d, err)
	}
	env.Mini.SetError("LOADING Redis is loading the dataset in memory")
	// The fallback allows 40/4 = 10 per hour per key in this instance.
	for i := range 10 {
		if d, err := lim.Allow(ctx, "k", 1); err != nil || !d.Allowed {
			t.Fatalf("fallback call %d: %+v, %v", i, d, err)
		}
	}
	if d, err := lim.Allow(ctx, "k", 1); err != nil || d.Allowed {
		t.Fatalf("past the fallback's share: %+v, %v; want denied", d, err)
	}
	// A cost above the fallback burst (10) is charged as the whole burst.
	if d, err := lim.Allow(ctx, "big", 25); err != nil || !d.Allowed {
		t.Fatalf("big cost on the fallback: %+v, %v", d, err)
	}
	if err := lim.Wait(ctx, "w", 1); err != nil {
		t.Fatalf("Wait on the fallback: %v", err)
	}
	if err := lim.Adjust(ctx, "w", -1); err != nil {
		t.Fatalf("Adjust on the fallback: %v", err)
	}
	s := lim.Stats()
	if s.Fallback != 14 || s.Outages != 1 || !s.Unavailable || s.StoreErrors != 1 {
		t.Fatalf("Stats during the outage = %+v; want 14 fallback decisions, 1 outage, 1 store error (the rest skip Redis until the probe)", s)
	}
	if n := logs.count("redis unavailable"); n != 1 {
		t.Fatalf("logged the outage %d times, want once", n)
	}
	// The probe is due after ProbeInterval (1s): one call tries Redis,
	// still broken, and the outage is not logged again.
	clk.Advance(time.Second)
	_, _ = lim.Allow(ctx, "k2", 1)
	if s := lim.Stats(); s.StoreErrors != 2 || s.Outages != 1 {
		t.Fatalf("after a failed probe: %+v", s)
	}
	// Redis returns: the next probe recovers.
	env.Mini.SetError("")
	clk.Advance(time.Second)
	if d, err := lim.Allow(ctx, "k", 1); err != nil || !d.Allowed || d.Remaining != 38 {
		t.Fatalf("after recovery: %+v, %v; want Redis's budget (38 left)", d, err)
	}
	if s := lim.Stats(); s.Unavailable || s.Outages != 1 {
		t.Fatalf("Stats after recovery = %+v", s)
	}
	if n := logs.count("redis available again"); n != 1 {
		t.Fatalf("logged the recovery %d times, want once", n)
	}
	checkMetric(t, reg, "ai_chat_ratelimit_fallback_total", 15)
	checkMetric(t, reg, "ai_chat_ratelimit_outages_total", 1)
	checkMetric(t, reg, "ai_chat_ratelimit_store_errors_total", 2)
}

// checkMetric checks the one series of the counter name, labelled
// limiter="requests" and nothing else.
func checkMetric(t *testing.T, reg *prometheus.Registry, name string, want float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			if n := len(mf.GetMetric()); n != 1 {
				t.Fatalf("%s has %d series, want 1", name, n)
			}
			if got := mf.GetMetric()[0].GetCounter().GetValue(); got != want {
				t.Errorf("%s = %v, want %v", name, got, want)
			}
			if l := mf.GetMetric()[0].GetLabel(); len(l) != 1 || l[0].GetName() != "limiter" || l[0].GetValue() != "requests" {
				t.Errorf("%s labels = %v", name, l)
			}
			return
		}
	}
	t.Errorf("metric %s not registered", name)
}

func TestRedisFailOpenServerStopped(t *testing.T) {
	env, lim, clk, logs := outageEnv(t, ratelimit.Config{ProbeInterval: -1})
	ctx := context.Background()
	env.Mini.Close()
	for i := range 40 {
		if d, err := lim.Allow(ctx, "k", 1); err != nil || !d.Allowed {
			t.Fatalf("call %d with Redis stopped: %+v, %v", i, d, err)
		}
	}
	if d, _ := lim.Allow(ctx, "k", 1); d.Allowed {
		t.Fatal("the fallback let more than the limit through")
	}
	if s := lim.Stats(); s.StoreErrors != 41 || s.Outages != 1 || s.Fallback != 41 {
		t.Fatalf("Stats = %+v; with ProbeInterval -1 every call tries Redis", s)
	}
	if n := logs.count("redis unavailable"); n != 1 {
		t.Fatalf("logged the outage %d times, want once", n)
	}
	if err := env.Mini.Restart(); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	if d, err := pollAllow(ctx, lim, "k"); err != nil || !d.Allowed || lim.Stats().Unavailable {
		t.Fatalf("after restart: %+v, %v", d, err)
	}
}

// pollAllow retries Allow until the limiter answers from Redis again
// (the client reconnects on its own), bounded to 5s.
func pollAllow(ctx context.Context, lim *ratelimit.Redis, key string) (ratelimit.Decision, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		d, err := lim.Allow(ctx, key, 1)
		if !lim.Stats().Unavailable || time.Now().After(deadline) {
			return d, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRedisFailClosed(t *testing.T) {
	env, lim, clk, logs := outageEnv(t, ratelimit.Config{FailClosed: true})
	ratelimit.SetSleep(lim, noSleep(t))
	ctx := context.Background()
	env.Mini.Close()
	if _, err := lim.Allow(ctx, "k", 1); !errors.Is(err, ratelimit.ErrUnavailable) {
		t.Fatalf("Allow = %v, want ErrUnavailable", err)
	}
	if err := lim.Wait(ctx, "k", 1); !errors.Is(err, ratelimit.ErrUnavailable) {
		t.Fatalf("Wait = %v, want ErrUnavailable", err)
	}
	if err := lim.Adjust(ctx, "k", 1); !errors.Is(err, ratelimit.ErrUnavailable) {
		t.Fatalf("Adjust = %v, want ErrUnavailable", err)
	}
	if _, err := ratelimit.AllowAll(ctx, ratelimit.Cost{Limiter: lim, Key: "k", N: 1}); !errors.Is(err, ratelimit.ErrUnavailable) {
		t.Fatalf("AllowAll = %v, want ErrUnavailable", err)
	}
	if s := lim.Stats(); s.Fallback != 0 || s.StoreErrors != 1 || !s.Unavailable || !strings.Contains(logs.buf.String(), "failing closed") {
		t.Fatalf("Stats = %+v (only the first call tries Redis before the probe)", s)
	}
	if err := env.Mini.Restart(); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for {
		d, err := lim.Allow(ctx, "k", 1)
		if err == nil {
			if !d.Allowed {
				t.Fatalf("after restart: %+v", d)
			}
			break
		}
		if !errors.Is(err, ratelimit.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("after restart: %v", err)
		}
		clk.Advance(time.Second)
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRedisCtxEndIsNotAnOutage(t *testing.T) {
	env := testutil.Redis(t)
	lim := newRedis(t, env.Client, env.Prefix, ratelimit.PerHour(1), ratelimit.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := lim.Allow(ctx, "k", 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Allow with a cancelled ctx = %v", err)
	}
	if s := lim.Stats(); s.StoreErrors != 0 || s.Unavailable {
		t.Fatalf("a cancelled ctx counted as a store failure: %+v", s)
	}
}
