// Package ratelimit keeps request and token budgets: per process with
// NewLocal, or shared by every instance of the host application with
// NewRedis (GCRA in Redis, one round trip per decision).
//
// A Limiter holds many budgets, one per key (the organisation's request
// budget, one user's quota, a model's token budget), all with the same
// Limit. A cost n is 1 for a request, or a token estimate for a token budget.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Callers test for them with errors.Is.
var (
	// ErrLimited means the budget does not allow the cost now.
	// The error is a *LimitedError carrying when to retry.
	ErrLimited = errors.New("ratelimit: limit exceeded")
	// ErrInvalid means a bad argument: an empty key, n <= 0, or n larger
	// than the burst (a cost that could never pass).
	ErrInvalid = errors.New("ratelimit: invalid argument")
	// ErrUnavailable means the shared store could not be reached and the
	// limiter is configured to fail closed.
	ErrUnavailable = errors.New("ratelimit: store unavailable")
)

// Limit is a budget: Rate events per Period, with bursts of up to Burst.
// The zero Limit allows nothing.
type Limit struct {
	Rate   int
	Period time.Duration
	Burst  int
}

// PerSecond returns a Limit of rate events per second with burst rate.
func PerSecond(rate int) Limit { return Limit{Rate: rate, Period: time.Second, Burst: rate} }

// PerMinute returns a Limit of rate events per minute with burst rate.
func PerMinute(rate int) Limit { return Limit{Rate: rate, Period: time.Minute, Burst: rate} }

// PerHour returns a Limit of rate events per hour with burst rate.
func PerHour(rate int) Limit { return Limit{Rate: rate, Period: time.Hour, Burst: rate} }

// String returns the limit as "rate/period (burst b)".
func (l Limit) String() string {
	return fmt.Sprintf("%d/%s (burst %d)", l.Rate, l.Period, l.Burst)
}

// IsZero reports whether l is the zero Limit.
func (l Limit) IsZero() bool { return l == Limit{} }

// Decision is the answer to one Allow call. Its fields map onto the
// RateLimit-* and Retry-After HTTP headers.
type Decision struct {
	// Allowed reports whether the cost was spent.
	Allowed bool
	// Remaining is how much of the budget could still be spent now.
	Remaining int
	// RetryAfter is how long to wait before the same cost can pass;
	// zero when Allowed.
	RetryAfter time.Duration
	// ResetAfter is how long until the budget is full again.
	ResetAfter time.Duration
}

// LimitedError is returned by Wait when the budget cannot allow the cost
// before ctx's deadline. It wraps ErrLimited.
type LimitedError struct {
	Key        string
	RetryAfter time.Duration
}

func (e *LimitedError) Error() string {
	return fmt.Sprintf("ratelimit: limit exceeded for %q, retry after %s", e.Key, e.RetryAfter)
}

// Is reports whether target is ErrLimited.
func (e *LimitedError) Is(target error) bool { return target == ErrLimited }

// Limiter decides whether costs fit in per-key budgets.
// Implementations are safe for concurrent use.
type Limiter interface {
	// Allow spends n from key's budget if it fits now, and never blocks
	// on the budget. It returns an error wrapping ErrInvalid for bad
	// input, and ErrUnavailable when the store fails and the limiter
	// fails closed.
	Allow(ctx context.Context, key string, n int) (Decision, error)
	// Wait blocks until n fits in key's budget and spends it. When the
	// wait would outlast ctx's deadline it returns a *LimitedError at
	// once, without sleeping; when ctx ends while waiting it returns
	// ctx's error.
	Wait(ctx context.Context, key string, n int) error
	// Adjust settles an earlier spend against what it really cost:
	// a positive delta charges more (without waiting, the budget may go
	// into debt), a negative one gives budget back.
	Adjust(ctx context.Context, key string, delta int) error
}
