package ratelimit

import (
	"context"
	"errors"
	"time"
)

// SetSleep replaces the sleep of a *Local or *Redis, for tests.
func SetSleep(l Limiter, f func(context.Context, time.Duration) error) {
	switch l := l.(type) {
	case *Local:
		l.sleep = f
	case *Redis:
		l.sleep = f
	}
}

// KeySlot exposes keySlot to tests.
var KeySlot = keySlot

// Remaining returns how much of key's budget r could spend now, without
// spending anything: the script in adjust mode with a cost of 0, which
// rewrites the stored time unchanged.
func Remaining(ctx context.Context, r *Redis, key string) (int, error) {
	res, fb, err := r.run(ctx, modeAdjust, []*Redis{r}, []string{r.Key(key)}, []int{0})
	if err != nil {
		return 0, err
	}
	if fb {
		return 0, errors.New("ratelimit: Remaining: redis failed")
	}
	return res.buckets[0].remaining, nil
}
