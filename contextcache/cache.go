package contextcache

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/prom"
	"github.com/chatscale/chatscale/internal/rediscall"
	"github.com/chatscale/chatscale/internal/scripts"
	"github.com/chatscale/chatscale/internal/timeutil"
)

var (
	//go:embed get_or_lock.lua
	getOrLockSrc string
	getOrLock    = redis.NewScript(getOrLockSrc)

	//go:embed fill.lua
	fillSrc string
	fill    = redis.NewScript(fillSrc)

	// scripts are the scripts LoadScripts loads.
	luaScripts = []*redis.Script{getOrLock, fill}
)

// Polling bounds of a wait for another instance's load.
const (
	minPoll = 2 * time.Millisecond
	maxPoll = 100 * time.Millisecond
)

// subscribeTimeout bounds the wait for Redis to confirm a subscription
// when Config.RedisTimeout is negative.
const subscribeTimeout = 5 * time.Second

// Cache serves transcripts from process memory (L1), Redis (L2) and a
// Source, in that order. See the package documentation for how the tiers
// work together. Create one with New. A Cache is safe for concurrent use.
//
// New does no I/O and starts no goroutine. Start starts the invalidation
// subscriber; Get runs each shared load in a goroutine of its own. Close
// stops them.
type Cache struct {
	src Source
	cfg Config
	log *slog.Logger
	rdb redis.UniversalClient
	// bound limits each Redis call: Config.RedisTimeout.
	bound rediscall.Bound

	// sleep waits between polls of L2; tests replace it.
	sleep func(ctx context.Context, d time.Duration) error

	l1 *otter.Cache[key, *entry]
	// fails holds the last Source failure of each recently failed key,
	// for RetrySourceAfter; nil when that is disabled.
	fails  *otter.Cache[key, *failure]
	flight singleflight.Group
	// epochs counts invalidations per stripe of keys. A load stores its
	// result in L1 only if its stripe saw no invalidation while it ran.
	epochs [64]atomic.Uint64
	seed   maphash.Seed
	st     counters

	// keyPrefix is Config.Prefix + "contextcache:": it starts every key
	// and the channel.
	keyPrefix string
	channel   string
	metrics   *prom.Registration

	base   context.Context // canceled by Close; loads run under it
	cancel context.CancelFunc

	mu     sync.RWMutex // guards closed and wg.Add
	closed bool
	wg     sync.WaitGroup // the subscriber and the running loads

	startMu sync.Mutex // guards ps
	ps      *redis.PubSub
}

// key is the L1 key: comparable, so a lookup builds no string.
type key struct{ course, video string }

// entry is an L1 value.
type entry struct {
	doc        Document
	notFound   bool
	freshUntil int64         // Unix nanoseconds
	keep       time.Duration // lifetime in L1: freshness plus the stale window
	weight     uint32
}

// failure is a Source failure remembered for RetrySourceAfter.
type failure struct {
	err   error
	until int64 // Unix nanoseconds: the Source is not called again before
}

// maxFailures bounds how many keys' failures a Cache remembers.
const maxFailures = 10_000

type counters struct {
	l1Hits, l2Hits, negativeHits, misses              atomic.Uint64
	loads, loadErrors, notFound, staleServes          atomic.Uint64
	lockWaits, lockTimeouts, redisErrors, sourceSkips atomic.Uint64
	invalidations, invalidationsReceived, corruptL2   atomic.Uint64
}

// New returns a Cache in front of src. It does no I/O and starts no
// goroutine. It returns a *chatscale.ConfigError (matching
// chatscale.ErrInvalidConfig) for a nil src (Field "src") or an impossible
// Config value (Field "Config.L1TTL", "Config.Prefix", ...), and the
// Registerer's error when it refuses the metrics, in which case none is
// left registered.
func New(src Source, cfg Config) (*Cache, error) {
	if src == nil {
		return nil, &chatscale.ConfigError{Package: pkg, Field: "src", Reason: "nil"}
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Cache{
		src:       src,
		cfg:       cfg,
		log:       cfg.Logger,
		rdb:       cfg.Redis,
		bound:     rediscall.New(cfg.RedisTimeout),
		sleep:     timeutil.Sleep,
		seed:      maphash.MakeSeed(),
		keyPrefix: cfg.Prefix + keyPart,
	}
	c.channel = c.keyPrefix + "invalidate"
	c.base, c.cancel = context.WithCancel(context.Background())
	c.l1, err = otter.New(&otter.Options[key, *entry]{
		MaximumWeight: uint64(cfg.L1MaxBytes),
		Weigher:       func(_ key, e *entry) uint32 { return e.weight },
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[key, *entry]) time.Duration {
			return e.Value.keep
		}),
		// The clock never ticks, so otter starts no clean-up goroutine;
		// expired entries go during the maintenance that writes and reads do.
		Clock: otterClock{now: cfg.Now},
		// Maintenance runs on the calling goroutine: no goroutine outlives
		// a call. No Compute or deletion listener is used, so this is safe.
		Executor: func(fn func()) { fn() },
		Logger:   otterLogger{c.log},
	})
	if err != nil {
		c.cancel()
		return nil, fmt.Errorf("contextcache: L1: %w", err)
	}
	if cfg.RetrySourceAfter > 0 {
		c.fails, err = otter.New(&otter.Options[key, *failure]{
			MaximumSize:      maxFailures,
			ExpiryCalculator: otter.ExpiryWriting[key, *failure](cfg.RetrySourceAfter),
			Clock:            otterClock{now: cfg.Now},
			Executor:         func(fn func()) { fn() },
			Logger:           otterLogger{c.log},
		})
		if err != nil {
			c.cancel()
			c.l1.StopAllGoroutines()
			return nil, fmt.Errorf("contextcache: failure memory: %w", err)
		}
	}
	if cfg.Registerer != nil {
		o := prom.Opts{Registerer: cfg.Registerer, Namespace: cfg.Namespace, ConstLabels: cfg.ConstLabels}
		if c.metrics, err = prom.Register(pkg, cfg.Registerer, newCollector(c, o)); err != nil {
			c.cancel()
			c.stopL1()
			return nil, err
		}
	}
	return c, nil
}

// Get returns the transcript of videoURL in courseID.
//
// A fresh L1 copy is returned with no I/O and no allocation. Otherwise the
// callers in this process share one load, which reads L2, or takes the
// cluster lock and calls the Source, or waits for the instance holding the
// lock. Get returns an error wrapping ErrNotFound when the Source has no
// transcript (remembered for NegativeTTL), a *chatscale.InputError (Field
// "CourseID" or "VideoURL") for IDs that cannot name one, the Source's
// error wrapping chatscale.ErrInvalidInput when it refuses them, and a
// *LoadError, matching ErrUnavailable, when the Source failed and no copy
// is at hand; when an expired copy is at hand it is returned with Stale set
// instead. For RetrySourceAfter after such a failure, misses of the same
// transcript get that answer without calling the Source. A Redis failure,
// or a Redis call unanswered after Config.RedisTimeout, does not fail a
// Get: it goes to the Source. When ctx ends
// first, Get returns ctx.Err() and the shared load goes on for the other
// callers. After Close, misses return ErrClosed.
// Get is safe for concurrent use.
func (c *Cache) Get(ctx context.Context, courseID, videoURL string) (Result, error) {
	k := key{course: courseID, video: videoURL}
	// The entry's snapshot time is the clock reading otter took for this
	// lookup: one clock read per hit.
	if ent, ok := c.l1.GetEntry(k); ok && ent.SnapshotAtNano < ent.Value.freshUntil {
		e := ent.Value
		if e.notFound {
			c.st.negativeHits.Add(1)
			return Result{}, ErrNotFound
		}
		c.st.l1Hits.Add(1)
		return Result{Document: e.doc, Tier: TierL1}, nil
	}
	if err := checkKey(courseID, videoURL); err != nil {
		return Result{}, err
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err // no load for a caller that has left
	}
	c.st.misses.Add(1)
	ch := c.flight.DoChan(flightKey(k), func() (any, error) { return c.load(k) })
	select {
	case r := <-ch:
		if r.Err != nil {
			return Result{}, r.Err
		}
		return r.Val.(Result), nil
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
}

// load runs once per flight: it fetches the transcript from L2 or the
// Source, stores it in L1 and falls back to a stale copy on failure.
func (c *Cache) load(k key) (Result, error) {
	if !c.enter() {
		return Result{}, ErrClosed
	}
	defer c.wg.Done()
	stripe := &c.epochs[maphash.Comparable(c.seed, k)%uint64(len(c.epochs))]
	epoch := stripe.Load()
	// A flight that ended just before this one began may have filled L1.
	if e, ok := c.l1.GetIfPresent(k); ok && c.nowNano() < e.freshUntil {
		if e.notFound {
			return Result{}, ErrNotFound
		}
		return Result{Document: e.doc, Tier: TierL1}, nil
	}
	// The Source failed for k a moment ago: answer from what is at hand.
	if f := c.recentFailure(k); f != nil {
		c.st.sourceSkips.Add(1)
		return c.fallback(stripe, epoch, k, c.nowNano(), "", f.err)
	}

	doc, tier, staleL2, err := c.fetch(k)
	now := c.nowNano()
	switch {
	case err == nil:
		c.clearFailure(k)
		e := &entry{doc: doc, freshUntil: now + int64(c.cfg.L1TTL), keep: addSat(c.cfg.L1TTL, max(0, c.cfg.MaxStale))}
		e.weight = weigh(&e.doc)
		c.store(stripe, epoch, k, e)
		return Result{Document: doc, Tier: tier}, nil
	case errors.Is(err, ErrNotFound):
		c.clearFailure(k)
		if c.cfg.NegativeTTL > 0 {
			c.store(stripe, epoch, k, &entry{
				notFound:   true,
				freshUntil: now + int64(c.cfg.NegativeTTL),
				keep:       c.cfg.NegativeTTL,
				weight:     uint32(entryOverhead + len(k.course) + len(k.video)),
			})
		}
		return Result{}, err
	case errors.Is(err, chatscale.ErrInvalidInput):
		return Result{}, err
	case c.base.Err() != nil:
		return Result{}, ErrClosed
	}
	if c.fails != nil {
		c.fails.Set(k, &failure{err: err, until: now + int64(c.cfg.RetrySourceAfter)})
	}
	return c.fallback(stripe, epoch, k, now, staleL2, err)
}

// fallback answers a miss of k that the Source could not serve because of
// err: with a stale copy from L1, else with staleL2 (the expired L2 value
// seen by the load, if any), else with a *LoadError.
func (c *Cache) fallback(stripe *atomic.Uint64, epoch uint64, k key, now int64, staleL2 string, err error) (Result, error) {
	if c.cfg.MaxStale > 0 {
		if e, ok := c.l1.GetIfPresent(k); ok && !e.notFound && now-e.freshUntil < int64(c.cfg.MaxStale) {
			return c.serveStale(k, e.doc, TierL1, e.freshUntil, now, err), nil
		}
		// A copy that expired in L2 serves an instance that never had one,
		// such as one started during the outage. It is kept in L1, expired,
		// for the rest of its stale window, so that the next misses find it
		// there.
		if staleL2 != "" {
			fresh, enc, derr := splitFreshness(staleL2)
			freshUntil := fresh * int64(time.Millisecond)
			if derr == nil && now-freshUntil < int64(c.cfg.MaxStale) {
				if d, found, derr := decode(enc, k.course, k.video); derr == nil && found {
					keep := c.cfg.MaxStale - time.Duration(max(0, now-freshUntil))
					e := &entry{doc: d, freshUntil: freshUntil, keep: keep}
					e.weight = weigh(&e.doc)
					c.store(stripe, epoch, k, e)
					return c.serveStale(k, d, TierL2, freshUntil, now, err), nil
				}
			}
		}
	}
	return Result{}, &LoadError{CourseID: k.course, VideoURL: k.video, Err: err}
}

// recentFailure returns the Source failure of k that is less than
// RetrySourceAfter old, or nil.
func (c *Cache) recentFailure(k key) *failure {
	if c.fails == nil {
		return nil
	}
	if f, ok := c.fails.GetIfPresent(k); ok && c.nowNano() < f.until {
		return f
	}
	return nil
}

// clearFailure forgets the Source failure of k, if any.
func (c *Cache) clearFailure(k key) {
	if c.fails != nil {
		c.fails.Invalidate(k)
	}
}

// serveStale returns d, whose freshness ended at freshUntil (Unix
// nanoseconds), as a stale copy served because the Source failed with err.
func (c *Cache) serveStale(k key, d Document, tier Tier, freshUntil, now int64, err error) Result {
	c.st.staleServes.Add(1)
	c.log.Warn("contextcache: serving a stale transcript", "course", k.course, "video", k.video,
		"tier", tier.String(), "stale_for", time.Duration(now-freshUntil), "err", err)
	return Result{Document: d, Tier: tier, Stale: true, LoadErr: err}
}

// store puts e in L1 unless the key's stripe was invalidated since epoch.
// An invalidation that lands between the check and the write removes e
// again: drop bumps the epoch before it removes the key, so either its
// removal comes after the write or the second check sees the new epoch.
func (c *Cache) store(stripe *atomic.Uint64, epoch uint64, k key, e *entry) {
	if stripe.Load() != epoch {
		return
	}
	c.l1.Set(k, e)
	if stripe.Load() != epoch {
		c.l1.Invalidate(k)
	}
}

// fetch returns the transcript from a fresh L2 copy, or loads it from the
// Source under the cluster lock, or waits for the instance holding the
// lock. stale is the expired L2 value seen on the way, if any, for
// stale-if-error.
func (c *Cache) fetch(k key) (d Document, tier Tier, stale string, err error) {
	if c.rdb == nil {
		d, err := c.loadSource(k)
		return d, TierSource, "", err
	}
	vk, lk := c.redisKeys(k)
	token := newToken()
	lockTTL := millis(c.cfg.LockTTL)
	var deadline int64
	waiting := false
	poll := minPoll
	for {
		nowMs := c.nowNano() / int64(time.Millisecond)
		res, err := rediscall.Do(c.base, c.bound, func(ctx context.Context) (any, error) {
			return getOrLock.Run(ctx, c.rdb, []string{vk, lk}, token, lockTTL, nowMs).Result()
		})
		if err != nil {
			if c.base.Err() != nil {
				return Document{}, 0, "", ErrClosed
			}
			c.redisFailed("read L2", err)
			d, err := c.loadSource(k) // no L2 write while Redis fails
			return d, TierSource, "", err
		}
		locked := false
		switch v := res.(type) {
		case string: // a fresh copy
			_, enc, err := splitFreshness(v)
			var found bool
			if err == nil {
				d, found, err = decode(enc, k.course, k.video)
			}
			if err != nil {
				c.st.corruptL2.Add(1)
				c.log.Warn("contextcache: unreadable L2 value", "key", vk)
				d, tier, err := c.loadAndFill(k, vk, lk, token, false)
				return d, tier, "", err
			}
			c.st.l2Hits.Add(1)
			if !found {
				c.st.negativeHits.Add(1)
				return Document{}, TierL2, "", ErrNotFound
			}
			return d, TierL2, "", nil
		case []any: // no fresh copy: {expired copy or nil, lock taken}
			if len(v) != 2 {
				c.redisFailed("read L2", fmt.Errorf("unexpected reply of %d elements", len(v)))
				d, err := c.loadSource(k)
				return d, TierSource, "", err
			}
			if s, ok := v[0].(string); ok {
				stale = s
			}
			locked = v[1] == int64(1)
		default:
			c.redisFailed("read L2", fmt.Errorf("unexpected reply %T", res))
			d, err := c.loadSource(k)
			return d, TierSource, "", err
		}
		if locked {
			d, tier, err := c.loadAndFill(k, vk, lk, token, true)
			return d, tier, stale, err
		}
		// Another instance holds the lock: poll until it fills L2 or the
		// wait runs out.
		now := c.nowNano()
		if !waiting {
			waiting = true
			deadline = now + int64(c.cfg.LockWait)
			c.st.lockWaits.Add(1)
		}
		if c.cfg.LockWait <= 0 || now >= deadline {
			c.st.lockTimeouts.Add(1)
			d, tier, err := c.loadAndFill(k, vk, lk, token, false)
			return d, tier, stale, err
		}
		if err := c.sleep(c.base, min(poll, time.Duration(deadline-now))); err != nil {
			return Document{}, 0, "", ErrClosed
		}
		poll = min(2*poll, maxPoll)
	}
}

// loadAndFill loads from the Source, then writes L2 and releases the lock
// (if token holds it) in one script. A transcript stays in L2 for its
// freshness (L2TTL plus jitter) and then MaxStale longer, for
// stale-if-error; a not-found marker for NegativeTTL. held says that token
// took the lock: then L2 is written only if token still holds it, so that
// a load that an Invalidate (which deletes the lock) overtook does not put
// the old transcript back.
func (c *Cache) loadAndFill(k key, vk, lk, token string, held bool) (Document, Tier, error) {
	d, err := c.loadSource(k)
	now := c.nowNano()
	var (
		val        []byte
		fresh, ttl time.Duration
	)
	switch {
	case err == nil:
		fresh = c.l2TTL()
		ttl = addSat(fresh, max(0, c.cfg.MaxStale))
		val = encodeDocument(&d, c.cfg.CompressAbove)
	case errors.Is(err, ErrNotFound) && c.cfg.NegativeTTL > 0:
		fresh, ttl = c.cfg.NegativeTTL, c.cfg.NegativeTTL
		val = encodeNotFound(k.course, k.video)
	}
	var ms int64
	if ttl > 0 {
		ms = millis(ttl)
		val = withFreshness((now+int64(fresh))/int64(time.Millisecond), val)
	}
	// The lock is released even when Close is under way, within the bound.
	_, ferr := rediscall.Do(context.WithoutCancel(c.base), c.bound, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, fill.Run(ctx, c.rdb, []string{vk, lk}, token, val, ms, held).Err()
	})
	if ferr != nil {
		c.redisFailed("write L2", ferr)
	}
	return d, TierSource, err
}

func (c *Cache) loadSource(k key) (Document, error) {
	ctx := c.base
	if c.cfg.LoadTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.LoadTimeout)
		defer cancel()
	}
	c.st.loads.Add(1)
	d, err := c.src.Load(ctx, k.course, k.video)
	if err != nil {
		switch {
		case errors.Is(err, ErrNotFound):
			c.st.notFound.Add(1)
		case errors.Is(err, chatscale.ErrInvalidInput):
		default:
			c.st.loadErrors.Add(1)
			if c.base.Err() == nil {
				c.log.Warn("contextcache: source failed", "course", k.course, "video", k.video, "err", err)
			}
		}
		return Document{}, err
	}
	// The caches are keyed by the IDs the caller asked for.
	d.CourseID, d.VideoURL = k.course, k.video
	return d, nil
}

// Invalidate drops the transcript of videoURL in courseID from this
// instance's L1 and from L2, and tells every started instance to drop its
// L1 copy. Instances that miss the message converge within L1TTL. A Get
// that starts after Invalidate returns does not see the old copy on this
// instance. Invalidate returns a *chatscale.InputError for bad IDs, an
// error wrapping ErrUnavailable when Redis fails or does not answer
// within Config.RedisTimeout (the local copy is dropped anyway) and ctx's
// error when ctx ends first.
func (c *Cache) Invalidate(ctx context.Context, courseID, videoURL string) error {
	if err := checkKey(courseID, videoURL); err != nil {
		return err
	}
	k := key{course: courseID, video: videoURL}
	c.drop(k)
	c.st.invalidations.Add(1)
	if c.rdb == nil {
		return nil
	}
	// The lock goes too: a load under it that began before this call
	// then writes nothing to L2 (see fill.lua).
	vk, lk := c.redisKeys(k)
	if _, err := rediscall.Do(ctx, c.bound, func(ctx context.Context) (int64, error) {
		return c.rdb.Del(ctx, vk, lk).Result()
	}); err != nil {
		return c.redisError(ctx, "invalidate", err)
	}
	if _, err := rediscall.Do(ctx, c.bound, func(ctx context.Context) (int64, error) {
		return c.rdb.Publish(ctx, c.channel, encodeInvalidation(k)).Result()
	}); err != nil {
		return c.redisError(ctx, "publish invalidation", err)
	}
	return nil
}

// drop removes k from L1, keeps running loads from storing it, and makes
// later Gets start a new load rather than join a running one.
func (c *Cache) drop(k key) {
	c.epochs[maphash.Comparable(c.seed, k)%uint64(len(c.epochs))].Add(1)
	c.flight.Forget(flightKey(k))
	c.l1.Invalidate(k)
	c.clearFailure(k)
}

// Start subscribes this instance to the invalidation messages of the other
// instances and starts the goroutine that applies them; Close stops it.
// Without Start, copies dropped elsewhere live here until L1TTL ends.
// Start sends the subscription and waits for Redis to confirm it, each
// within Config.RedisTimeout (the confirmation within 5 s when that is
// negative); if that fails it returns an error wrapping ErrUnavailable
// (ctx's error when ctx ended first), and the subscriber keeps retrying
// in the background (go-redis resubscribes after every reconnection).
// Start does nothing without Redis or when already started, and returns
// ErrClosed after Close.
func (c *Cache) Start(ctx context.Context) error {
	if c.rdb == nil {
		return nil
	}
	c.startMu.Lock()
	defer c.startMu.Unlock()
	c.mu.RLock()
	closed := c.closed
	c.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if c.ps != nil {
		return nil
	}
	// Without channels Subscribe does no I/O; the SUBSCRIBE is sent within
	// the bound, then its confirmation is read within the same time.
	ps := c.rdb.Subscribe(ctx)
	c.ps = ps
	_, err := rediscall.Do(ctx, c.bound, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, ps.Subscribe(ctx, c.channel)
	})
	if err == nil {
		confirm := c.bound.Timeout()
		if confirm <= 0 {
			confirm = subscribeTimeout
		}
		_, err = ps.ReceiveTimeout(ctx, confirm)
	}
	msgs := ps.Channel()
	c.wg.Add(1)
	go c.listen(msgs)
	if err != nil {
		return c.redisError(ctx, "subscribe "+c.channel+" (retrying in the background)", err)
	}
	return nil
}

// LoadScripts loads the Cache's Lua scripts into the script cache of every
// server the client reaches: every node of a Cluster (go-redis sends SCRIPT
// LOAD to every master and replica), every shard of a Ring, the master of
// a Sentinel failover client. Calling it at startup is optional: without
// it, the first run of each script on each server costs one more round
// trip (EVALSHA answered NOSCRIPT, then EVAL), after a restart or a
// failover too. It does nothing without Redis. It returns an error
// wrapping ErrUnavailable when a server fails, ctx's error when ctx ends
// first, and ErrClosed after Close.
func (c *Cache) LoadScripts(ctx context.Context) error {
	if c.rdb == nil {
		return nil
	}
	c.mu.RLock()
	closed := c.closed
	c.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	_, err := rediscall.Do(ctx, c.bound, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, scripts.Load(ctx, c.rdb, luaScripts...)
	})
	if err != nil {
		return c.redisError(ctx, "loading scripts", err)
	}
	return nil
}

// redisError counts and logs a failed Redis call of a method and returns
// its error: ctx's error, wrapped, when ctx ended; else an error wrapping
// ErrUnavailable and err.
func (c *Cache) redisError(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("contextcache: %s: %w", op, ctx.Err())
	}
	if err == context.Canceled || err == context.DeadlineExceeded {
		// rediscall.Do saw ctx's deadline pass a moment before ctx.Err.
		return fmt.Errorf("contextcache: %s: %w", op, err)
	}
	c.redisFailed(op, err)
	return fmt.Errorf("contextcache: %s: %w: %w", op, ErrUnavailable, err)
}

func (c *Cache) listen(msgs <-chan *redis.Message) {
	defer c.wg.Done()
	for m := range msgs {
		k, ok := decodeInvalidation(m.Payload)
		if !ok {
			c.log.Warn("contextcache: unreadable invalidation message", "channel", m.Channel)
			continue
		}
		c.drop(k)
		c.st.invalidationsReceived.Add(1)
	}
}

// Close stops the subscriber, cancels the running loads and waits for
// them; Gets waiting for those loads get ErrClosed. L1 hits keep working.
// Close unregisters the metrics and does not close the Redis client.
// It is idempotent and returns nil.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()

	c.startMu.Lock()
	if c.ps != nil {
		_ = c.ps.Close()
	}
	c.startMu.Unlock()
	c.cancel()
	c.wg.Wait()
	c.stopL1()
	c.metrics.Unregister()
	return nil
}

// stopL1 stops the in-process caches' goroutines, if any.
func (c *Cache) stopL1() {
	c.l1.StopAllGoroutines()
	if c.fails != nil {
		c.fails.StopAllGoroutines()
	}
}

// enter registers a running load unless the Cache is closed.
func (c *Cache) enter() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	return true
}

// Stats is a snapshot of a Cache's counters since New.
type Stats struct {
	// L1Hits counts Gets answered by a fresh L1 copy; L2Hits counts loads
	// answered by L2 (a load shared by several Gets counts once).
	L1Hits, L2Hits uint64
	// NegativeHits counts not-found answers taken from L1 or L2.
	NegativeHits uint64
	// Misses counts Gets that found no fresh L1 copy.
	Misses uint64
	// Loads counts calls of Source.Load; LoadErrors those that failed with
	// an error other than ErrNotFound or chatscale.ErrInvalidInput;
	// NotFound those that answered ErrNotFound.
	Loads, LoadErrors, NotFound uint64
	// StaleServes counts stale copies served because the Source failed.
	StaleServes uint64
	// SourceSkips counts loads answered without calling the Source because
	// it failed for the same transcript less than RetrySourceAfter ago
	// (with a stale copy, also counted in StaleServes, or a *LoadError).
	SourceSkips uint64
	// LockWaits counts loads that waited for another instance's lock;
	// LockTimeouts those that stopped waiting and loaded themselves.
	LockWaits, LockTimeouts uint64
	// RedisErrors counts failed Redis calls; CorruptL2 unreadable values.
	RedisErrors, CorruptL2 uint64
	// Invalidations counts Invalidate calls here; InvalidationsReceived
	// the messages applied by the subscriber (this instance's own too).
	Invalidations, InvalidationsReceived uint64
	// L1Entries and L1Bytes estimate what L1 holds now.
	L1Entries int
	L1Bytes   uint64
}

// Stats returns a snapshot of the counters. It is cheap and safe for
// concurrent use.
func (c *Cache) Stats() Stats {
	return Stats{
		L1Hits:                c.st.l1Hits.Load(),
		L2Hits:                c.st.l2Hits.Load(),
		NegativeHits:          c.st.negativeHits.Load(),
		Misses:                c.st.misses.Load(),
		Loads:                 c.st.loads.Load(),
		LoadErrors:            c.st.loadErrors.Load(),
		NotFound:              c.st.notFound.Load(),
		StaleServes:           c.st.staleServes.Load(),
		SourceSkips:           c.st.sourceSkips.Load(),
		LockWaits:             c.st.lockWaits.Load(),
		LockTimeouts:          c.st.lockTimeouts.Load(),
		RedisErrors:           c.st.redisErrors.Load(),
		CorruptL2:             c.st.corruptL2.Load(),
		Invalidations:         c.st.invalidations.Load(),
		InvalidationsReceived: c.st.invalidationsReceived.Load(),
		L1Entries:             c.l1.EstimatedSize(),
		L1Bytes:               c.l1.WeightedSize(),
	}
}

func (c *Cache) redisFailed(op string, err error) {
	c.st.redisErrors.Add(1)
	c.log.Warn("contextcache: redis failed", "op", op, "err", err)
}

func (c *Cache) nowNano() int64 { return c.cfg.Now().UnixNano() }

func (c *Cache) l2TTL() time.Duration {
	if c.cfg.L2Jitter <= 0 {
		return c.cfg.L2TTL
	}
	return c.cfg.L2TTL + mrand.N(c.cfg.L2Jitter)
}

// redisKeys is the package's key builder: the value and lock keys of k
// share the hash tag of k's digest, so they live in one Cluster slot.
func (c *Cache) redisKeys(k key) (value, lock string) {
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(k.course)))])
	h.Write([]byte(k.course))
	h.Write([]byte(k.video))
	sum := h.Sum(nil)
	base := c.keyPrefix + "{" + hex.EncodeToString(sum[:16]) + "}:"
	return base + "doc", base + "lock"
}

func flightKey(k key) string {
	return strconv.Itoa(len(k.course)) + ":" + k.course + k.video
}

func encodeInvalidation(k key) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(k.course)+len(k.video))
	b = append(b, codecVersion)
	b = binary.AppendUvarint(b, uint64(len(k.course)))
	b = append(b, k.course...)
	return append(b, k.video...)
}

func decodeInvalidation(p string) (key, bool) {
	if len(p) < 1 || p[0] != codecVersion {
		return key{}, false
	}
	n, w := binary.Uvarint([]byte(p[1:min(len(p), 1+binary.MaxVarintLen64)]))
	if w <= 0 || n > uint64(len(p)-1-w) {
		return key{}, false
	}
	rest := p[1+w:]
	return key{course: rest[:n], video: rest[n:]}, true
}

// entryOverhead approximates the memory of an entry besides its strings.
const entryOverhead = 256

// weigh estimates the bytes an L1 entry holding d takes.
func weigh(d *Document) uint32 {
	n := entryOverhead + len(d.CourseID) + len(d.VideoURL) + len(d.Title) + len(d.Text)
	for i := range d.Segments {
		n += 40 + len(d.Segments[i].Text)
	}
	if n > 1<<32-1 {
		return 1<<32 - 1
	}
	return uint32(n)
}

func millis(d time.Duration) int64 { return max(1, d.Milliseconds()) }

// addSat returns a+b for non-negative a and b, or the longest Duration
// when the sum overflows.
func addSat(a, b time.Duration) time.Duration {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// otterClock gives otter the Cache's clock. Its ticks are nil: otter then
// runs no periodic clean-up goroutine.
type otterClock struct{ now func() time.Time }

func (c otterClock) NowNano() int64                    { return c.now().UnixNano() }
func (otterClock) Tick(time.Duration) <-chan time.Time { return nil }

type otterLogger struct{ log *slog.Logger }

func (l otterLogger) Warn(ctx context.Context, msg string, err error) {
	l.log.WarnContext(ctx, "contextcache: L1: "+msg, "err", err)
}

func (l otterLogger) Error(ctx context.Context, msg string, err error) {
	l.log.ErrorContext(ctx, "contextcache: L1: "+msg, "err", err)
}
