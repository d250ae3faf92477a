package ratelimit_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/ratelimit"
)

func ExampleNewLocal() {
	lim, err := ratelimit.NewLocal(ratelimit.PerMinute(2), ratelimit.Config{})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	for range 3 {
		d, _ := lim.Allow(ctx, "user-1", 1)
		fmt.Println(d.Allowed, d.Remaining, d.RetryAfter.Round(time.Second))
	}
	// A cost over the burst can never pass: bad input, not a denial.
	_, err = lim.Allow(ctx, "user-1", 5)
	fmt.Println(errors.Is(err, chatscale.ErrInvalidInput))
	fmt.Println(err)
	// Output:
	// true 1 0s
	// true 0 0s
	// false 0 30s
	// true
	// ratelimit: invalid N: 5 is more than the burst 2: it can never pass
}

func ExampleNewRedis() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	mr.SetTime(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)) // the script reads Redis TIME
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	// Every instance of the application builds the same limiter on the
	// same Redis and shares the budget.
	lim, err := ratelimit.NewRedis(rdb, ratelimit.PerMinute(600), ratelimit.Config{})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	// Optional: saves the first decision on each server a round trip.
	if err := lim.LoadScripts(ctx); err != nil {
		panic(err)
	}
	d, _ := lim.Allow(ctx, "org", 599)
	fmt.Println(d.Allowed, d.Remaining)
	d, _ = lim.Allow(ctx, "org", 2)
	fmt.Println(d.Allowed, d.Remaining, d.RetryAfter)
	fmt.Println(lim.Key("org"))

	_, err = ratelimit.NewRedis(rdb, ratelimit.PerMinute(600), ratelimit.Config{Prefix: "tenant-{a}:"})
	fmt.Println(errors.Is(err, chatscale.ErrInvalidConfig))
	fmt.Println(err)
	// Output:
	// true 1
	// false 1 100ms
	// chatscale:ratelimit:{org}
	// true
	// ratelimit: invalid config: Config.Prefix: contains '{' or '}'
}

func ExampleAllowAll() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	mr.SetTime(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	// The same HashTag puts both budgets in one slot: one round trip.
	requests, _ := ratelimit.NewRedis(rdb, ratelimit.PerMinute(500), ratelimit.Config{Prefix: "rpm:", HashTag: "openai"})
	tokens, _ := ratelimit.NewRedis(rdb, ratelimit.PerMinute(30000), ratelimit.Config{Prefix: "tpm:", HashTag: "openai"})
	ctx := context.Background()

	// Reserve the prompt estimate plus the reply limit...
	d, _ := ratelimit.AllowAll(ctx,
		ratelimit.Cost{Limiter: requests, Key: "org", N: 1},
		ratelimit.Cost{Limiter: tokens, Key: "org", N: 4000},
	)
	fmt.Println(d.Allowed)
	// ...and settle against the usage the upstream reported.
	_ = tokens.Adjust(ctx, "org", 1200-4000)
	d, _ = tokens.Allow(ctx, "org", 1)
	fmt.Println(d.Remaining)
	// A cost that does not fit spends nothing.
	d, _ = ratelimit.AllowAll(ctx,
		ratelimit.Cost{Limiter: requests, Key: "org", N: 1},
		ratelimit.Cost{Limiter: tokens, Key: "org", N: 29000},
	)
	fmt.Println(d.Allowed, d.RetryAfter)
	fmt.Println(requests.Key("org"), tokens.Key("org"))
	// Output:
	// true
	// 28799
	// false 402ms
	// rpm:ratelimit:{openai}:org tpm:ratelimit:{openai}:org
}

// Two limiters share a registry: their Names tell their series apart.
// Close takes a limiter's series off the registry.
func ExampleConfig_metrics() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	reg := prometheus.NewRegistry()
	cfg := ratelimit.Config{Registerer: reg, ConstLabels: prometheus.Labels{"upstream": "openai"}}
	cfg.Name = "requests"
	requests, err := ratelimit.NewRedis(rdb, ratelimit.PerMinute(500), cfg)
	if err != nil {
		panic(err)
	}
	cfg.Name = "tokens"
	tokens, err := ratelimit.NewRedis(rdb, ratelimit.PerMinute(30000), cfg)
	if err != nil {
		panic(err)
	}
	defer requests.Close()
	_, _ = tokens.Allow(context.Background(), "org", 100)

	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		fmt.Println(mf.GetName(), len(mf.GetMetric()), "series")
	}
	_ = tokens.Close()
	mfs, _ = reg.Gather()
	fmt.Println(len(mfs[0].GetMetric()), "decisions series after the tokens limiter's Close")
	// Output:
	// ai_chat_ratelimit_decisions_total 4 series
	// ai_chat_ratelimit_fallback_total 2 series
	// ai_chat_ratelimit_outages_total 2 series
	// ai_chat_ratelimit_store_errors_total 2 series
	// 2 decisions series after the tokens limiter's Close
}
