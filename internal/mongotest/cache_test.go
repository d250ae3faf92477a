package mongotest_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/contextcache/mongosource"
	"github.com/chatscale/chatscale/internal/testutil"
)

// stampedeConfig waits long enough for another instance's load that a
// slow, shared machine cannot make a waiter give up and load itself.
func stampedeConfig(env *testutil.RedisEnv) contextcache.Config {
	return contextcache.Config{
		Redis:       env.NewClient(),
		Prefix:      env.Prefix,
		LockTTL:     time.Minute,
		LockWait:    30 * time.Second,
		LoadTimeout: time.Minute,
	}
}

func TestStampedeOneLoadAcrossInstances(t *testing.T) {
	t.Parallel()
	env := testutil.Redis(t)
	f := newFixture(t, mongosource.Config{})
	course := f.insert(t, bson.NewObjectID(), "https://v.example/1", "Title 1", "hello world")

	caches := make([]*contextcache.Cache, 4)
	lockWaits := func() (n uint64) {
		for _, c := range caches {
			n += c.Stats().LockWaits
		}
		return n
	}
	src := &counting{src: f.src}
	// Hold the one load until the three other instances are waiting on
	// its lock, so that the test exercises the cross-instance path and
	// not only singleflight.
	src.before = func(ctx context.Context) {
		testutil.Eventually(20*time.Second, func() bool { return lockWaits() >= 3 })
	}
	for i := range caches {
		caches[i] = newCache(t, src, stampedeConfig(env))
	}

	ctx := testCtx(t)
	const goroutines = 1000
	start := make(chan struct{})
	errs := make(chan error, goroutines)
	var wg sync.WaitGroup
	for i := range goroutines {
		wg.Add(1)
		go func(c *contextcache.Cache) {
			defer wg.Done()
			<-start
			r, err := c.Get(ctx, course, "https://v.example/1")
			if err == nil && r.Document.Title != "Title 1" {
				err = fmt.Errorf("title %q", r.Document.Title)
			}
			errs <- err
		}(caches[i%len(caches)])
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
	}
	if n := src.n.Load(); n != 1 {
		t.Errorf("Source.Load called %d times; want 1", n)
	}
	if n := f.finds.Load(); n != 1 {
		t.Errorf("%d find commands reached MongoDB; want 1", n)
	}
	if n := lockWaits(); n != 3 {
		t.Errorf("LockWaits = %d over the instances; want 3 (every other instance waited)", n)
	}
	var l2 uint64
	for _, c := range caches {
		s := c.Stats()
		if s.LockTimeouts != 0 {
			t.Errorf("LockTimeouts = %d; want 0", s.LockTimeouts)
		}
		l2 += s.L2Hits
	}
	if l2 != 3 {
		t.Errorf("L2 hits = %d over the instances; want 3 (one per waiting instance)", l2)
	}
}

func TestStampedeFiftyVideosFiftyLoads(t *testing.T) {
	t.Parallel()
	env := testutil.Redis(t)
	f := newFixture(t, mongosource.Config{})
	course := f.insert(t, bson.NewObjectID(), "https://v.example/0", "Title 0", "text 0")
	oid, _ := bson.ObjectIDFromHex(course)
	const videos = 50
	for v := 1; v < videos; v++ {
		f.insert(t, oid, fmt.Sprintf("https://v.example/%d", v), fmt.Sprintf("Title %d", v), "text")
	}
	src := &counting{src: f.src}
	caches := make([]*contextcache.Cache, 4)
	for i := range caches {
		caches[i] = newCache(t, src, stampedeConfig(env))
	}

	ctx := testCtx(t)
	const goroutines = 1000
	start := make(chan struct{})
	errs := make(chan error, goroutines)
	var wg sync.WaitGroup
	for i := range goroutines {
		wg.Add(1)
		go func(c *contextcache.Cache, v int) {
			defer wg.Done()
			<-start
			r, err := c.Get(ctx, course, fmt.Sprintf("https://v.example/%d", v))
			if want := fmt.Sprintf("Title %d", v); err == nil && r.Document.Title != want {
				err = fmt.Errorf("video %d: title %q, want %q", v, r.Document.Title, want)
			}
			errs <- err
		}(caches[i%len(caches)], i%videos)
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
	}
	if n := src.n.Load(); n != videos {
		t.Errorf("Source.Load called %d times; want %d", n, videos)
	}
	if n := f.finds.Load(); n != videos {
		t.Errorf("%d find commands reached MongoDB; want %d", n, videos)
	}
}

func TestTiersL1ThenL2ThenSource(t *testing.T) {
	t.Parallel()
	env := testutil.Redis(t)
	f := newFixture(t, mongosource.Config{})
	course := f.insert(t, bson.NewObjectID(), "v", "T", strings.Repeat("long transcript ", 200))
	src := &counting{src: f.src}
	clk := newClock()
	cfg := contextcache.Config{Redis: env.Client, Prefix: env.Prefix, Now: clk.Now}
	a, b := newCache(t, src, cfg), newCache(t, src, cfg)
	ctx := testCtx(t)

	want := []contextcache.Tier{contextcache.TierSource, contextcache.TierL1}
	for i, tier := range want {
		r, err := a.Get(ctx, course, "v")
		if err != nil || r.Tier != tier || r.Stale {
			t.Fatalf("a.Get #%d: tier %v stale %v err %v; want %v", i, r.Tier, r.Stale, err, tier)
		}
	}
	r, err := b.Get(ctx, course, "v")
	if err != nil || r.Tier != contextcache.TierL2 {
		t.Fatalf("b.Get: tier %v, %v; want l2", r.Tier, err)
	}
	if r.Document.Text != strings.Repeat("long transcript ", 200) || len(r.Document.Segments) != 2 ||
		r.Document.Segments[1].End != 3*time.Second || r.Document.CourseID != course {
		t.Fatalf("document read back from L2 differs: %+v", r.Document)
	}
	// Past L1's TTL, a goes back to L2, not to the Source.
	clk.Advance(contextcache.DefaultL1TTL + time.Second)
	if r, err := a.Get(ctx, course, "v"); err != nil || r.Tier != contextcache.TierL2 {
		t.Fatalf("a.Get after L1TTL: tier %v, %v; want l2", r.Tier, err)
	}
	if n := src.n.Load(); n != 1 {
		t.Fatalf("Source.Load called %d times; want 1", n)
	}
	if s := a.Stats(); s.L1Hits != 1 || s.L2Hits != 1 || s.Misses != 2 || s.Loads != 1 {
		t.Fatalf("a.Stats() = %+v; want 1 L1 hit, 1 L2 hit, 2 misses, 1 load", s)
	}
}

func TestNegativeCachingInL1(t *testing.T) {
	t.Parallel()
	f := newFixture(t, mongosource.Config{})
	src := &counting{src: f.src}
	clk := newClock()
	c := newCache(t, src, contextcache.Config{Now: clk.Now})
	ctx := testCtx(t)
	oid := bson.NewObjectID()
	course := oid.Hex()

	for i := range 3 {
		if _, err := c.Get(ctx, course, "missing"); !errors.Is(err, contextcache.ErrNotFound) {
			t.Fatalf("Get #%d: %v; want ErrNotFound", i, err)
		}
	}
	if n := src.n.Load(); n != 1 {
		t.Fatalf("Source.Load called %d times for a missing video; want 1", n)
	}
	if s := c.Stats(); s.NegativeHits != 2 || s.NotFound != 1 {
		t.Fatalf("Stats() = %+v; want 2 negative hits, 1 not found", s)
	}

	// The transcript appears; the negative answer lasts until NegativeTTL.
	f.insert(t, oid, "missing", "Now here", "text")
	clk.Advance(contextcache.DefaultNegativeTTL - time.Second)
	if _, err := c.Get(ctx, course, "missing"); !errors.Is(err, contextcache.ErrNotFound) {
		t.Fatalf("Get before NegativeTTL: %v; want ErrNotFound", err)
	}
	clk.Advance(2 * time.Second)
	r, err := c.Get(ctx, course, "missing")
	if err != nil || r.Document.Title != "Now here" {
		t.Fatalf("Get after NegativeTTL: %+v, %v; want the new transcript", r.Document, err)
	}
	if n := src.n.Load(); n != 2 {
		t.Fatalf("Source.Load called %d times; want 2", n)
	}
}

func TestNegativeCachingSharedThroughL2(t *testing.T) {
	t.Parallel()
	env := testutil.Redis(t)
	f := newFixture(t, mongosource.Config{})
	src := &counting{src: f.src}
	cfg := contextcache.Config{Redis: env.Client, Prefix: env.Prefix}
	a, b := newCache(t, src, cfg), newCache(t, src, cfg)
	ctx := testCtx(t)
	course := bson.NewObjectID().Hex()

	if _, err := a.Get(ctx, course, "missing"); !errors.Is(err, contextcache.ErrNotFound) {
		t.Fatalf("a.Get: %v; want ErrNotFound", err)
	}
	if _, err := b.Get(ctx, course, "missing"); !errors.Is(err, contextcache.ErrNotFound) {
		t.Fatalf("b.Get: %v; want ErrNotFound", err)
	}
	if n := src.n.Load(); n != 1 {
		t.Fatalf("Source.Load called %d times; want 1 (b reads the marker in L2)", n)
	}
	if s := b.Stats(); s.NegativeHits != 1 {
		t.Fatalf("b.Stats().NegativeHits = %d; want 1", s.NegativeHits)
	}
}

func TestStaleIfErrorWhenMongoStops(t *testing.T) {
	t.Parallel()
	f := newStoppableFixture(t, mongosource.Config{})
	course := f.insert(t, bson.NewObjectID(), "v", "Cached title", "text")
	clk := newClock()
	c := newCache(t, f.src, contextcache.Config{Now: clk.Now})
	ctx := testCtx(t)

	if r, err := c.Get(ctx, course, "v"); err != nil || r.Stale {
		t.Fatalf("first Get: %+v, %v", r, err)
	}
	f.env.Stop()
	clk.Advance(contextcache.DefaultL1TTL + time.Minute) // the copy is no longer fresh

	r, err := c.Get(ctx, course, "v")
	if err != nil {
		t.Fatalf("Get with MongoDB stopped: %v; want the stale copy", err)
	}
	if !r.Stale || r.Tier != contextcache.TierL1 || r.Document.Title != "Cached title" || r.LoadErr == nil {
		t.Fatalf("Get with MongoDB stopped = %+v; want the stale copy with the load error", r)
	}
	if s := c.Stats(); s.StaleServes != 1 || s.LoadErrors != 1 {
		t.Fatalf("Stats() = %+v; want 1 stale serve and 1 load error", s)
	}

	// A video never loaded has no copy: a typed error.
	_, err = c.Get(ctx, course, "never-loaded")
	var le *contextcache.LoadError
	if !errors.Is(err, contextcache.ErrUnavailable) || !errors.As(err, &le) || le.VideoURL != "never-loaded" || le.Err == nil {
		t.Fatalf("Get of an uncached video with MongoDB stopped: %v; want a *LoadError", err)
	}

	// Past MaxStale the copy is no longer served.
	clk.Advance(contextcache.DefaultMaxStale)
	if _, err := c.Get(ctx, course, "v"); !errors.Is(err, contextcache.ErrUnavailable) {
		t.Fatalf("Get past MaxStale: %v; want ErrUnavailable", err)
	}
}

func TestStaleIfErrorFromL2OnANewInstance(t *testing.T) {
	t.Parallel()
	env := testutil.Redis(t)
	f := newStoppableFixture(t, mongosource.Config{})
	course := f.insert(t, bson.NewObjectID(), "v", "Cached title", "text")
	clk := newClock()
	cfg := contextcache.Config{Redis: env.Client, Prefix: env.Prefix, Now: clk.Now, L2Jitter: -1}
	a := newCache(t, f.src, cfg)
	ctx := testCtx(t)

	if r, err := a.Get(ctx, course, "v"); err != nil || r.Tier != contextcache.TierSource {
		t.Fatalf("first Get: %v from %v, %v", r.Document.Title, r.Tier, err)
	}
	// The only key is the copy: Prefix + "contextcache:{" + digest + "}:doc".
	keys, err := env.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || !strings.HasPrefix(keys[0], env.Prefix+"contextcache:{") || !strings.HasSuffix(keys[0], "}:doc") {
		t.Fatalf("keys under the prefix after the first Get: %q; want one value key", keys)
	}
	value := keys[0]
	// Redis keeps the copy past its freshness, for stale-if-error.
	if ttl := env.Client.PTTL(ctx, value).Val(); ttl <= contextcache.DefaultL2TTL {
		t.Fatalf("L2 copy lives %v in Redis; want more than L2TTL (%v)", ttl, contextcache.DefaultL2TTL)
	}
	f.env.Stop()
	clk.Advance(contextcache.DefaultL2TTL + time.Minute) // no longer fresh, in L1 or L2

	// An instance started during the outage has nothing in L1.
	b := newCache(t, f.src, cfg)
	r, err := b.Get(ctx, course, "v")
	if err != nil {
		t.Fatalf("Get on a new instance with MongoDB stopped: %v; want the stale L2 copy", err)
	}
	if !r.Stale || r.Tier != contextcache.TierL2 || r.Document.Title != "Cached title" || r.LoadErr == nil {
		t.Fatalf("Get on a new instance with MongoDB stopped = %+v; want the stale L2 copy with the load error", r)
	}
	if s := b.Stats(); s.StaleServes != 1 || s.LoadErrors != 1 || s.L2Hits != 0 {
		t.Fatalf("b.Stats() = %+v; want 1 stale serve, 1 load error, no L2 hit", s)
	}
	// The load lock (the "}:lock" key beside the value) is released.
	if keys, err := env.Keys(ctx); err != nil || len(keys) != 1 || keys[0] != value {
		t.Fatalf("keys under the prefix after the failed load: %q, %v; want only the value %q (the load lock still held?)", keys, err, value)
	}

	// Past MaxStale the copy is no longer served, even while Redis has it.
	clk.Advance(contextcache.DefaultMaxStale)
	c := newCache(t, f.src, cfg)
	if _, err := c.Get(ctx, course, "v"); !errors.Is(err, contextcache.ErrUnavailable) {
		t.Fatalf("Get past MaxStale: %v; want ErrUnavailable", err)
	}
}

func TestRetrySourceAfterFailureWhenMongoStops(t *testing.T) {
	t.Parallel()
	f := newStoppableFixture(t, mongosource.Config{})
	course := f.insert(t, bson.NewObjectID(), "v", "Cached title", "text")
	src := &counting{src: f.src}
	clk := newClock()
	c := newCache(t, src, contextcache.Config{Now: clk.Now})
	ctx := testCtx(t)

	if r, err := c.Get(ctx, course, "v"); err != nil || r.Stale {
		t.Fatalf("first Get: %+v, %v", r, err)
	}
	f.env.Stop()
	clk.Advance(contextcache.DefaultL1TTL + time.Minute) // the copy is no longer fresh

	wantStale := func(what string, calls int64) error {
		t.Helper()
		r, err := c.Get(ctx, course, "v")
		if err != nil || !r.Stale || r.Tier != contextcache.TierL1 || r.Document.Title != "Cached title" || r.LoadErr == nil {
			t.Fatalf("%s: %+v, %v; want the stale L1 copy with the load error", what, r, err)
		}
		if n := src.n.Load(); n != calls {
			t.Fatalf("%s: Source.Load called %d times in all; want %d", what, n, calls)
		}
		return r.LoadErr
	}
	first := wantStale("Get with MongoDB stopped", 2)
	// Within RetrySourceAfter the Source is not called again.
	clk.Advance(contextcache.DefaultRetrySourceAfter - time.Millisecond)
	if again := wantStale("second Get within RetrySourceAfter", 2); again != first {
		t.Fatalf("second Get's LoadErr = %v; want the last Source error %v", again, first)
	}
	if s := c.Stats(); s.SourceSkips != 1 || s.StaleServes != 2 || s.LoadErrors != 1 || s.Loads != 2 {
		t.Fatalf("Stats() = %+v; want 1 source skip, 2 stale serves, 1 load error, 2 loads", s)
	}
	// Past RetrySourceAfter the Source is tried again.
	clk.Advance(time.Millisecond)
	wantStale("Get past RetrySourceAfter", 3)
	if s := c.Stats(); s.SourceSkips != 1 || s.LoadErrors != 2 {
		t.Fatalf("Stats() = %+v; want 1 source skip, 2 load errors", s)
	}

	// Without a copy: a *LoadError, and within RetrySourceAfter the same
	// error without calling the Source.
	wantLoadError := func(what string, calls int64) *contextcache.LoadError {
		t.Helper()
		_, err := c.Get(ctx, course, "never-loaded")
		var le *contextcache.LoadError
		if !errors.Is(err, contextcache.ErrUnavailable) || !errors.As(err, &le) || le.VideoURL != "never-loaded" || le.Err == nil {
			t.Fatalf("%s: %v; want a *LoadError", what, err)
		}
		if n := src.n.Load(); n != calls {
			t.Fatalf("%s: Source.Load called %d times in all; want %d", what, n, calls)
		}
		return le
	}
	le := wantLoadError("Get of an uncached video", 4)
	if again := wantLoadError("second Get of an uncached video", 4); again.Err != le.Err {
		t.Fatalf("second LoadError wraps %v; want the last Source error %v", again.Err, le.Err)
	}
	if s := c.Stats(); s.SourceSkips != 2 || s.StaleServes != 3 {
		t.Fatalf("Stats() = %+v; want 2 source skips, 3 stale serves", s)
	}
	clk.Advance(contextcache.DefaultRetrySourceAfter)
	wantLoadError("Get of an uncached video past RetrySourceAfter", 5)
}

func TestRetrySourceAfterServesStaleL2CopyWithoutSource(t *testing.T) {
	t.Parallel()
	env := testutil.Redis(t)
	f := newStoppableFixture(t, mongosource.Config{})
	course := f.insert(t, bson.NewObjectID(), "v", "Cached title", "text")
	src := &counting{src: f.src}
	clk := newClock()
	cfg := contextcache.Config{Redis: env.Client, Prefix: env.Prefix, Now: clk.Now, L2Jitter: -1}
	a := newCache(t, src, cfg)
	ctx := testCtx(t)

	if _, err := a.Get(ctx, course, "v"); err != nil {
		t.Fatalf("first Get: %v", err)
	}
	f.env.Stop()
	clk.Advance(contextcache.DefaultL2TTL + time.Minute) // no longer fresh, in L1 or L2

	// An instance started during the outage has nothing in L1.
	b := newCache(t, src, cfg)
	r, err := b.Get(ctx, course, "v")
	if err != nil || !r.Stale || r.Tier != contextcache.TierL2 || r.Document.Title != "Cached title" || r.LoadErr == nil {
		t.Fatalf("Get on a new instance with MongoDB stopped = %+v, %v; want the stale L2 copy", r, err)
	}
	if n := src.n.Load(); n != 2 {
		t.Fatalf("Source.Load called %d times; want 2", n)
	}
	r2, err := b.Get(ctx, course, "v")
	if err != nil || !r2.Stale || r2.Document.Title != "Cached title" || r2.LoadErr != r.LoadErr {
		t.Fatalf("second Get within RetrySourceAfter = %+v, %v; want the stale copy with the last load error", r2, err)
	}
	if n := src.n.Load(); n != 2 {
		t.Fatalf("Source.Load called %d times after the second Get; want still 2", n)
	}
	if s := b.Stats(); s.SourceSkips != 1 || s.StaleServes != 2 || s.LoadErrors != 1 {
		t.Fatalf("b.Stats() = %+v; want 1 source skip, 2 stale serves, 1 load error", s)
	}
}

func TestInvalidationReachesAnotherInstance(t *testing.T) {
	t.Parallel()
	env := testutil.Redis(t)
	f := newFixture(t, mongosource.Config{})
	course := f.insert(t, bson.NewObjectID(), "v", "Old", "text")
	ctx := testCtx(t)
	a := newCache(t, f.src, contextcache.Config{Redis: env.NewClient(), Prefix: env.Prefix})
	b := newCache(t, f.src, contextcache.Config{Redis: env.NewClient(), Prefix: env.Prefix})
	for _, c := range []*contextcache.Cache{a, b} {
		if err := c.Start(ctx); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if r, err := c.Get(ctx, course, "v"); err != nil || r.Document.Title != "Old" {
			t.Fatalf("Get: %+v, %v", r.Document, err)
		}
	}

	f.setTitle(t, course, "v", "New")
	if r, _ := b.Get(ctx, course, "v"); r.Document.Title != "Old" || r.Tier != contextcache.TierL1 {
		t.Fatalf("b serves %q from %v before the invalidation; want Old from l1", r.Document.Title, r.Tier)
	}
	if err := a.Invalidate(ctx, course, "v"); err != nil {
		t.Fatalf("Invalidate: %v", err)
	}
	if r, err := a.Get(ctx, course, "v"); err != nil || r.Document.Title != "New" {
		t.Fatalf("a.Get after its own Invalidate: %q, %v; want New", r.Document.Title, err)
	}
	var last string
	ok := testutil.Eventually(10*time.Second, func() bool {
		r, err := b.Get(ctx, course, "v")
		last = fmt.Sprintf("%q from %v, %v", r.Document.Title, r.Tier, err)
		return err == nil && r.Document.Title == "New"
	})
	if !ok {
		t.Fatalf("b still serves %s; want New", last)
	}
	if n := b.Stats().InvalidationsReceived; n < 1 {
		t.Fatalf("b received %d invalidations; want >= 1", n)
	}
}

func TestRedisOutageL1KeepsServingMissesGoToSource(t *testing.T) {
	t.Parallel()
	env := testutil.MiniredisEnv(t)
	f := newFixture(t, mongosource.Config{})
	oid := bson.NewObjectID()
	course := oid.Hex()
	for _, v := range []string{"v1", "v2", "v3", "v4"} {
		f.insert(t, oid, v, "Title "+v, "text")
	}
	src := &counting{src: f.src}
	// go-redis dials a refused port 5 times, 100 ms apart, before a call
	// fails; one quick redial is enough to show the outage to the Cache.
	rdb := redis.NewClient(&redis.Options{Addr: env.Mini.Addr(), DialerRetries: 1, DialerRetryTimeout: time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	c := newCache(t, src, contextcache.Config{Redis: rdb, Prefix: env.Prefix})
	ctx := testCtx(t)
	get := func(video string, tier contextcache.Tier) {
		t.Helper()
		// Each call must return well before the test's context ends.
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		r, err := c.Get(cctx, course, video)
		if err != nil || r.Tier != tier || r.Document.Title != "Title "+video {
			t.Fatalf("Get(%s) = %q from %v, %v; want it from %v", video, r.Document.Title, r.Tier, err, tier)
		}
	}
	get("v1", contextcache.TierSource)

	env.Mini.SetError("LOADING Redis is loading the dataset in memory")
	get("v1", contextcache.TierL1)
	get("v2", contextcache.TierSource)
	if err := c.Invalidate(ctx, course, "v4"); !errors.Is(err, contextcache.ErrUnavailable) {
		t.Fatalf("Invalidate with Redis failing: %v; want ErrUnavailable", err)
	}

	env.Mini.Close() // connections refused from now on
	get("v1", contextcache.TierL1)
	get("v3", contextcache.TierSource)
	if n := src.n.Load(); n != 3 {
		t.Fatalf("Source.Load called %d times; want 3", n)
	}
	if s := c.Stats(); s.RedisErrors < 2 {
		t.Fatalf("Stats().RedisErrors = %d; want >= 2", s.RedisErrors)
	}

	// Redis comes back: L2 is written again.
	if err := env.Mini.Restart(); err != nil {
		t.Fatal(err)
	}
	env.Mini.SetError("")
	get("v4", contextcache.TierSource)
	other := newCache(t, src, contextcache.Config{Redis: env.NewClient(), Prefix: env.Prefix})
	if r, err := other.Get(ctx, course, "v4"); err != nil || r.Tier != contextcache.TierL2 {
		t.Fatalf("other instance after Redis recovered: %v, %v; want an L2 hit", r.Tier, err)
	}
}
