package ratelimit_test

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/internal/rediscall"
	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// The tests below put a proxy between the limiter and Redis (the real
// server with CHATSCALE_REDIS_URL, miniredis otherwise) and make it stop
// answering or answer slowly. The client's own timeouts are a minute and
// its callers' ctx deadlines 30 s, far beyond the limiter's RedisTimeout,
// so a call that falls back (or fails closed) was ended by the bound, and
// one that waited for the client or the ctx would return ctx's error: the
// tests tell them apart by the errors and counters, not by the clock.

const callerDeadline = 30 * time.Second

// patientClient returns a client through the proxy whose socket timeouts
// outlast every test, with ContextTimeoutEnabled as given.
func patientClient(pe *testutil.ProxyEnv, honourCtx bool) *redis.Client {
	return pe.NewClient(func(o *redis.Options) {
		o.ReadTimeout, o.WriteTimeout, o.DialTimeout = time.Minute, time.Minute, time.Minute
		o.PoolTimeout = time.Minute
		o.MaxRetries = -1
		o.ContextTimeoutEnabled = honourCtx
	})
}

// goroutinesBackTo polls, for up to 10 s, until the process runs at most
// baseline goroutines.
func goroutinesBackTo(t *testing.T, baseline int) {
	t.Helper()
	if !testutil.Eventually(10*time.Second, func() bool { return runtime.NumGoroutine() <= baseline }) {
		t.Fatalf("%d goroutines 10s after the proxy healed and the client closed, want at most %d as before", runtime.NumGoroutine(), baseline)
	}
}

func TestRedisHungFallsBackWithinTheBound(t *testing.T) {
	for _, honour := range []bool{false, true} {
		name := "ContextTimeoutEnabled=false"
		if honour {
			name = "ContextTimeoutEnabled=true"
		}
		t.Run(name, func(t *testing.T) {
			pe := testutil.RedisBehindProxy(t)
			baseline := runtime.NumGoroutine()
			rdb := patientClient(pe, honour)
			reg := prometheus.NewRegistry()
			clk := newClock()
			bound := 100 * time.Millisecond
			lim := newRedis(t, rdb, pe.Env.Prefix, ratelimit.PerHour(40), ratelimit.Config{
				ExpectedInstances: 4, RedisTimeout: bound, Now: clk.Now, Registerer: reg, Name: "requests",
			})
			closed := newRedis(t, rdb, pe.Env.Prefix, ratelimit.PerHour(40), ratelimit.Config{
				FailClosed: true, RedisTimeout: bound, Now: clk.Now,
			})
			// Its own bound is longer than the caller's deadline.
			long := newRedis(t, rdb, pe.Env.Prefix, ratelimit.PerHour(40), ratelimit.Config{RedisTimeout: time.Hour})
			ctx, cancel := context.WithTimeout(context.Background(), callerDeadline)
			defer cancel()
			if d, err := lim.Allow(ctx, "k", 1); err != nil || !d.Allowed || lim.Stats().Fallback != 0 {
				t.Fatalf("with Redis answering: %+v, %v, %+v", d, err, lim.Stats())
			}

			pe.Proxy.Hang()
			// Fail open: the first call waits for the bound, then the
			// fallback (10 per key and instance) answers.
			if d, err := lim.Allow(ctx, "k", 1); err != nil || !d.Allowed {
				t.Fatalf("Allow with Redis hung: %+v, %v; want the fallback's yes", d, err)
			}
			if s := lim.Stats(); s.Fallback != 1 || s.StoreErrors != 1 || s.Outages != 1 || !s.Unavailable {
				t.Fatalf("Stats after the first hung call = %+v; want 1 fallback decision, 1 store error, 1 outage", s)
			}
			// The next calls do not wait: Redis is skipped until the probe.
			for i := range 9 {
				if d, err := lim.Allow(ctx, "k", 1); err != nil || !d.Allowed {
					t.Fatalf("fallback call %d: %+v, %v", i, d, err)
				}
			}
			if d, err := lim.Allow(ctx, "k", 1); err != nil || d.Allowed {
				t.Fatalf("past the fallback's share: %+v, %v; want denied", d, err)
			}
			if err := lim.Wait(ctx, "w", 1); err != nil {
				t.Fatalf("Wait with Redis hung: %v", err)
			}
			if err := ratelimit.WaitAll(ctx, ratelimit.Cost{Limiter: lim, Key: "a", N: 1}, ratelimit.Cost{Limiter: lim, Key: "b", N: 2}); err != nil {
				t.Fatalf("WaitAll with Redis hung: %v", err)
			}
			// The probe is due: one call tries Redis, waits for the bound
			// and falls back.
			clk.Advance(time.Second)
			if d, err := lim.Allow(ctx, "p", 1); err != nil || !d.Allowed {
				t.Fatalf("probe with Redis hung: %+v, %v", d, err)
			}
			// 11 Allows, 1 Wait, 2 costs of WaitAll, the probe.
			if s := lim.Stats(); s.Fallback != 15 || s.StoreErrors != 2 || s.Outages != 1 {
				t.Fatalf("Stats after the probe = %+v; want 15 fallback decisions, 2 store errors, 1 outage", s)
			}
			checkMetric(t, reg, "ai_chat_ratelimit_fallback_total", 15)
			checkMetric(t, reg, "ai_chat_ratelimit_store_errors_total", 2)

			// Fail closed: ErrUnavailable, caused by the bound.
			_, err := closed.Allow(ctx, "k", 1)
			var te *rediscall.TimeoutError
			if !errors.Is(err, ratelimit.ErrUnavailable) || !errors.As(err, &te) || te.After != bound {
				t.Fatalf("FailClosed Allow with Redis hung = %v; want ErrUnavailable from a %v bound", err, bound)
			}
			if err := ratelimit.WaitAll(ctx, ratelimit.Cost{Limiter: closed, Key: "a", N: 1}); !errors.Is(err, ratelimit.ErrUnavailable) {
				t.Fatalf("FailClosed WaitAll with Redis hung = %v; want ErrUnavailable", err)
			}

			// A caller's ctx that ends before the bound is ctx's error,
			// not a Redis failure.
			short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
			_, err = long.Allow(short, "k", 1)
			cancelShort()
			if err != context.DeadlineExceeded {
				t.Fatalf("Allow whose ctx ends first = %v; want context.DeadlineExceeded", err)
			}
			if s := long.Stats(); s.StoreErrors != 0 || s.Unavailable || s.Fallback != 0 {
				t.Fatalf("a ctx that ended counted as a Redis failure: %+v", s)
			}

			// Healed: the next probe goes back to Redis.
			pe.Proxy.Heal()
			recovered := testutil.Eventually(10*time.Second, func() bool {
				clk.Advance(time.Second)
				_, err := lim.Allow(ctx, "r", 1)
				return err == nil && !lim.Stats().Unavailable
			})
			if !recovered {
				t.Fatalf("still on the fallback 10s after the proxy healed: %+v", lim.Stats())
			}
			fb := lim.Stats().Fallback
			if d, err := lim.Allow(ctx, "r", 1); err != nil || !d.Allowed || lim.Stats().Fallback != fb {
				t.Fatalf("after recovery: %+v, %v, %+v; want Redis's answer", d, err, lim.Stats())
			}
			if err := rdb.Close(); err != nil {
				t.Fatal(err)
			}
			goroutinesBackTo(t, baseline)
		})
	}
}

func TestRedisSlowAnswersAgainstTheBound(t *testing.T) {
	pe := testutil.RedisBehindProxy(t)
	rdb := patientClient(pe, true)
	ctx, cancel := context.WithTimeout(context.Background(), callerDeadline)
	defer cancel()
	patientLim := newRedis(t, rdb, pe.Env.Prefix, ratelimit.PerHour(40), ratelimit.Config{}) // the 1 s default
	hastyLim := newRedis(t, rdb, pe.Env.Prefix, ratelimit.PerHour(40), ratelimit.Config{RedisTimeout: 50 * time.Millisecond})
	if err := patientLim.LoadScripts(ctx); err != nil {
		t.Fatal(err) // so that each decision is one round trip
	}
	pe.Proxy.SetDelay(200 * time.Millisecond)
	if d, err := patientLim.Allow(ctx, "k", 1); err != nil || !d.Allowed || d.Remaining != 39 {
		t.Fatalf("200ms replies, 1s bound: %+v, %v; want Redis's answer (39 left)", d, err)
	}
	if s := patientLim.Stats(); s.Fallback != 0 || s.StoreErrors != 0 {
		t.Fatalf("200ms replies, 1s bound: Stats = %+v; want no fallback", s)
	}
	if d, err := hastyLim.Allow(ctx, "k", 1); err != nil || !d.Allowed {
		t.Fatalf("200ms replies, 50ms bound: %+v, %v; want the fallback's yes", d, err)
	}
	if s := hastyLim.Stats(); s.Fallback != 1 || s.StoreErrors != 1 || !s.Unavailable {
		t.Fatalf("200ms replies, 50ms bound: Stats = %+v; want 1 fallback decision and 1 store error", s)
	}
}
