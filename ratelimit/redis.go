package ratelimit

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/internal/prom"
	"github.com/chatscale/chatscale/internal/rediscall"
	"github.com/chatscale/chatscale/internal/scripts"
	"github.com/chatscale/chatscale/internal/timeutil"
)

//go:embed gcra.lua
var gcraSrc string

// gcraScript is GCRA over one or more buckets; see gcra.lua for its KEYS,
// ARGV and reply.
var gcraScript = redis.NewScript(gcraSrc)

// minInterval is the finest emission interval NewRedis accepts, in µs.
// The script keeps times as microseconds in doubles, exact to about
// 0.02µs for the next decades; one unit must weigh well above that.
const minInterval = 0.1

// Script modes (ARGV[1] of gcra.lua), in microseconds.
const (
	modeAllow  = 0
	modeAdjust = -1
	// noDeadline is the max wait of a Wait whose ctx has no deadline:
	// about 31 years.
	noDeadline = int64(1e15)
)

// Redis is a Limiter whose budgets live in Redis, shared by every
// instance of the host application: GCRA, one script and one round trip
// per decision, with the time taken from Redis TIME. It works on a single
// server, Sentinel, Ring and Cluster (see Config.HashTag for the keys).
//
// While Redis fails, a Redis fails open on a local fallback limiter at
// limit/Config.ExpectedInstances (the default) or fails closed with
// ErrUnavailable; see Config. A cost larger than the fallback's burst is
// charged as the whole fallback burst while the fallback answers.
//
// A Redis is safe for concurrent use and starts no goroutines. It does not
// take ownership of the client; callers close it. Close unregisters its
// metrics.
type Redis struct {
	client    redis.UniversalClient
	limit     Limit
	cfg       Config
	ivArg     string // emission interval, µs per unit
	offArg    string // burst offset, µs
	base      string // Prefix + "ratelimit:"
	keyPrefix string // base + "{" + HashTag + "}:" when HashTag is set
	fallback  *Local
	fbBurst   int
	bound     rediscall.Bound // of each Redis call: Config.RedisTimeout
	sleep     func(context.Context, time.Duration) error
	metrics   *prom.Registration

	down     atomic.Bool
	probeAt  atomic.Int64 // unix ns before which calls skip Redis while down
	allowed  atomic.Uint64
	limited  atomic.Uint64
	fbCount  atomic.Uint64
	storeErr atomic.Uint64
	outages  atomic.Uint64
}

// NewRedis returns a Redis enforcing limit on every key through rdb. It
// returns a *chatscale.ConfigError for a nil rdb (Field "rdb"), an
// impossible limit ("limit.Rate", "limit.Period", "limit.Burst", or
// "limit" for one finer than 1e7 units per second) or an impossible cfg
// ("Config.Prefix", "Config.HashTag" or "Config.Name" holding a brace,
// negative "Config.ExpectedInstances", "Config.ConstLabels" holding
// "limiter" or "result"), and the Registerer's error when the metrics
// cannot be registered (then none is). It sends nothing to Redis (see
// LoadScripts) and does not take ownership of rdb.
func NewRedis(rdb redis.UniversalClient, limit Limit, cfg Config) (*Redis, error) {
	if rdb == nil {
		return nil, configError("rdb", "nil")
	}
	limit, err := limit.normalize()
	if err != nil {
		return nil, err
	}
	if limit.interval() < minInterval {
		return nil, configError("limit", fmt.Sprintf("%s: finer than 1e7 units per second, below what the script's microsecond clock resolves", limit))
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	fbLimit := Limit{
		Rate:   max(1, limit.Rate/cfg.ExpectedInstances),
		Period: limit.Period,
		Burst:  max(1, limit.Burst/cfg.ExpectedInstances),
	}
	fb, err := NewLocal(fbLimit, cfg)
	if err != nil {
		return nil, err
	}
	iv := limit.interval()
	// Plain decimals ('f'): the Lua of miniredis does not parse "9e+07".
	r := &Redis{
		client:   rdb,
		limit:    limit,
		cfg:      cfg,
		ivArg:    strconv.FormatFloat(iv, 'f', -1, 64),
		offArg:   strconv.FormatFloat(iv*float64(limit.Burst), 'f', -1, 64),
		base:     cfg.Prefix + "ratelimit:",
		fallback: fb,
		fbBurst:  fbLimit.Burst,
		bound:    rediscall.New(cfg.RedisTimeout),
		sleep:    timeutil.Sleep,
	}
	if cfg.HashTag != "" {
		r.keyPrefix = r.base + "{" + cfg.HashTag + "}:"
	}
	if r.metrics, err = r.register(); err != nil {
		return nil, err
	}
	return r, nil
}

// Limit returns the limit the Redis enforces on each key.
func (r *Redis) Limit() Limit { return r.limit }

// Key returns the Redis key that holds key's budget:
// Prefix+"ratelimit:{"+key+"}", or Prefix+"ratelimit:{"+HashTag+"}:"+key
// when Config.HashTag is set, where Prefix defaults to
// chatscale.DefaultPrefix: "chatscale:ratelimit:{user-1}",
// "chatscale:ratelimit:{openai}:org".
func (r *Redis) Key(key string) string {
	if r.keyPrefix != "" {
		return r.keyPrefix + key
	}
	return r.base + "{" + key + "}"
}

// LoadScripts loads the limiter's Lua script into the script cache of
// every server the client reaches: every node of a Cluster (go-redis
// broadcasts SCRIPT LOAD to each master and replica), every shard of a
// Ring, the master of a Sentinel-managed client. Calling it at startup is
// optional: without it the first decision on each server costs one more
// round trip (EVALSHA answered NOSCRIPT, then EVAL), after a restart or a
// failover too. It returns ctx's error when ctx ends, else an error
// wrapping ErrUnavailable and Redis's error when a server refuses or
// does not answer within Config.RedisTimeout (a *rediscall.TimeoutError
// then, which matches context.DeadlineExceeded); it does not count as a
// decision or a store error.
func (r *Redis) LoadScripts(ctx context.Context) error {
	_, err := rediscall.Do(ctx, r.bound, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, scripts.Load(ctx, r.client, gcraScript)
	})
	if err == nil {
		return nil
	}
	if cerr := callerEnded(ctx, err); cerr != nil {
		return cerr
	}
	return fmt.Errorf("%w: loading scripts: %w", ErrUnavailable, err)
}

// Close unregisters the limiter's metrics from Config.Registerer, so that
// the registry is as NewRedis found it and another limiter with the same
// Name and ConstLabels can register. That is all it does: the limiter
// keeps working after Close (its Stats keep counting), and the client
// stays open. Later calls do nothing. It always returns nil.
func (r *Redis) Close() error {
	r.metrics.Unregister()
	return nil
}

// Allow spends n from key's budget if it fits now, in one round trip. It
// returns a *chatscale.InputError for an empty key, n <= 0 or n > Burst;
// while Redis fails, the fallback's decision, or with FailClosed
// an error wrapping ErrUnavailable; ctx's error when ctx ends first.
func (r *Redis) Allow(ctx context.Context, key string, n int) (Decision, error) {
	if err := checkArgs(key, n, r.limit); err != nil {
		return Decision{}, err
	}
	res, fb, err := r.run(ctx, modeAllow, []*Redis{r}, []string{r.Key(key)}, []int{n})
	if err != nil {
		return Decision{}, err
	}
	if fb {
		r.fbCount.Add(1)
		d, err := r.fallback.Allow(ctx, key, min(n, r.fbBurst))
		r.count(d.Allowed)
		return d, err
	}
	d := res.decision()
	r.count(d.Allowed)
	return d, nil
}

// Wait blocks until n fits in key's budget and spends it. It reserves its
// place in line in the same round trip that decides, so waiters are served
// in order and do not poll. When the wait would outlast ctx's deadline it
// returns a *LimitedError at once, without sleeping and without spending;
// when ctx ends while waiting it gives the reservation back and returns
// ctx's error. Errors are otherwise those of Allow.
func (r *Redis) Wait(ctx context.Context, key string, n int) error {
	if err := checkArgs(key, n, r.limit); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	res, fb, err := r.run(ctx, maxWait(ctx, r.cfg.Now()), []*Redis{r}, []string{r.Key(key)}, []int{n})
	if err != nil {
		return err
	}
	if fb {
		r.fbCount.Add(1)
		err := r.fallback.Wait(ctx, key, min(n, r.fbBurst))
		r.count(err == nil)
		return err
	}
	r.count(res.allowed)
	if !res.allowed {
		return &LimitedError{Key: key, RetryAfter: res.wait}
	}
	if res.wait > 0 {
		if err := r.sleep(ctx, res.wait); err != nil {
			_ = r.Adjust(context.WithoutCancel(ctx), key, -n)
			return err
		}
	}
	return nil
}

// Adjust settles an earlier spend on key in one round trip: a negative
// delta gives budget back (never beyond Burst), a positive one charges it
// without waiting, so the budget may go into debt. An empty key returns
// a *chatscale.InputError; a zero delta does nothing. While Redis
// fails it adjusts the fallback, or with FailClosed returns an error
// wrapping ErrUnavailable.
func (r *Redis) Adjust(ctx context.Context, key string, delta int) error {
	if key == "" {
		return inputError("Key", "empty")
	}
	if delta == 0 {
		return nil
	}
	_, fb, err := r.run(ctx, modeAdjust, []*Redis{r}, []string{r.Key(key)}, []int{delta})
	if err != nil {
		return err
	}
	if fb {
		r.fbCount.Add(1)
		return r.fallback.Adjust(ctx, key, delta)
	}
	return nil
}

// Stats returns a snapshot of the limiter's counters.
func (r *Redis) Stats() Stats {
	return Stats{
		Keys:        r.fallback.Stats().Keys,
		Allowed:     r.allowed.Load(),
		Limited:     r.limited.Load(),
		Fallback:    r.fbCount.Load(),
		StoreErrors: r.storeErr.Load(),
		Outages:     r.outages.Load(),
		Unavailable: r.down.Load(),
	}
}

func (r *Redis) count(allowed bool) {
	if allowed {
		r.allowed.Add(1)
	} else {
		r.limited.Add(1)
	}
}

// result is gcra.lua's reply.
type result struct {
	allowed bool
	wait    time.Duration
	buckets []bucket
}

type bucket struct {
	remaining   int
	reset, wait time.Duration
}

// decision merges the buckets: the smallest remainder, the longest waits.
func (res result) decision() Decision {
	d := Decision{Allowed: res.allowed, Remaining: math.MaxInt}
	for _, b := range res.buckets {
		d.Remaining = min(d.Remaining, b.remaining)
		d.ResetAfter = max(d.ResetAfter, b.reset)
	}
	if !res.allowed {
		d.RetryAfter = res.wait
	}
	return d
}

// maxWait returns the script's max wait for a Wait under ctx: the time to
// ctx's deadline in µs (at least 0), or noDeadline.
func maxWait(ctx context.Context, now time.Time) int64 {
	budget, ok := budgetFor(ctx, now)
	if !ok {
		return noDeadline
	}
	return max(0, budget.Microseconds())
}

// errSkipped stands for Redis while it is failing and not due for a probe.
var errSkipped = errors.New("skipped while redis is failing")

// run evaluates gcra.lua over keys, one per limiter in lims (all on
// r.client, keys in one slot), with mode as ARGV[1] and costs, within
// r.bound. On a store failure (an error, or no answer within the bound)
// it returns fb=true when r fails open, and an error wrapping
// ErrUnavailable when it fails closed. ctx's end is returned as ctx's
// error and does not count as a store failure.
func (r *Redis) run(ctx context.Context, mode int64, lims []*Redis, keys []string, costs []int) (res result, fb bool, err error) {
	if r.skip() {
		fb, err := r.failOver(errSkipped)
		return res, fb, err
	}
	args := make([]any, 0, 1+3*len(keys))
	args = append(args, mode)
	for i, l := range lims {
		args = append(args, l.ivArg, l.offArg, costs[i])
	}
	vals, err := rediscall.Do(ctx, r.bound, func(ctx context.Context) ([]int64, error) {
		return gcraScript.Run(ctx, r.client, keys, args...).Int64Slice()
	})
	if err == nil && len(vals) != 2+3*len(keys) {
		err = fmt.Errorf("ratelimit: unexpected script reply of %d values", len(vals))
	}
	if err != nil {
		if cerr := callerEnded(ctx, err); cerr != nil {
			return res, false, cerr
		}
		r.storeErr.Add(1)
		r.markDown(err)
		fb, err := r.failOver(err)
		return res, fb, err
	}
	r.markUp()
	res.allowed = vals[0] == 1
	res.wait = micros(vals[1])
	res.buckets = make([]bucket, len(keys))
	for i := range res.buckets {
		v := vals[2+3*i:]
		res.buckets[i] = bucket{remaining: int(v[0]), reset: micros(v[1]), wait: micros(v[2])}
	}
	return res, false, nil
}

// callerEnded returns ctx's error when the call failed because ctx ended
// (rediscall.Do reports that as ctx's own error, a moment before ctx.Err
// may say so), else nil: the failure is Redis's, a bound that passed
// (*rediscall.TimeoutError) included.
func callerEnded(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if err == context.Canceled || err == context.DeadlineExceeded {
		return err
	}
	return nil
}

func micros(us int64) time.Duration {
	if us <= 0 {
		return 0
	}
	if us > math.MaxInt64/int64(time.Microsecond) {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(us) * time.Microsecond
}

// failOver returns what a call does on a store failure: fall back (fail
// open) or an error wrapping ErrUnavailable (fail closed).
func (r *Redis) failOver(cause error) (bool, error) {
	if r.cfg.FailClosed {
		return false, fmt.Errorf("%w: %w", ErrUnavailable, cause)
	}
	return true, nil
}

// skip reports whether a call should not try Redis: it is failing and the
// next probe is not due, or another call took the probe.
func (r *Redis) skip() bool {
	if !r.down.Load() || r.cfg.ProbeInterval < 0 {
		return false
	}
	now := r.cfg.Now().UnixNano()
	at := r.probeAt.Load()
	if now < at {
		return true
	}
	return !r.probeAt.CompareAndSwap(at, now+int64(r.cfg.ProbeInterval))
}

func (r *Redis) markDown(err error) {
	if r.cfg.ProbeInterval > 0 {
		r.probeAt.Store(r.cfg.Now().UnixNano() + int64(r.cfg.ProbeInterval))
	}
	if r.down.CompareAndSwap(false, true) {
		r.outages.Add(1)
		mode := "failing open on the local fallback"
		if r.cfg.FailClosed {
			mode = "failing closed"
		}
		r.cfg.Logger.Warn("ratelimit: redis unavailable, "+mode,
			"limiter", r.cfg.Name, "err", err)
	}
}

func (r *Redis) markUp() {
	if r.down.Load() && r.down.CompareAndSwap(true, false) {
		r.cfg.Logger.Info("ratelimit: redis available again",
			"limiter", r.cfg.Name, "fallback_decisions", r.fbCount.Load())
	}
}

// register registers the limiter's counters on Config.Registerer, if
// any, all or nothing.
func (r *Redis) register() (*prom.Registration, error) {
	o := prom.Opts{Registerer: r.cfg.Registerer, Namespace: r.cfg.Namespace, ConstLabels: r.cfg.ConstLabels}
	if o.Registerer == nil {
		return prom.Register(pkg, nil)
	}
	counter := func(name, help string, v *atomic.Uint64, labels ...string) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        o.Name("ratelimit", name),
			Help:        help,
			ConstLabels: o.Labels(append([]string{"limiter", r.cfg.Name}, labels...)...),
		}, func() float64 { return float64(v.Load()) })
	}
	const decisionsHelp = "Rate limit decisions by result."
	return prom.Register(pkg, o.Registerer,
		counter("decisions_total", decisionsHelp, &r.allowed, "result", "allowed"),
		counter("decisions_total", decisionsHelp, &r.limited, "result", "limited"),
		counter("fallback_total", "Calls answered by the local fallback while Redis failed.", &r.fbCount),
		counter("store_errors_total", "Failed Redis calls.", &r.storeErr),
		counter("outages_total", "Times Redis started failing.", &r.outages),
	)
}

func (r *Redis) clock() time.Time                                 { return r.cfg.Now() }
func (r *Redis) pause(ctx context.Context, d time.Duration) error { return r.sleep(ctx, d) }
