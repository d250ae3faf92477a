package chat

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/chatscale/chatscale/internal/rediscall"
	"github.com/chatscale/chatscale/internal/scripts"
)

var (
	//go:embed extend.lua
	extendSrc    string
	extendScript = redis.NewScript(extendSrc)
	//go:embed close.lua
	closeSrc    string
	closeScript = redis.NewScript(closeSrc)
	//go:embed lease.lua
	leaseSrc    string
	leaseScript = redis.NewScript(leaseSrc)

	luaScripts = []*redis.Script{extendScript, closeScript, leaseScript}
)

// stateKey and leaseKey are the Client's Redis keys:
// <Prefix>chat:{<Name>}:breaker and <Prefix>chat:{<Name>}:probe. Both
// share the hash tag {<Name>}, so the scripts work on Redis Cluster. The
// Service's answer cache has keys of its own (answers.go).
func stateKey(prefix, name string) string { return prefix + "chat:{" + name + "}:breaker" }
func leaseKey(prefix, name string) string { return prefix + "chat:{" + name + "}:probe" }

// LoadScripts loads the breaker's Lua scripts into the script cache of
// every server the Config.Redis client reaches: every node of a Redis
// Cluster (masters and replicas) and every shard of a Ring, the one
// server otherwise, and reads the breaker's shared state once. Calling
// it at startup is optional: without it, the first run of each script on
// each server costs one more round trip (EVALSHA answered NOSCRIPT, then
// EVAL), after a restart or a failover too, and the first call waits for
// the first read of the shared state. Without Redis it does nothing. It
// returns ctx's error when ctx ends, else the first error Redis answers,
// or a *rediscall.TimeoutError (matching context.DeadlineExceeded) when
// Redis does not answer within Config.RedisTimeout.
func (c *Client) LoadScripts(ctx context.Context) error {
	if c.cfg.Redis == nil {
		return nil
	}
	_, err := rediscall.Do(ctx, rediscall.New(c.cfg.RedisTimeout), func(ctx context.Context) (struct{}, error) {
		return struct{}{}, scripts.Load(ctx, c.cfg.Redis, luaScripts...)
	})
	if err == nil && !c.br.cache.Load().loaded {
		c.br.firstLoad(ctx, c.nowMs())
	}
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	default:
		return fmt.Errorf("chat: loading scripts: %w", err)
	}
}

// cachedState is a sharedState and when it was loaded (ms).
type cachedState struct {
	st      sharedState
	fetched int64
	loaded  bool // a read of the store has ended (fetched is set)
}

// sharedState is the breaker state every instance sees. Times are ms
// since the epoch on the callers' clocks; zero means unset.
type sharedState struct {
	until  int64 // open until; non-zero and past means half-open
	reason string
	pause  int64 // adaptive pause until
}

// tripStore keeps sharedState: in Redis, or in process.
type tripStore interface {
	load(ctx context.Context) (sharedState, error)
	// extend moves field ("until" or "pause") to deadline if later, and
	// releases holder's lease when holder is not "".
	extend(ctx context.Context, field string, deadline int64, reason string, ttl time.Duration, holder string) (sharedState, error)
	// lease takes the half-open probe lease for holder if the state still
	// holds until; it returns whether it did and the state it found.
	lease(ctx context.Context, holder string, ttl time.Duration, now, until int64) (bool, sharedState, error)
	// close clears "until" if it still equals until, and releases
	// holder's lease.
	close(ctx context.Context, until int64, holder string) (bool, error)
}

// redisTrips keeps sharedState in Redis. Each call returns by the
// earlier of bound (Config.RedisTimeout) and its ctx's deadline (the
// breaker's calls carry one of RedisTimeout, see storeCtx), whatever the
// client's timeouts, with an error when Redis has not answered by then.
type redisTrips struct {
	rdb            redis.UniversalClient
	bound          rediscall.Bound
	stateK, leaseK string
}

func (s *redisTrips) load(ctx context.Context) (sharedState, error) {
	v, err := rediscall.Do(ctx, s.bound, func(ctx context.Context) ([]any, error) {
		return s.rdb.HMGet(ctx, s.stateK, "until", "reason", "pause").Result()
	})
	if err != nil {
		return sharedState{}, err
	}
	return parseState(v), nil
}

func (s *redisTrips) extend(ctx context.Context, field string, deadline int64, reason string, ttl time.Duration, holder string) (sharedState, error) {
	v, err := rediscall.Do(ctx, s.bound, func(ctx context.Context) ([]any, error) {
		return extendScript.Run(ctx, s.rdb, []string{s.stateK, s.leaseK},
			field, deadline, reason, max(ttl.Milliseconds(), 1), holder).Slice()
	})
	if err != nil {
		return sharedState{}, err
	}
	return parseState(v), nil
}

func (s *redisTrips) lease(ctx context.Context, holder string, ttl time.Duration, _, until int64) (bool, sharedState, error) {
	v, err := rediscall.Do(ctx, s.bound, func(ctx context.Context) ([]any, error) {
		return leaseScript.Run(ctx, s.rdb, []string{s.stateK, s.leaseK}, until, holder, max(ttl.Milliseconds(), 1)).Slice()
	})
	if err != nil || len(v) == 0 {
		return false, sharedState{}, err
	}
	won, _ := v[0].(int64)
	return won == 1, parseState(v[1:]), nil
}

func (s *redisTrips) close(ctx context.Context, until int64, holder string) (bool, error) {
	n, err := rediscall.Do(ctx, s.bound, func(ctx context.Context) (int, error) {
		return closeScript.Run(ctx, s.rdb, []string{s.stateK, s.leaseK}, until, holder).Int()
	})
	return n == 1, err
}

func parseState(v []any) sharedState {
	var st sharedState
	field := func(i int) string {
		if i < len(v) {
			if s, ok := v[i].(string); ok {
				return s
			}
		}
		return ""
	}
	st.until, _ = strconv.ParseInt(field(0), 10, 64)
	st.reason = field(1)
	st.pause, _ = strconv.ParseInt(field(2), 10, 64)
	return st
}

// memTrips is the in-process tripStore used without Redis.
type memTrips struct {
	mu          sync.Mutex
	st          sharedState
	holder      string
	leaseExpiry int64
}

func (m *memTrips) load(context.Context) (sharedState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st, nil
}

func (m *memTrips) extend(_ context.Context, field string, deadline int64, reason string, _ time.Duration, holder string) (sharedState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch field {
	case "until":
		if deadline > m.st.until {
			m.st.until = deadline
			if reason != "" {
				m.st.reason = reason
			}
		}
	case "pause":
		m.st.pause = max(m.st.pause, deadline)
	}
	if holder != "" && m.holder == holder {
		m.holder = ""
	}
	return m.st, nil
}

func (m *memTrips) lease(_ context.Context, holder string, ttl time.Duration, now, until int64) (bool, sharedState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.st.until != until || (m.holder != "" && now < m.leaseExpiry) {
		return false, m.st, nil
	}
	m.holder, m.leaseExpiry = holder, now+ttl.Milliseconds()
	return true, m.st, nil
}

func (m *memTrips) close(_ context.Context, until int64, holder string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	closed := false
	if until != 0 && m.st.until == until {
		m.st.until, m.st.reason = 0, ""
		closed = true
	}
	if m.holder == holder {
		m.holder = ""
	}
	return closed, nil
}

// Marks passed to gobreaker's done func.
var (
	errBreakerFailure  = errors.New("chat: attempt failed")
	errBreakerExcluded = errors.New("chat: attempt excluded")
)

// breaker combines a per-process gobreaker, which counts outcomes and
// decides when to trip, with the shared open/half-open state.
type breaker struct {
	c        *Client
	store    tripStore
	shared   bool // store is Redis: cache its state
	holder   string
	settings gobreaker.Settings
	cb       atomic.Pointer[gobreaker.TwoStepCircuitBreaker[struct{}]]

	pendingTrip atomic.Bool
	tripReason  atomic.Value // string

	// cache is the shared state as last seen, read without a lock on
	// every call; mu serialises its writers and gen counts local writes,
	// so that a slower load does not undo them.
	cache atomic.Pointer[cachedState]
	mu    sync.Mutex
	gen   uint64

	// refreshing is set while a read of the store runs; bg guards the
	// goroutine that runs it.
	refreshing atomic.Bool
	bg         struct {
		sync.Mutex
		running chan struct{} // closed when the running background read ends; nil when none runs
		first   chan struct{} // closed when the first read ends; nil before it starts
		closed  bool          // Close was called: reads run in the callers
	}

	probing    atomic.Bool  // a goroutine of this process holds or seeks the lease
	leaseRetry atomic.Int64 // ms before which this process does not ask for the lease
}

func newBreaker(c *Client, store tripStore, shared bool, holder string) *breaker {
	cfg := c.cfg
	b := &breaker{c: c, store: store, shared: shared, holder: holder}
	ratio, minReq := cfg.BreakerRatio, cfg.BreakerMinRequests
	b.settings = gobreaker.Settings{
		Name:         cfg.Name,
		MaxRequests:  1,
		Interval:     cfg.BreakerWindow,
		BucketPeriod: cfg.BreakerWindow / 10,
		Timeout:      cfg.OpenFor,
		ReadyToTrip: func(n gobreaker.Counts) bool {
			total := n.TotalFailures + n.TotalSuccesses
			return minReq >= 0 && total >= uint32(minReq) && total > 0 &&
				float64(n.TotalFailures) >= ratio*float64(total)
		},
		IsSuccessful: func(err error) bool { return err == nil },
		IsExcluded:   func(err error) bool { return errors.Is(err, errBreakerExcluded) },
		OnStateChange: func(_ string, _, to gobreaker.State) {
			// Runs under gobreaker's lock: only flag it; the goroutine
			// whose outcome tripped it publishes the trip.
			if to == gobreaker.StateOpen {
				b.pendingTrip.Store(true)
			}
		},
	}
	b.tripReason.Store("")
	b.cache.Store(&cachedState{})
	b.resetLocal()
	return b
}

// resetLocal replaces the gobreaker with a fresh, closed one. After a trip
// is published, the shared state decides open and half-open; the local
// breaker starts counting again from zero.
func (b *breaker) resetLocal() {
	b.cb.Store(gobreaker.NewTwoStepCircuitBreaker[struct{}](b.settings))
}

// storeCtx bounds a store call by RedisTimeout (none when it is
// negative) and detaches it from the caller's cancellation, so that a
// trip or a probe outcome is recorded even when the caller has gone.
func (b *breaker) storeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return withTimeout(context.WithoutCancel(ctx), b.c.cfg.RedisTimeout)
}

// withTimeout is context.WithTimeout for a positive d, and ctx with a
// no-op cancel otherwise (Config.RedisTimeout: no bound of its own).
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

// snapshot returns the shared state at now (ms) as this process last saw
// it, stale while it revalidates: when the cache is older than
// RefreshEvery, one goroutine reads Redis in the background (one at a
// time), and every call meanwhile, the one that started it included,
// uses the cache. Only before the first read has ended do callers wait
// for it (one read for all of them, within RedisTimeout and their ctx).
// After Close the read is made by the caller that finds the cache stale,
// as it was before the background read. Without Redis the cache is the
// state: this process is its only writer.
func (b *breaker) snapshot(ctx context.Context, now int64) sharedState {
	e := b.cache.Load()
	if !b.shared {
		return e.st
	}
	if !e.loaded {
		return b.firstLoad(ctx, now)
	}
	stale := now-e.fetched >= b.c.cfg.RefreshEvery.Milliseconds() || now < e.fetched
	if !stale || !b.refreshing.CompareAndSwap(false, true) {
		return e.st
	}
	b.bg.Lock()
	if b.bg.closed {
		b.bg.Unlock()
		defer b.refreshing.Store(false)
		sctx, cancel := b.storeCtx(ctx)
		defer cancel()
		return b.refresh(sctx, now)
	}
	done := make(chan struct{})
	b.bg.running = done
	b.bg.Unlock()
	go func() {
		sctx, cancel := b.storeCtx(context.Background())
		b.refresh(sctx, now)
		cancel()
		b.bg.Lock()
		b.bg.running = nil
		b.bg.Unlock()
		b.refreshing.Store(false)
		close(done)
	}()
	return e.st
}

// firstLoad reads the shared state for the first time, or waits, within
// ctx, for the first read another caller runs.
func (b *breaker) firstLoad(ctx context.Context, now int64) sharedState {
	b.bg.Lock()
	first := b.bg.first
	if first == nil {
		first = make(chan struct{})
		b.bg.first = first
		b.bg.Unlock()
		b.refreshing.Store(true)
		sctx, cancel := b.storeCtx(ctx)
		st := b.refresh(sctx, now)
		cancel()
		b.refreshing.Store(false)
		close(first)
		return st
	}
	b.bg.Unlock()
	select {
	case <-first:
	case <-ctx.Done():
	}
	return b.cache.Load().st
}

// refresh reads the shared state into the cache, stamped now (ms), and
// returns the cached state. A local write made while it read (gen moved)
// wins over what it read.
func (b *breaker) refresh(ctx context.Context, now int64) sharedState {
	b.mu.Lock()
	gen := b.gen
	b.mu.Unlock()
	fresh, err := b.store.load(ctx)
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.cache.Load()
	next := &cachedState{st: cur.st, fetched: now, loaded: true}
	if err != nil {
		b.c.storeError("load", err)
	} else if b.gen == gen {
		next.st = fresh
	}
	b.cache.Store(next)
	return next.st
}

// refreshed returns a channel closed when the background read running
// now ends, or nil when none runs.
func (b *breaker) refreshed() <-chan struct{} {
	b.bg.Lock()
	defer b.bg.Unlock()
	if b.bg.running == nil {
		return nil
	}
	return b.bg.running
}

// close waits for a background read that runs and makes later reads run
// in the callers.
func (b *breaker) close() {
	b.bg.Lock()
	b.bg.closed = true
	running := b.bg.running
	b.bg.Unlock()
	if running != nil {
		<-running
	}
}

// merge folds a state this process wrote into the cache.
func (b *breaker) merge(st sharedState, closed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gen++
	next := *b.cache.Load()
	if closed {
		next.st.until, next.st.reason = 0, ""
	} else {
		if st.until > next.st.until {
			next.st.until, next.st.reason = st.until, st.reason
		}
		next.st.pause = max(next.st.pause, st.pause)
	}
	b.cache.Store(&next)
}

// adopt replaces the cached open/half-open state with st, which this
// process found in the store (a trip or a close of another instance that
// its cache had not seen yet).
func (b *breaker) adopt(st sharedState) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gen++
	next := *b.cache.Load()
	next.st.until, next.st.reason = st.until, st.reason
	next.st.pause = max(next.st.pause, st.pause)
	b.cache.Store(&next)
}

// permit is one attempt's pass through the breaker.
type permit struct {
	done  func(error) // gobreaker's; nil for a probe
	probe bool
	until int64 // the deadline a probe was sent for
}

// allow lets an attempt through, or returns an *UnavailableError with
// ReasonBreakerOpen.
func (b *breaker) allow(ctx context.Context, now int64) (permit, error) {
	st := b.snapshot(ctx, now)
	if st.until != 0 {
		if now < st.until {
			return permit{}, b.openErr(time.Duration(st.until-now)*time.Millisecond, st.reason)
		}
		p, closed, err := b.halfOpen(ctx, now, st)
		if !closed {
			return p, err
		}
		// Another instance's probe closed the breaker: an ordinary call.
	}
	done, err := b.cb.Load().Allow()
	if err != nil {
		return permit{}, b.openErr(0, b.tripReason.Load().(string))
	}
	return permit{done: done}, nil
}

// halfOpen lets one probe through in the cluster after the deadline st.until
// passed; the other calls fall back. closed reports that the store says
// the breaker closed meanwhile (the caller then makes an ordinary call).
func (b *breaker) halfOpen(ctx context.Context, now int64, st sharedState) (permit, bool, error) {
	if now < b.leaseRetry.Load() || !b.probing.CompareAndSwap(false, true) {
		return permit{}, false, b.openErr(0, st.reason)
	}
	sctx, cancel := b.storeCtx(ctx)
	// The lease outlives the probe's bulkhead wait and attempt; it is
	// released as soon as the probe ends.
	ttl := b.c.cfg.AttemptTimeout + max(b.c.cfg.BulkheadWait, 0) + time.Second
	won, cur, err := b.store.lease(sctx, b.holder, ttl, now, st.until)
	cancel()
	switch {
	case err != nil:
		// Without the store, probe from this process alone.
		b.c.storeError("lease", err)
	case won:
	case cur.until != st.until:
		// The state changed since it was cached: another instance's probe
		// closed the breaker or re-opened it. Adopt it rather than probe
		// the same open period again.
		b.probing.Store(false)
		b.adopt(cur)
		if cur.until == 0 {
			return permit{}, true, nil
		}
		var wait time.Duration
		if now < cur.until {
			wait = time.Duration(cur.until-now) * time.Millisecond
		}
		return permit{}, false, b.openErr(wait, cur.reason)
	default:
		// Another instance holds the lease.
		b.leaseRetry.Store(now + b.c.cfg.RefreshEvery.Milliseconds())
		b.probing.Store(false)
		return permit{}, false, b.openErr(0, st.reason)
	}
	return permit{probe: true, until: st.until}, false, nil
}

func (b *breaker) openErr(retryAfter time.Duration, reason string) error {
	var err error
	if reason != "" {
		err = errors.New("chat: breaker opened after " + reason)
	}
	return &UnavailableError{Reason: ReasonBreakerOpen, RetryAfter: retryAfter, Err: err}
}

// finish records an attempt's outcome; reason describes a failure.
func (b *breaker) finish(ctx context.Context, p permit, cls class, reason string) {
	if p.probe {
		defer b.probing.Store(false)
		sctx, cancel := b.storeCtx(ctx)
		defer cancel()
		switch cls {
		case classOK:
			closed, err := b.store.close(sctx, p.until, b.holder)
			if err != nil {
				b.c.storeError("close", err)
				closed = true
			}
			if closed {
				b.merge(sharedState{}, true)
				b.resetLocal()
				b.c.logger.Info("chat: breaker closed by probe", "name", b.c.cfg.Name)
			}
		case classExcluded:
			if _, err := b.store.close(sctx, 0, b.holder); err != nil {
				b.c.storeError("release", err)
			}
			b.leaseRetry.Store(0)
		default:
			b.trip(sctx, reason, b.holder)
		}
		return
	}
	switch cls {
	case classOK:
		p.done(nil)
	case classExcluded:
		p.done(errBreakerExcluded)
	default:
		b.tripReason.Store(reason)
		p.done(errBreakerFailure)
	}
	if b.pendingTrip.CompareAndSwap(true, false) {
		sctx, cancel := b.storeCtx(ctx)
		defer cancel()
		b.trip(sctx, reason, "")
	}
}

// trip opens the breaker for everyone until now+OpenFor (a later deadline
// already set is kept).
func (b *breaker) trip(ctx context.Context, reason, holder string) {
	until := b.c.nowMs() + b.c.cfg.OpenFor.Milliseconds()
	st, err := b.store.extend(ctx, "until", until, reason, 2*b.c.cfg.OpenFor, holder)
	if err != nil {
		b.c.storeError("trip", err)
		st = sharedState{until: until, reason: reason}
	}
	b.merge(st, false)
	b.resetLocal()
	b.c.metrics.trip()
	b.c.logger.Warn("chat: breaker opened", "name", b.c.cfg.Name, "reason", reason,
		"until", time.UnixMilli(st.until).UTC())
}

// pause makes every instance wait before spending budget until deadline.
func (b *breaker) pause(ctx context.Context, deadline int64) {
	if deadline <= b.peek().pause {
		return
	}
	b.merge(sharedState{pause: deadline}, false)
	sctx, cancel := b.storeCtx(ctx)
	defer cancel()
	ttl := time.Duration(deadline-b.c.nowMs())*time.Millisecond + time.Second
	st, err := b.store.extend(sctx, "pause", deadline, "", ttl, "")
	if err != nil {
		b.c.storeError("pause", err)
		return
	}
	b.merge(st, false)
}

// peek returns the shared state as last seen, without I/O or lock.
func (b *breaker) peek() sharedState { return b.cache.Load().st }

// state names the breaker's state as this process sees it.
func (b *breaker) state() gobreaker.State {
	until := b.peek().until
	switch {
	case until == 0:
		return b.cb.Load().State()
	case b.c.nowMs() < until:
		return gobreaker.StateOpen
	default:
		return gobreaker.StateHalfOpen
	}
}
