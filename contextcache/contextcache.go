// Package contextcache serves video transcripts to the chat turn pipeline
// so that MongoDB sees about one load per video per TTL for the whole
// cluster, and a turn normally reads its transcript from process memory
// with no I/O at all.
//
// A [Cache] answers [Cache.Get] from three tiers, in this order:
//
//  1. L1, in process: a byte-bounded W-TinyLFU cache (otter). A fresh copy
//     is returned without I/O or allocation.
//  2. L2, in Redis (optional): a compact, possibly compressed copy shared by
//     every instance, fresh for an hour plus jitter.
//  3. The [Source]: for MongoDB, the package
//     github.com/chatscale/chatscale/contextcache/mongosource, kept apart
//     so that a program that does not use it does not link the driver.
//
// Concurrent misses for one transcript share one load in a process
// (singleflight). Across instances, a short Redis lock taken in the same
// script that reads L2 lets one instance load while the others poll L2
// with backoff for a bounded time and then load themselves. The lock
// holder writes L2 and releases the lock in one script, so a waiter either
// finds the value or takes the lock: a transcript is loaded once per
// cluster as long as the load ends within the lock's wait.
//
// A Source that answers [ErrNotFound] is remembered for a minute in L1 and
// L2 (negative caching). When the Source fails otherwise, a copy whose
// freshness ended less than a configured age ago (24 h by default) is
// served with [Result.Stale] set (stale-if-error): this instance's L1 copy,
// or else the L2 copy, which Redis keeps that much longer than its
// freshness, so that an instance started during a MongoDB outage can serve
// it too. Without such a copy the error is a [*LoadError], which matches
// [ErrUnavailable]. For a few seconds after such a failure
// (Config.RetrySourceAfter), misses of that transcript get the same kind of
// answer at once without calling the Source, so that during a MongoDB
// outage turns neither wait for the driver's timeout one after another nor
// retry the Source all together.
//
// [Cache.Invalidate] deletes the L2 copy and tells every instance, through
// Redis pub/sub, to drop its L1 copy; an instance that misses the message
// converges when its L1 copy's TTL ends.
//
// When Redis fails or hangs (each call is bounded by Config.RedisTimeout,
// 1 s by default), Get answers from L1 and, on a miss, from the Source,
// without L2 and without the cluster lock, so each instance may load a
// transcript once for itself; Invalidate drops the local copy and returns
// ErrUnavailable. Across a Sentinel failover that lasts about Sentinel's
// down-after-milliseconds plus go-redis' redial to the promoted replica;
// the Cache uses Redis again from the first call that succeeds, with no
// probe interval. Nothing is lost that matters: L2 is a cache, and a copy
// written just before the switch that did not reach the replica is loaded
// again. An invalidation published during the switch may reach no other
// instance (pub/sub keeps nothing for a subscriber that is reconnecting);
// those instances converge within L1TTL. The subscriber of Start
// resubscribes by itself once the new master answers.
//
// Lifecycle: New (no I/O, no goroutine), [Cache.LoadScripts] to warm the
// script cache of every Redis server, [Cache.Start] to receive other
// instances' invalidations (with Redis), [Cache.Close] to stop the
// subscriber and the running loads and unregister the metrics. The Redis
// client and the MongoDB client belong to the caller.
//
// Errors follow the library's conventions (see package
// github.com/chatscale/chatscale): New returns a *chatscale.ConfigError
// (errors.Is(err, chatscale.ErrInvalidConfig)) for an impossible Config or a
// nil Source; Get and Invalidate return a *chatscale.InputError
// (errors.Is(err, chatscale.ErrInvalidInput)) with Field "CourseID" or
// "VideoURL" for IDs that cannot name a transcript; [ErrUnavailable] means
// a dependency failed and the call could not be answered (the Source with
// no copy at hand, or Redis in Invalidate, Start and LoadScripts);
// [ErrNotFound] and [ErrClosed] keep their usual meaning. A ctx that ends is
// returned as ctx's error.
//
// Keys in Redis are Config.Prefix (default "chatscale:") + "contextcache:{"
// + hash of (course, video) + "}:" + "doc" for the value or "lock" for the
// load lock, so that the value and its lock share a hash slot on Redis
// Cluster; the invalidation channel is Config.Prefix +
// "contextcache:invalidate".
//
// Metrics, when Config.Registerer is set, are named
// <Namespace>_contextcache_<name> (Namespace defaults to "ai_chat"), e.g.
// ai_chat_contextcache_hits_total{tier="l1"}, and carry Config.ConstLabels.
package contextcache

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/chatscale/chatscale/contextcache/internal/ids"
)

// Document is one video's transcript.
type Document struct {
	// CourseID is the course the video belongs to, as the caller names it.
	CourseID string
	// VideoURL identifies the video within the course.
	VideoURL string
	// Title is the video's title; it may be empty.
	Title string
	// Text is the full transcript.
	Text string
	// Segments are the timed parts of the transcript, in order; nil when
	// the source has none.
	Segments []Segment
	// UpdatedAt is when the transcript last changed; zero when unknown.
	UpdatedAt time.Time
}

// Segment is a timed part of a transcript.
type Segment struct {
	// Start and End are offsets from the start of the video.
	Start, End time.Duration
	// Text is what is said between Start and End.
	Text string
}

// Source loads transcripts from where they are kept.
type Source interface {
	// Load returns the transcript of videoURL in courseID, an error
	// wrapping ErrNotFound when there is none, or an error wrapping
	// chatscale.ErrInvalidInput (a *chatscale.InputError, for instance)
	// when the IDs cannot name a transcript. Any other error is treated as
	// a failure of the Source. The Cache checks the IDs (see MaxKeyLen)
	// before it calls Load. Load must be safe for concurrent use.
	Load(ctx context.Context, courseID, videoURL string) (Document, error)
}

// SourceFunc adapts a function to the Source interface.
type SourceFunc func(ctx context.Context, courseID, videoURL string) (Document, error)

// Load calls f(ctx, courseID, videoURL).
func (f SourceFunc) Load(ctx context.Context, courseID, videoURL string) (Document, error) {
	return f(ctx, courseID, videoURL)
}

var _ Source = SourceFunc(nil)

// Errors returned by this package. Callers compare with errors.Is. Bad
// Config values and bad IDs are reported with the library's shared errors,
// chatscale.ErrInvalidConfig and chatscale.ErrInvalidInput.
var (
	// ErrNotFound means the Source has no transcript for the video.
	ErrNotFound = errors.New("contextcache: transcript not found")
	// ErrUnavailable means a dependency failed and the call could not be
	// answered; it may succeed later. From Get it is a *LoadError: the
	// Source failed and no copy, fresh or stale, was at hand. From
	// Invalidate, Start and LoadScripts it wraps the Redis error.
	ErrUnavailable = errors.New("contextcache: unavailable")
	// ErrClosed means the Cache was closed.
	ErrClosed = errors.New("contextcache: cache closed")
)

// LoadError reports that the Source failed and no copy could be served
// instead. It matches ErrUnavailable with errors.Is and unwraps to the
// Source's error.
type LoadError struct {
	// CourseID and VideoURL name the transcript that could not be served.
	CourseID, VideoURL string
	// Err is the Source's error.
	Err error
}

// Error implements error.
func (e *LoadError) Error() string {
	return "contextcache: transcript unavailable for course " + strconv.Quote(e.CourseID) +
		" video " + strconv.Quote(e.VideoURL) + ": " + e.Err.Error()
}

// Is reports whether target is ErrUnavailable.
func (e *LoadError) Is(target error) bool { return target == ErrUnavailable }

// Unwrap returns the Source's error.
func (e *LoadError) Unwrap() error { return e.Err }

// MaxKeyLen is the longest course ID or video URL accepted, in bytes.
const MaxKeyLen = 2048

// The check the Cache and its Sources share must agree with MaxKeyLen.
const _, _ uint = MaxKeyLen - ids.MaxLen, ids.MaxLen - MaxKeyLen

// pkg is the Package of this package's *chatscale.ConfigError and
// *chatscale.InputError values.
const pkg = "contextcache"

// checkKey returns a *chatscale.InputError when courseID or videoURL
// cannot name a transcript.
func checkKey(courseID, videoURL string) error { return ids.Check(pkg, courseID, videoURL) }

// Tier says where a Result came from.
type Tier uint8

// The tiers of a Cache.
const (
	// TierL1 is the in-process cache.
	TierL1 Tier = iota + 1
	// TierL2 is Redis.
	TierL2
	// TierSource is the Source.
	TierSource
)

// String returns "l1", "l2" or "source".
func (t Tier) String() string {
	switch t {
	case TierL1:
		return "l1"
	case TierL2:
		return "l2"
	case TierSource:
		return "source"
	}
	return "tier(" + strconv.Itoa(int(t)) + ")"
}

// Result is what Cache.Get returns.
type Result struct {
	// Document is the transcript. Its Segments slice is shared with the
	// cache and must not be modified.
	Document Document
	// Tier is where Document came from.
	Tier Tier
	// Stale is set when the Source failed and Document is an expired copy
	// served instead (stale-if-error); Tier then says whether the copy came
	// from L1 or L2.
	Stale bool
	// LoadErr is the Source's error when Stale is set, else nil.
	LoadErr error
}
