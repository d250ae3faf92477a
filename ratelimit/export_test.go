package ratelimit

import (
	"context"
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
