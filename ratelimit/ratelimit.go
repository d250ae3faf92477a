// Package ratelimit keeps request and token budgets: per process with
// NewLocal, or shared by every instance of the host application with
// NewRedis (GCRA in Redis, one round trip per decision).
//
// A Limiter holds many budgets, one per key (the organisation's request
// budget, one user's quota, a model's token budget), all with the same
// Limit. A cost n is 1 for a request, or a token estimate for a token budget.
//
// # Spending a request and its tokens together
//
// AllowAll and WaitAll spend several costs, on several limiters, all or
// nothing. When every limiter is a *Redis on the same client and (on Redis
// Cluster or Ring) all their keys share a hash slot, the decision is one Lua
// script over all the keys: one round trip, atomic. Give the limiters the
// same Config.HashTag to get that. Otherwise the costs are spent one group
// at a time, in order, and the groups already spent are refunded with Adjust
// when a later one is denied (see AllowAll for what that costs).
//
// After the upstream call, Adjust settles the token estimate against the
// usage the upstream reported: a negative delta gives budget back, a
// positive one charges the rest without waiting.
//
// # Why a script of our own
//
// github.com/go-redis/redis_rate/v10 implements the same GCRA and was the
// first choice, but its script takes one key per call, so it cannot spend a
// request and its tokens atomically in one round trip. It has no Adjust: a
// charge that does not fit is refused and writes nothing, and a negative n,
// its only way to give budget back, writes nothing when the refund would
// fill the bucket. Nor can it reserve budget for a waiter, so a Wait on it
// would poll. The script
// here (gcra.lua) keeps redis_rate's good parts: it reads the time from
// Redis TIME, so every instance uses one clock and clock skew between
// application hosts does not matter, and it stores one number per key (the
// theoretical arrival time) with a TTL equal to the time the bucket takes to
// refill, so idle keys vanish by themselves.
//
// # When Redis fails
//
// By default a *Redis fails open: while Redis cannot be reached it answers
// from a local limiter at limit/Config.ExpectedInstances, counts those
// answers (Stats, metrics) and logs once per outage. With Config.FailClosed
// it returns errors wrapping ErrUnavailable instead. Either way it goes back
// to Redis by itself when Redis answers again: while Redis is failing, one
// call per Config.ProbeInterval tries it and the others do not wait for it.
// How long one failing call waits is the client's business: bound it with
// the go-redis options DialTimeout, ReadTimeout, WriteTimeout, MaxRetries
// and DialerRetries (go-redis ignores ctx deadlines on sockets unless
// ContextTimeoutEnabled is set). A call whose ctx ends returns ctx's error
// and does not count as a Redis failure.
//
// # Composition
//
// The limiters know nothing of retries or breakers. Callers that retry an
// upstream call spend budget once per attempt (every attempt costs the
// upstream budget), and should not count ErrLimited or ctx errors from
// Wait as upstream failures.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Sentinel errors. Callers test for them with errors.Is.
var (
	// ErrLimited means the budget does not allow the cost now.
	// The error is a *LimitedError carrying when to retry.
	ErrLimited = errors.New("ratelimit: limit exceeded")
	// ErrInvalid means a bad argument: an empty key, n <= 0, or n larger
	// than the burst (a cost that could never pass), or an impossible
	// Limit or Config.
	ErrInvalid = errors.New("ratelimit: invalid argument")
	// ErrUnavailable means the shared store could not be reached and the
	// limiter is configured to fail closed.
	ErrUnavailable = errors.New("ratelimit: store unavailable")
)

// Limit is a budget: Rate events per Period, with bursts of up to Burst.
// A Burst of zero means Rate. The zero Limit allows nothing: constructors
// reject it with ErrInvalid.
type Limit struct {
	// Rate is how many units (requests, tokens) the budget grants per Period.
	Rate int
	// Period is the time over which Rate is granted.
	Period time.Duration
	// Burst is the most that can be spent at once after an idle spell,
	// and the largest cost that can ever pass. Zero means Rate.
	Burst int
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

// normalize returns l with its defaults filled in, or an error wrapping
// ErrInvalid when l cannot be enforced.
func (l Limit) normalize() (Limit, error) {
	if l.Burst == 0 {
		l.Burst = l.Rate
	}
	if l.Rate <= 0 || l.Period <= 0 || l.Burst <= 0 {
		return l, fmt.Errorf("%w: limit %s: rate, period and burst must be positive", ErrInvalid, l)
	}
	if float64(l.Rate)/l.Period.Seconds() > 1e9 {
		// Beyond any real budget, and where float arithmetic on
		// microsecond timestamps stops being exact.
		return l, fmt.Errorf("%w: limit %s: more than 1e9 units per second", ErrInvalid, l)
	}
	return l, nil
}

// interval is the time one unit takes to come back, in microseconds.
func (l Limit) interval() float64 {
	return float64(l.Period) / float64(time.Microsecond) / float64(l.Rate)
}

// Decision is the answer to one Allow call. Its fields map onto the
// RateLimit-* and Retry-After HTTP headers.
type Decision struct {
	// Allowed reports whether the cost was spent.
	Allowed bool
	// Remaining is how much of the budget could still be spent now.
	// For AllowAll it is the smallest remainder among the costs' budgets.
	Remaining int
	// RetryAfter is how long to wait before the same cost can pass;
	// zero when Allowed. For AllowAll it is the longest among the costs.
	RetryAfter time.Duration
	// ResetAfter is how long until the budget is full again. For AllowAll
	// it is the longest among the costs.
	ResetAfter time.Duration
}

// LimitedError is returned by Wait and WaitAll when the budget cannot
// allow the cost before ctx's deadline. It wraps ErrLimited.
type LimitedError struct {
	// Key is the budget that needed the longest wait.
	Key string
	// RetryAfter is how long the cost would have had to wait.
	RetryAfter time.Duration
}

// Error returns "ratelimit: limit exceeded for "<key>", retry after <d>",
// with the key quoted.
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
	// into debt), a negative one gives budget back. A zero delta does
	// nothing.
	Adjust(ctx context.Context, key string, delta int) error
}

// Compile-time checks.
var (
	_ Limiter = (*Local)(nil)
	_ Limiter = (*Redis)(nil)
)

// Config tunes a limiter. It is passed by value; the zero Config is valid
// and every field documents its default. Fields marked "Redis only" are
// ignored by NewLocal.
type Config struct {
	// Prefix starts every Redis key (Redis only). It must not contain '{'
	// or '}'. Empty means "ratelimit:".
	Prefix string
	// HashTag, when set, is the Redis Cluster hash tag of every key of
	// the limiter: keys are Prefix+"{"+HashTag+"}:"+key, all in one slot
	// (Redis only). Give a request limiter and a token limiter the same
	// HashTag so that AllowAll and WaitAll over both are one script, one
	// round trip. Empty means each key is its own tag (Prefix+"{"+key+"}"),
	// which spreads many keys (users) over the cluster. It must not
	// contain '{' or '}'.
	HashTag string
	// FailClosed makes the limiter return errors wrapping ErrUnavailable
	// while Redis fails (Redis only). False (the default) fails open: the
	// limiter answers from a local limiter at limit/ExpectedInstances.
	FailClosed bool
	// ExpectedInstances is how many instances share the budget; while
	// Redis fails, each one allows Rate/ExpectedInstances and
	// Burst/ExpectedInstances (at least 1 each) per key (Redis only).
	// Zero means 1; negative is invalid.
	ExpectedInstances int
	// ProbeInterval is how often, while Redis is failing, one call tries
	// Redis again; the other calls go straight to the fallback (or fail
	// closed) without waiting for a connection timeout (Redis only).
	// Zero means 1 second; negative means every call tries Redis.
	ProbeInterval time.Duration
	// MaxKeys bounds the keys a local limiter (NewLocal, and the fallback
	// of NewRedis) holds. Keys whose bucket is full again are dropped
	// first, which is exact: a full bucket behaves as no entry. Only when
	// more than MaxKeys keys are mid-refill are other keys dropped, which
	// hands those keys a fresh burst. Zero means 100000; negative means
	// no bound.
	MaxKeys int
	// Name labels the limiter in logs and metrics, e.g. "requests" or
	// "tokens". Empty means "default". Limiters sharing a Registerer need
	// distinct Names.
	Name string
	// Now returns the current time for local decisions, the fallback and
	// Wait deadlines. Nil means time.Now. Redis decisions use Redis TIME.
	Now func() time.Time
	// Logger receives one warning when Redis starts failing and one info
	// line when it answers again (Redis only). Nil discards.
	Logger *slog.Logger
	// Registerer, when set, receives the limiter's counters (Redis only):
	// ratelimit_decisions_total{limiter,result}, ratelimit_fallback_total,
	// ratelimit_store_errors_total and ratelimit_outages_total, each with
	// the const label limiter=Name. Nil means no metrics.
	Registerer prometheus.Registerer
}

// withDefaults returns a copy of c with defaults filled in.
func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = "ratelimit:"
	}
	if c.ExpectedInstances == 0 {
		c.ExpectedInstances = 1
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = time.Second
	}
	if c.MaxKeys == 0 {
		c.MaxKeys = 100000
	}
	if c.Name == "" {
		c.Name = "default"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Stats is a snapshot of a limiter's counters.
type Stats struct {
	// Keys is how many keys the local limiter holds (for a *Redis: its
	// fallback).
	Keys int
	// Allowed and Limited count the decisions of Allow, Wait and the
	// *All functions (Redis only).
	Allowed, Limited uint64
	// Fallback counts the decisions answered by the local fallback while
	// Redis was failing (Redis only).
	Fallback uint64
	// StoreErrors counts failed Redis calls (Redis only).
	StoreErrors uint64
	// Outages counts the times Redis started failing (Redis only).
	Outages uint64
	// Unavailable reports whether Redis is failing now (Redis only).
	Unavailable bool
}

// checkArgs validates a key and cost against a normalized limit.
func checkArgs(key string, n int, l Limit) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalid)
	}
	if n <= 0 {
		return fmt.Errorf("%w: cost %d for %q: must be positive", ErrInvalid, n, key)
	}
	if n > l.Burst {
		return fmt.Errorf("%w: cost %d for %q exceeds the burst %d: it could never pass", ErrInvalid, n, key, l.Burst)
	}
	return nil
}

// budgetFor returns the longest wait ctx allows from now: ok is false when
// ctx has no deadline.
func budgetFor(ctx context.Context, now time.Time) (time.Duration, bool) {
	dl, ok := ctx.Deadline()
	if !ok {
		return 0, false
	}
	return dl.Sub(now), true
}
