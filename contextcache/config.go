package contextcache

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/keyspace"
	"github.com/chatscale/chatscale/internal/prom"
)

// Config tunes a Cache. The zero value is usable: an L1-only cache with
// the defaults below. New works on a copy; the caller's Config is never
// changed.
type Config struct {
	// L1TTL is how long a copy in process memory is served without asking
	// L2 or the Source. It also bounds how long an instance that missed an
	// invalidation message keeps serving the old copy.
	// Default: 5 minutes (zero). Negative is an error.
	L1TTL time.Duration
	// L1MaxBytes bounds the estimated memory of the L1 entries, fresh and
	// stale. Default: 64 MiB (zero). Negative is an error.
	L1MaxBytes int64

	// Redis is the L2 shared by every instance, and carries the load lock
	// and the invalidation messages: a *redis.Client, *redis.ClusterClient,
	// Sentinel failover client or *redis.Ring. Nil means no L2: each
	// instance loads for itself and Invalidate acts on this instance only.
	// The Cache does not close the client; callers do, after Close. Each
	// call is bounded by RedisTimeout.
	Redis redis.UniversalClient
	// RedisTimeout bounds each Redis call: an L2 read (with the lock), an
	// L2 write, each poll while another instance loads, the two calls of
	// Invalidate, LoadScripts and the wait for Start's confirmation. A
	// call that Redis has not answered by then counts as a Redis failure:
	// Get goes to the Source (a hung Redis delays a miss by
	// RedisTimeout, twice when it stops between the read and the write,
	// and L1 hits not at all), Invalidate returns ErrUnavailable. Default: 1 s (zero). Negative means no bound of the
	// Cache's own: calls end with the client's timeouts (see the README's
	// conventions for the go-redis options).
	RedisTimeout time.Duration
	// Prefix starts every Redis key and the invalidation channel; the
	// package adds "contextcache:" after it, so that one Prefix can serve
	// every component of an application. Default: chatscale.DefaultPrefix,
	// "chatscale:" (empty), which gives keys such as
	// "chatscale:contextcache:{…}:doc". It must not contain '{' or '}':
	// each transcript's keys carry their own hash tag.
	Prefix string
	// L2TTL is how long a copy in Redis is fresh; Redis keeps it MaxStale
	// longer for stale-if-error. Default: 1 hour (zero). Negative is an
	// error.
	L2TTL time.Duration
	// L2Jitter is the upper bound of a random duration added to each L2TTL,
	// so that copies written together do not expire together.
	// Default: L2TTL/10 (zero). Negative means no jitter.
	L2Jitter time.Duration
	// CompressAbove is the size in bytes above which an L2 value is
	// deflated. Default: 1024 (zero). Negative means never.
	CompressAbove int

	// LockTTL is the lifetime of the Redis lock that lets one instance load
	// a transcript while the others wait; it must exceed a load's usual
	// duration. Default: 10 s (zero). Negative is an error.
	LockTTL time.Duration
	// LockWait is how long an instance waits for another instance's load
	// (polling L2 with backoff) before it loads for itself.
	// Default: 5 s (zero). Negative means do not wait.
	LockWait time.Duration

	// LoadTimeout bounds one call of Source.Load, whatever the callers'
	// contexts say (a load is shared by every caller waiting for it).
	// Default: 10 s (zero). Negative means no bound besides Close.
	LoadTimeout time.Duration

	// NegativeTTL is how long an ErrNotFound from the Source is
	// remembered, in L1 and in L2. Default: 1 minute (zero). Negative
	// disables negative caching.
	NegativeTTL time.Duration
	// MaxStale is how long after its freshness ended a copy may still be
	// served when the Source fails (stale-if-error). Such copies stay in
	// L1 until then, within L1MaxBytes, and in Redis (so Redis holds every
	// transcript read in the last L2TTL+MaxStale; size its memory, or its
	// eviction policy, for that). Default: 24 hours (zero). Negative
	// disables stale-if-error.
	MaxStale time.Duration
	// RetrySourceAfter is how long after a Source failure for a transcript
	// (not ErrNotFound, not chatscale.ErrInvalidInput) this instance calls the Source
	// again for it. Until then a miss of that transcript is answered at
	// once, without calling the Source: by the stale copy as after the
	// failure (Result.LoadErr is the last error), or by a *LoadError when
	// there is none. During that time a copy that another instance writes
	// to L2 is not read either. A successful load or an invalidation ends
	// it early. The failures of at most 10 000 transcripts are
	// remembered; the others call the Source again at their next miss.
	// Default: 5 s (zero). Negative disables it: every miss calls the
	// Source.
	RetrySourceAfter time.Duration

	// Now returns the current time. Nil means time.Now.
	Now func() time.Time
	// Registerer receives the Cache's Prometheus collector, registered by
	// New (all or nothing) and unregistered by Close. Nil means no
	// metrics; the global registry is never used unless passed here.
	Registerer prometheus.Registerer
	// Namespace starts every metric name: <Namespace>_contextcache_<name>,
	// as in ai_chat_contextcache_hits_total. Default:
	// chatscale.DefaultNamespace, "ai_chat" (empty).
	Namespace string
	// ConstLabels are added to every series. Two Caches can share a
	// Registerer when their ConstLabels differ. It must not hold "tier",
	// a label the Cache sets.
	ConstLabels prometheus.Labels
	// Logger receives warnings about Redis and Source failures. Nil means
	// discard. It never receives a transcript's text.
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultL1TTL         = 5 * time.Minute
	DefaultL1MaxBytes    = 64 << 20
	DefaultL2TTL         = time.Hour
	DefaultCompressAbove = 1024
	DefaultLockTTL       = 10 * time.Second
	DefaultLockWait      = 5 * time.Second
	DefaultLoadTimeout   = 10 * time.Second
	DefaultNegativeTTL   = time.Minute
	DefaultMaxStale      = 24 * time.Hour

	DefaultRetrySourceAfter = 5 * time.Second
)

// keyPart is what the package adds after Config.Prefix in every key and
// channel name.
const keyPart = "contextcache:"

// withDefaults returns c with its defaults filled, or a
// *chatscale.ConfigError for the first impossible field.
func (c Config) withDefaults() (Config, error) {
	for _, f := range []struct {
		name     string
		negative bool
	}{
		{"Config.L1TTL", c.L1TTL < 0},
		{"Config.L1MaxBytes", c.L1MaxBytes < 0},
		{"Config.L2TTL", c.L2TTL < 0},
		{"Config.LockTTL", c.LockTTL < 0},
	} {
		if f.negative {
			return c, &chatscale.ConfigError{Package: pkg, Field: f.name, Reason: "negative"}
		}
	}
	if err := keyspace.Check(pkg, "Config.Prefix", c.Prefix); err != nil {
		return c, err
	}
	if err := prom.CheckLabels(pkg, c.ConstLabels, "tier"); err != nil {
		return c, err
	}
	set := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	set(&c.L1TTL, DefaultL1TTL)
	set(&c.L2TTL, DefaultL2TTL)
	set(&c.LockTTL, DefaultLockTTL)
	set(&c.LockWait, DefaultLockWait)
	set(&c.LoadTimeout, DefaultLoadTimeout)
	set(&c.NegativeTTL, DefaultNegativeTTL)
	set(&c.MaxStale, DefaultMaxStale)
	set(&c.RetrySourceAfter, DefaultRetrySourceAfter)
	set(&c.L2Jitter, c.L2TTL/10)
	if c.L1MaxBytes == 0 {
		c.L1MaxBytes = DefaultL1MaxBytes
	}
	if c.Prefix == "" {
		c.Prefix = chatscale.DefaultPrefix
	}
	if c.CompressAbove == 0 {
		c.CompressAbove = DefaultCompressAbove
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}
