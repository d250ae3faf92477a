package ratelimit_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

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
	_, err = lim.Allow(ctx, "user-1", 5)
	fmt.Println(errors.Is(err, ratelimit.ErrInvalid))
	// Output:
	// true 1 0s
	// true 0 0s
	// false 0 30s
	// true
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
	lim, err := ratelimit.NewRedis(rdb, ratelimit.PerMinute(600), ratelimit.Config{Prefix: "example:"})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	d, _ := lim.Allow(ctx, "org", 599)
	fmt.Println(d.Allowed, d.Remaining)
	d, _ = lim.Allow(ctx, "org", 2)
	fmt.Println(d.Allowed, d.Remaining, d.RetryAfter)
	fmt.Println(lim.Key("org"))
	// Output:
	// true 1
	// false 1 100ms
	// example:{org}
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
	// Output:
	// true
	// 28799
	// false 402ms
}
