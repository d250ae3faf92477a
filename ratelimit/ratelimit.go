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
// when a later one is denied (see AllowAll for what that costs). WaitAll
// in one script reserves each cost on its own budget at once and then
// sleeps until the slowest fits; each budget counts the spend from the
// reservation, so a cancelled wait gives every budget back exactly (see
// WaitAll).
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
//
// A Redis that hangs rather than refuses (a stopped process, a network
// stall, a master that died without closing its connections) is a failure
// too: each Redis call is bounded by Config.RedisTimeout (1 s by default),
// and a call that Redis has not answered by then falls back (or fails
// closed) like one that got an error, whatever the go-redis client's own
// timeouts and however long the caller's ctx. So the first calls of an
// outage each wait up to RedisTimeout, and later ones only the call that
// probes. A call whose ctx ends first returns ctx's error and does not
// count as a Redis failure. Wait and WaitAll bound each Redis call the
// same way; the wait for the budget itself ends with ctx. One call past
// the bound is an outage like any other: the decisions of the next
// ProbeInterval go to the fallback, so a host that stalls for longer than
// RedisTimeout (a saturated CPU) sees fallback decisions too. Give the
// client ContextTimeoutEnabled so that a call given up at the bound also
// drops its connection (see the README's conventions for the go-redis
// options); without it the call goes on in the background until the
// client's ReadTimeout.
//
// # During a Redis failover
//
// When a Sentinel-managed master dies or hangs, calls fail (or hang,
// bounded by RedisTimeout) until Sentinel has noticed (its
// down-after-milliseconds) and promoted a replica; go-redis then learns
// the new master from Sentinel's +switch-master message, closes its
// connections to the old one and dials the new one. The limiter goes back
// to Redis at its next probe, at most ProbeInterval after that. So the
// fallback answers for about down-after + the promotion (well under a
// second on a LAN) + go-redis' redial + up to ProbeInterval.
//
// What fail-open admits meanwhile, per key: each instance's fallback has
// Burst/ExpectedInstances and Rate/ExpectedInstances, starts full for a
// key it has not spent lately, and writes nothing to Redis, while the
// Redis bucket refills at Rate, up to Burst. So over an outage of length
// T, ExpectedInstances instances admit up to Burst + Rate*T more than the
// budget allows; each instance beyond ExpectedInstances adds
// Burst/ExpectedInstances + Rate*T/ExpectedInstances. A key whose Redis
// bucket was full when the outage began can see about two bursts in a
// short spell: one from the fallbacks at the start, one from Redis when it
// answers again. Redis also replicates asynchronously: the spends of the
// last moment before a master died may be missing on the promoted
// replica, and are admitted again. A FailClosed limiter admits nothing
// during the switch; its callers get ErrUnavailable. Decisions take the
// time from the server's TIME, so a promoted replica whose clock differs
// shifts every bucket by the difference: keep the servers' clocks in
// sync.
//
// # Conventions
//
// The package follows the conventions of the chatscale module (see the
// README):
//
//   - Keys start with Config.Prefix (default chatscale.DefaultPrefix,
//     "chatscale:") followed by "ratelimit:": "chatscale:ratelimit:{user-1}",
//     or "chatscale:ratelimit:{openai}:org" with Config.HashTag "openai".
//     A Prefix, HashTag or Name holding '{' or '}' is refused.
//   - NewLocal and NewRedis return a *chatscale.ConfigError (matching
//     chatscale.ErrInvalidConfig) for an impossible Limit or Config or a
//     nil client; the methods, AllowAll and WaitAll return a
//     *chatscale.InputError (matching chatscale.ErrInvalidInput) with Field
//     "Key" or "N" for an empty key, a cost n <= 0, or a cost larger than
//     the burst, which can never pass.
//   - ErrUnavailable means Redis failed and the call could not be answered
//     (a FailClosed limiter, LoadScripts); ErrLimited (a *LimitedError)
//     means the budget held the cost off; a ctx that ends is returned as
//     ctx's error.
//   - With Config.Registerer a *Redis registers
//     <Namespace>_ratelimit_decisions_total{result="allowed"|"limited"},
//     <Namespace>_ratelimit_fallback_total,
//     <Namespace>_ratelimit_store_errors_total and
//     <Namespace>_ratelimit_outages_total (Namespace defaults to "ai_chat"),
//     each with the constant label limiter=Config.Name and
//     Config.ConstLabels, all or nothing; Close unregisters them.
//   - (*Redis).LoadScripts warms the script cache of every server at
//     startup.
//
// Two deviations, and why: (*Redis).Close only unregisters the metrics; a
// *Redis runs nothing and does not own its client, so it keeps working
// after Close and the package has no ErrClosed. And Redis decisions take
// the time from Redis TIME, not Config.Now, so that every instance shares
// one clock; Config.Now serves the local limiters, the probes and the
// Wait deadlines.
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

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/keyspace"
	"github.com/chatscale/chatscale/internal/prom"
)

// pkg names the package in its *chatscale.ConfigError and
// *chatscale.InputError values.
const pkg = "ratelimit"

// Sentinel errors. Callers test for them with errors.Is. Bad input and
// impossible configurations are reported with the module's shared errors,
// chatscale.ErrInvalidInput and chatscale.ErrInvalidConfig.
var (
	// ErrLimited means the budget does not allow the cost now.
	// The error is a *LimitedError carrying when to retry.
	ErrLimited = errors.New("ratelimit: limit exceeded")
	// ErrUnavailable means Redis failed, so the call could not be
	// answered: the calls of a limiter with Config.FailClosed while Redis
	// fails (or is held off until the next probe), and LoadScripts. It may
	// succeed later. The error wraps Redis's error when there was one.
	ErrUnavailable = errors.New("ratelimit: store unavailable")
)

func configError(field, reason string) error {
	return &chatscale.ConfigError{Package: pkg, Field: field, Reason: reason}
}

func inputError(field, reason string) error {
	return &chatscale.InputError{Package: pkg, Field: field, Reason: reason}
}

// Limit is a budget: Rate events per Period, with bursts of up to Burst.
// A Burst of zero means Rate. The zero Limit allows nothing: constructors
// refuse it with a *chatscale.ConfigError.
type Limit struct {
	// Rate is how many units (requests, tokens) the budget grants per
	// Period. It must be positive.
	Rate int
	// Period is the time over which Rate is granted. It must be positive.
	Period time.Duration
	// Burst is the most that can be spent at once after an idle spell,
	// and the largest cost that can ever pass. Zero means Rate; negative
	// is refused.
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

// normalize returns l with its defaults filled in, or a
// *chatscale.ConfigError naming the field (as the constructors' parameter
// limit) when l cannot be enforced.
func (l Limit) normalize() (Limit, error) {
	switch {
	case l.Rate <= 0:
		return l, configError("limit.Rate", fmt.Sprintf("%d: must be positive", l.Rate))
	case l.Period <= 0:
		return l, configError("limit.Period", fmt.Sprintf("%s: must be positive", l.Period))
	case l.Burst < 0:
		return l, configError("limit.Burst", fmt.Sprintf("%d: must not be negative", l.Burst))
	}
	if l.Burst == 0 {
		l.Burst = l.Rate
	}
	if float64(l.Rate)/l.Period.Seconds() > 1e9 {
		// Beyond any real budget, and where float arithmetic on
		// microsecond timestamps stops being exact.
		return l, configError("limit", fmt.Sprintf("%s: more than 1e9 units per second", l))
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
	// on the budget. It returns a *chatscale.InputError for bad input (an
	// empty key, n <= 0, n larger than the burst), and an error wrapping
	// ErrUnavailable when the store fails and the limiter fails closed.
	Allow(ctx context.Context, key string, n int) (Decision, error)
	// Wait blocks until n fits in key's budget and spends it. When the
	// wait would outlast ctx's deadline it returns a *LimitedError at
	// once, without sleeping; when ctx ends while waiting it returns
	// ctx's error.
	Wait(ctx context.Context, key string, n int) error
	// Adjust settles an earlier spend against what it really cost:
	// a positive delta charges more (without waiting, the budget may go
	// into debt), a negative one gives budget back. A zero delta does
	// nothing. An empty key returns a *chatscale.InputError.
	Adjust(ctx context.Context, key string, delta int) error
}

// Compile-time checks.
var (
	_ Limiter = (*Local)(nil)
	_ Limiter = (*Redis)(nil)
)

// Config tunes a limiter. It is passed by value; the zero Config is valid
// and every field documents its default. Fields marked "Redis only" are
// ignored by NewLocal, which still refuses the values NewRedis refuses, so
// that one Config serves both.
type Config struct {
	// Prefix starts every Redis key (Redis only); the package adds
	// "ratelimit:" after it, so keys are Prefix+"ratelimit:{"+key+"}" (see
	// HashTag and Redis.Key). Empty means chatscale.DefaultPrefix
	// ("chatscale:"). It must not contain '{' or '}'.
	Prefix string
	// HashTag, when set, is the Redis Cluster hash tag of every key of
	// the limiter: keys are Prefix+"ratelimit:{"+HashTag+"}:"+key, all in
	// one slot (Redis only). Give a request limiter and a token limiter
	// the same HashTag so that AllowAll and WaitAll over both are one
	// script, one round trip. Empty means each key is its own tag
	// (Prefix+"ratelimit:{"+key+"}"), which spreads many keys (users) over
	// the cluster. It must not contain '{' or '}'.
	HashTag string
	// FailClosed makes the limiter return errors wrapping ErrUnavailable
	// while Redis fails (Redis only). False (the default) fails open: the
	// limiter answers from a local limiter at limit/ExpectedInstances.
	FailClosed bool
	// ExpectedInstances is how many instances share the budget; while
	// Redis fails, each one allows Rate/ExpectedInstances and
	// Burst/ExpectedInstances (at least 1 each) per key (Redis only).
	// Zero means 1; negative is refused.
	ExpectedInstances int
	// ProbeInterval is how often, while Redis is failing, one call tries
	// Redis again; the other calls go straight to the fallback (or fail
	// closed) without waiting for a connection timeout (Redis only).
	// Zero means 1 second; negative means every call tries Redis.
	ProbeInterval time.Duration
	// RedisTimeout bounds each Redis call of the limiter (Redis only): a
	// call that Redis has not answered by then counts as a Redis failure,
	// like an error, so a Redis that hangs (a stopped process, a network
	// stall) engages the fallback, or FailClosed's ErrUnavailable, within
	// RedisTimeout, whatever the client's own timeouts and however long
	// the caller's ctx. A ctx that ends first still returns ctx's error.
	// Zero means 1 second (far above a healthy call, well below a turn's
	// deadline); negative means no bound of the limiter's own: a call
	// then ends with its ctx or the client's timeouts (see the package
	// doc).
	RedisTimeout time.Duration
	// MaxKeys bounds the keys a local limiter (NewLocal, and the fallback
	// of NewRedis) holds. Keys whose bucket is full again are dropped
	// first, which is exact: a full bucket behaves as no entry. Only when
	// more than MaxKeys keys are mid-refill are other keys dropped, which
	// hands those keys a fresh burst. Zero means 100000; negative means
	// no bound.
	MaxKeys int
	// Name labels the limiter in logs and in the limiter label of its
	// metrics, e.g. "requests" or "tokens". Empty means "default". It
	// must not contain '{' or '}'. Name does not enter the Redis keys:
	// limiters that keep different budgets on one Redis under the same
	// keys need distinct Prefixes or HashTags.
	Name string
	// Now returns the current time for local decisions, the fallback and
	// Wait deadlines. Nil means time.Now. Redis decisions use Redis TIME.
	Now func() time.Time
	// Logger receives one warning when Redis starts failing and one info
	// line when it answers again (Redis only). Nil discards.
	Logger *slog.Logger
	// Registerer, when set, receives the limiter's counters (Redis only):
	// <Namespace>_ratelimit_decisions_total{result="allowed"|"limited"},
	// <Namespace>_ratelimit_fallback_total,
	// <Namespace>_ratelimit_store_errors_total and
	// <Namespace>_ratelimit_outages_total, each with the constant label
	// limiter=Name plus ConstLabels. They are registered all or nothing,
	// and Close unregisters them. Two limiters on one Registerer need
	// distinct Names or distinct ConstLabels, else the second NewRedis
	// fails. Nil means no metrics (never the global registry).
	Registerer prometheus.Registerer
	// Namespace starts every metric name (Redis only). Empty means
	// chatscale.DefaultNamespace ("ai_chat").
	Namespace string
	// ConstLabels are added to every metric of the limiter (Redis only),
	// e.g. {"upstream": "openai"}. They must not hold the labels the
	// package sets, "limiter" and "result". Limiters on one Registerer
	// must use the same label names (Prometheus refuses one metric name
	// with two sets of label names) and differ in Name or in a value.
	// Nil means none.
	ConstLabels prometheus.Labels
}

// check returns a *chatscale.ConfigError for an impossible field of c.
func (c Config) check() error {
	for _, f := range [...]struct{ name, v string }{
		{"Config.Prefix", c.Prefix},
		{"Config.HashTag", c.HashTag},
		{"Config.Name", c.Name},
	} {
		if err := keyspace.Check(pkg, f.name, f.v); err != nil {
			return err
		}
	}
	if c.ExpectedInstances < 0 {
		return configError("Config.ExpectedInstances", fmt.Sprintf("%d: must not be negative", c.ExpectedInstances))
	}
	return prom.CheckLabels("ratelimit", c.ConstLabels, "limiter", "result")
}

// withDefaults returns a copy of c with defaults filled in.
func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = chatscale.DefaultPrefix
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
	if c.Namespace == "" {
		c.Namespace = chatscale.DefaultNamespace
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

// checkArgs validates a key and cost against a normalized limit: a
// *chatscale.InputError for an empty key, n <= 0 or n > Burst.
func checkArgs(key string, n int, l Limit) error {
	if key == "" {
		return inputError("Key", "empty")
	}
	if n <= 0 {
		return inputError("N", fmt.Sprintf("%d: a cost must be positive", n))
	}
	if n > l.Burst {
		return inputError("N", fmt.Sprintf("%d is more than the burst %d: it can never pass", n, l.Burst))
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
