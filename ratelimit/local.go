package ratelimit

import (
	"context"
	"hash/maphash"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/chatscale/chatscale/internal/timeutil"
)

// numShards splits a Local's key map so that concurrent callers on
// different keys rarely share a lock. A power of two.
const numShards = 32

// maxChargeChunks bounds the work of one positive Adjust on a Local: a
// charge is applied in chunks of at most Burst, so at most
// maxChargeChunks*Burst is charged per call.
const maxChargeChunks = 1 << 16

// Local is a Limiter that keeps its budgets in process memory, one
// golang.org/x/time/rate.Limiter per key. It does not share budgets with
// other instances; use Redis for that.
//
// The key map is bounded (Config.MaxKeys): a key whose bucket has
// refilled completely is dropped when the map grows, which changes
// nothing since a full bucket behaves exactly as a missing one.
//
// A Local is safe for concurrent use, starts no goroutines and holds no
// metrics, so it has no Close. Create it with NewLocal; the zero Local
// refuses every call with a *chatscale.ConfigError.
type Local struct {
	limit    Limit
	rlimit   rate.Limit
	now      func() time.Time
	sleep    func(context.Context, time.Duration) error
	seed     maphash.Seed
	shardCap int // keys per shard; 0 means no bound
	shards   [numShards]shard
}

type shard struct {
	mu      sync.Mutex
	m       map[string]*rate.Limiter
	sweepAt int // sweep idle keys when len(m) reaches this
	_       [40]byte
}

// NewLocal returns a Local enforcing limit on every key. It returns a
// *chatscale.ConfigError when limit or cfg is impossible (see Limit and
// Config). Of cfg it uses MaxKeys and Now.
func NewLocal(limit Limit, cfg Config) (*Local, error) {
	limit, err := limit.normalize()
	if err != nil {
		return nil, err
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	l := &Local{
		limit:  limit,
		rlimit: rate.Limit(float64(limit.Rate) / limit.Period.Seconds()),
		now:    cfg.Now,
		sleep:  timeutil.Sleep,
		seed:   maphash.MakeSeed(),
	}
	if cfg.MaxKeys > 0 {
		l.shardCap = (cfg.MaxKeys + numShards - 1) / numShards
	}
	return l, nil
}

// Limit returns the limit the Local enforces on each key.
func (l *Local) Limit() Limit { return l.limit }

// Allow spends n from key's budget if it fits now. It returns a
// *chatscale.InputError for an empty key, n <= 0 or n > Burst. It does not
// allocate.
func (l *Local) Allow(_ context.Context, key string, n int) (Decision, error) {
	if err := l.check(key, n); err != nil {
		return Decision{}, err
	}
	return l.allowAt(l.now(), key, n), nil
}

func (l *Local) check(key string, n int) error {
	if l.limit.Rate == 0 {
		return errZeroLocal()
	}
	return checkArgs(key, n, l.limit)
}

func (l *Local) allowAt(now time.Time, key string, n int) Decision {
	sh := l.shard(key)
	sh.mu.Lock()
	lim := l.get(sh, key, now)
	ok := lim.AllowN(now, n)
	tokens := lim.TokensAt(now)
	sh.mu.Unlock()
	d := Decision{Allowed: ok, ResetAfter: l.durationFor(float64(l.limit.Burst) - tokens)}
	if tokens > 0 {
		d.Remaining = int(tokens)
	}
	if !ok {
		d.RetryAfter = l.durationFor(float64(n) - tokens)
	}
	return d
}

// Wait blocks until n fits in key's budget and spends it, reserving its
// place in line at once (as rate.Limiter.WaitN does). When the wait would
// outlast ctx's deadline it returns a *LimitedError without sleeping;
// when ctx ends while waiting it gives the reservation back and returns
// ctx's error. Bad input returns a *chatscale.InputError.
func (l *Local) Wait(ctx context.Context, key string, n int) error {
	if err := l.check(key, n); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	now := l.now()
	sh := l.shard(key)
	sh.mu.Lock()
	r := l.get(sh, key, now).ReserveN(now, n)
	sh.mu.Unlock()
	delay := r.DelayFrom(now)
	if delay <= 0 {
		return nil
	}
	if budget, ok := budgetFor(ctx, now); ok && delay > budget {
		r.CancelAt(now)
		return &LimitedError{Key: key, RetryAfter: delay}
	}
	if err := l.sleep(ctx, delay); err != nil {
		r.CancelAt(l.now())
		return err
	}
	return nil
}

// Adjust settles an earlier spend on key: a negative delta gives budget
// back (never beyond Burst), a positive one charges it without waiting,
// so the budget may go into debt. A positive delta is applied in chunks
// of Burst, at most 65536 of them per call. An empty key returns a
// *chatscale.InputError; a zero delta does nothing.
func (l *Local) Adjust(_ context.Context, key string, delta int) error {
	if l.limit.Rate == 0 {
		return errZeroLocal()
	}
	if key == "" {
		return inputError("Key", "empty")
	}
	if delta == 0 {
		return nil
	}
	now := l.now()
	sh := l.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if delta < 0 {
		lim := sh.m[key]
		if lim == nil {
			return nil // a missing key is a full bucket already
		}
		// ReserveN with a negative count adds tokens; the next advance
		// caps them at the burst. TestLocalAdjustRefund pins this
		// behaviour of x/time/rate.
		lim.ReserveN(now, delta)
		return nil
	}
	lim := l.get(sh, key, now)
	for i := 0; delta > 0 && i < maxChargeChunks; i++ {
		c := min(delta, l.limit.Burst)
		lim.ReserveN(now, c)
		delta -= c
	}
	return nil
}

// Stats returns a snapshot; only Keys is set for a Local.
func (l *Local) Stats() Stats {
	var s Stats
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		s.Keys += len(sh.m)
		sh.mu.Unlock()
	}
	return s
}

// errZeroLocal is the error of every call on the zero Local.
func errZeroLocal() error {
	return configError("Local", "the zero Local: create it with NewLocal")
}

func (l *Local) shard(key string) *shard {
	return &l.shards[maphash.String(l.seed, key)&(numShards-1)]
}

// get returns key's limiter, creating it; sh.mu must be held.
func (l *Local) get(sh *shard, key string, now time.Time) *rate.Limiter {
	if lim := sh.m[key]; lim != nil {
		return lim
	}
	if sh.m == nil {
		sh.m = make(map[string]*rate.Limiter)
	}
	if len(sh.m) >= sh.sweepAt {
		l.sweep(sh, now)
	}
	lim := rate.NewLimiter(l.rlimit, l.limit.Burst)
	sh.m[key] = lim
	return lim
}

// sweep drops the keys whose bucket is full at now, then, if the shard is
// still at its bound, arbitrary keys down to 7/8 of it. sh.mu must be
// held. Sweeps run when the shard has doubled since the last one, so
// their cost is constant per insert on average.
func (l *Local) sweep(sh *shard, now time.Time) {
	burst := float64(l.limit.Burst)
	for k, lim := range sh.m {
		if lim.TokensAt(now) >= burst {
			delete(sh.m, k)
		}
	}
	if l.shardCap > 0 && len(sh.m) >= l.shardCap {
		target := l.shardCap - max(l.shardCap/8, 1)
		for k := range sh.m {
			if len(sh.m) <= target {
				break
			}
			delete(sh.m, k)
		}
	}
	sh.sweepAt = max(2*len(sh.m), 64)
	if l.shardCap > 0 {
		sh.sweepAt = min(sh.sweepAt, l.shardCap)
	}
}

// durationFor returns how long tokens units take to come back, rounded up.
func (l *Local) durationFor(tokens float64) time.Duration {
	if tokens <= 0 {
		return 0
	}
	d := math.Ceil(tokens * float64(l.limit.Period) / float64(l.limit.Rate))
	if d >= math.MaxInt64 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(d)
}

func (l *Local) clock() time.Time                                 { return l.now() }
func (l *Local) pause(ctx context.Context, d time.Duration) error { return l.sleep(ctx, d) }
