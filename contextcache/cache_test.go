package contextcache_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/chatscale/chatscale/contextcache"
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
	env := testutil.Redis(t)
	f := newFixture(t, contextcache.MongoConfig{})
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
		eventually(20*time.Second, func() bool { return lockWaits() >= 3 })
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
	env := testutil.Redis(t)
	f := newFixture(t, contextcache.MongoConfig{})
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
	env := testutil.Redis(t)
	f := newFixture(t, contextcache.MongoConfig{})
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
	f := newFixture(t, contextcache.MongoConfig{})
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
	env := testutil.Redis(t)
	f := newFixture(t, contextcache.MongoConfig{})
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
	f := newStoppableFixture(t, contextcache.MongoConfig{})
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
	env := testutil.Redis(t)
	f := newStoppableFixture(t, contextcache.MongoConfig{})
	course := f.insert(t, bson.NewObjectID(), "v", "Cached title", "text")
	clk := newClock()
	cfg := contextcache.Config{Redis: env.Client, Prefix: env.Prefix, Now: clk.Now, L2Jitter: -1}
	a := newCache(t, f.src, cfg)
	ctx := testCtx(t)

	if r, err := a.Get(ctx, course, "v"); err != nil || r.Tier != contextcache.TierSource {
		t.Fatalf("first Get: %v from %v, %v", r.Document.Title, r.Tier, err)
	}
	value, lock := contextcache.RedisKeys(a, course, "v")
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
	if n := env.Client.Exists(ctx, lock).Val(); n != 0 {
		t.Fatalf("the load lock is still held after the failed load")
	}

	// Past MaxStale the copy is no longer served, even while Redis has it.
	clk.Advance(contextcache.DefaultMaxStale)
	c := newCache(t, f.src, cfg)
	if _, err := c.Get(ctx, course, "v"); !errors.Is(err, contextcache.ErrUnavailable) {
		t.Fatalf("Get past MaxStale: %v; want ErrUnavailable", err)
	}
}

func TestRetrySourceAfterFailureWhenMongoStops(t *testing.T) {
	f := newStoppableFixture(t, contextcache.MongoConfig{})
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
	env := testutil.Redis(t)
	f := newStoppableFixture(t, contextcache.MongoConfig{})
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

func TestRetrySourceAfterEndsOnInvalidateAndCanBeDisabled(t *testing.T) {
	boom := errors.New("boom")
	var fail atomic.Bool
	fail.Store(true)
	src := &counting{src: contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
		if fail.Load() {
			return contextcache.Document{}, boom
		}
		return contextcache.Document{Title: "ok"}, nil
	})}
	clk := newClock()
	reg := prometheus.NewRegistry()
	c := newCache(t, src, contextcache.Config{Now: clk.Now, Registerer: reg})
	ctx := testCtx(t)
	for i, want := range []int64{1, 1} {
		if _, err := c.Get(ctx, "c", "v"); !errors.Is(err, boom) {
			t.Fatalf("Get #%d: %v; want the Source's error", i, err)
		}
		if n := src.n.Load(); n != want {
			t.Fatalf("Get #%d: Source.Load called %d times; want %d", i, n, want)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	skips := -1.0
	for _, mf := range mfs {
		if mf.GetName() == "contextcache_source_skips_total" {
			skips = mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	if skips != 1 {
		t.Fatalf("contextcache_source_skips_total = %v; want 1", skips)
	}
	// An invalidation says the data changed: the next miss asks the Source.
	fail.Store(false)
	if err := c.Invalidate(ctx, "c", "v"); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Get(ctx, "c", "v"); err != nil || r.Document.Title != "ok" || src.n.Load() != 2 {
		t.Fatalf("Get after Invalidate: %+v, %v, %d Source calls; want a load from the Source", r, err, src.n.Load())
	}

	// Negative RetrySourceAfter: every miss calls the Source.
	fail.Store(true)
	src.n.Store(0)
	d := newCache(t, src, contextcache.Config{Now: clk.Now, RetrySourceAfter: -1})
	for i := range 3 {
		if _, err := d.Get(ctx, "c", "v"); !errors.Is(err, boom) {
			t.Fatalf("Get #%d: %v; want the Source's error", i, err)
		}
	}
	if n := src.n.Load(); n != 3 {
		t.Fatalf("Source.Load called %d times with RetrySourceAfter < 0; want 3", n)
	}
	if s := d.Stats(); s.SourceSkips != 0 {
		t.Fatalf("d.Stats().SourceSkips = %d; want 0", s.SourceSkips)
	}
}

func TestInvalidationReachesAnotherInstance(t *testing.T) {
	env := testutil.Redis(t)
	f := newFixture(t, contextcache.MongoConfig{})
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
	ok := eventually(10*time.Second, func() bool {
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

func TestSubscriberResubscribesAfterRedisRestart(t *testing.T) {
	env := testutil.MiniredisEnv(t)
	src := contextcache.SourceFunc(func(_ context.Context, course, video string) (contextcache.Document, error) {
		return contextcache.Document{Title: video}, nil
	})
	ctx := testCtx(t)
	a := newCache(t, src, contextcache.Config{Redis: env.NewClient(), Prefix: env.Prefix})
	b := newCache(t, src, contextcache.Config{Redis: env.NewClient(), Prefix: env.Prefix})
	if err := b.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}

	env.Mini.Close()
	if err := env.Mini.Restart(); err != nil {
		t.Fatalf("restarting miniredis: %v", err)
	}
	// Messages published before b has resubscribed are lost, so publish
	// until one arrives.
	ok := eventually(10*time.Second, func() bool {
		_ = a.Invalidate(ctx, "c", "v")
		return b.Stats().InvalidationsReceived > 0
	})
	if !ok {
		t.Fatal("b received no invalidation after Redis came back")
	}
}

func TestRedisOutageL1KeepsServingMissesGoToSource(t *testing.T) {
	env := testutil.MiniredisEnv(t)
	f := newFixture(t, contextcache.MongoConfig{})
	oid := bson.NewObjectID()
	course := oid.Hex()
	for _, v := range []string{"v1", "v2", "v3", "v4"} {
		f.insert(t, oid, v, "Title "+v, "text")
	}
	src := &counting{src: f.src}
	c := newCache(t, src, contextcache.Config{Redis: env.Client, Prefix: env.Prefix})
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
	if err := c.Invalidate(ctx, course, "v4"); !errors.Is(err, contextcache.ErrRedis) {
		t.Fatalf("Invalidate with Redis failing: %v; want ErrRedis", err)
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

func TestLockWaitRunsOutThenLoadsItself(t *testing.T) {
	env := testutil.Redis(t)
	src := &counting{src: contextcache.SourceFunc(func(_ context.Context, course, video string) (contextcache.Document, error) {
		return contextcache.Document{Title: "t"}, nil
	})}
	c := newCache(t, src, contextcache.Config{Redis: env.Client, Prefix: env.Prefix, LockWait: 50 * time.Millisecond})
	ctx := testCtx(t)
	// Another instance holds the lock and never fills L2.
	_, lock := contextcache.RedisKeys(c, "c", "v")
	if err := env.Client.Set(ctx, lock, "someone-else", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	r, err := c.Get(ctx, "c", "v")
	if err != nil || r.Tier != contextcache.TierSource {
		t.Fatalf("Get: %v, %v; want a load from the Source", r.Tier, err)
	}
	if s := c.Stats(); s.LockWaits != 1 || s.LockTimeouts != 1 || src.n.Load() != 1 {
		t.Fatalf("Stats() = %+v, loads %d; want 1 lock wait, 1 timeout, 1 load", s, src.n.Load())
	}
	if owner, _ := env.Client.Get(ctx, lock).Result(); owner != "someone-else" {
		t.Fatalf("lock owner = %q; the other instance's lock must stay", owner)
	}
}

func TestGetRejectsBadKeysWithoutLoading(t *testing.T) {
	src := &counting{src: contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
		return contextcache.Document{}, nil
	})}
	c := newCache(t, src, contextcache.Config{})
	ctx := testCtx(t)
	for _, k := range [][2]string{
		{"", "v"}, {"c", ""}, {"c\x00", "v"}, {"c", "v\n"}, {"\xff", "v"}, {"c", strings.Repeat("x", contextcache.MaxKeyLen+1)},
	} {
		_, err := c.Get(ctx, k[0], k[1])
		var ke *contextcache.KeyError
		if !errors.Is(err, contextcache.ErrInvalidKey) || !errors.As(err, &ke) {
			t.Errorf("Get(%q, %q) = %v; want a *KeyError", k[0], k[1], err)
		}
		if err := c.Invalidate(ctx, k[0], k[1]); !errors.Is(err, contextcache.ErrInvalidKey) {
			t.Errorf("Invalidate(%q, %q) = %v; want ErrInvalidKey", k[0], k[1], err)
		}
	}
	// ':' and '{' are fine: Redis keys hold a digest of the IDs.
	if _, err := c.Get(ctx, "a:{b}", "https://x/y?z={1}"); err != nil {
		t.Fatalf("Get with ':' and '{' in IDs: %v", err)
	}
	if n := src.n.Load(); n != 1 {
		t.Fatalf("Source.Load called %d times; want 1", n)
	}
}

func TestSourceErrorsAreTypedAndNotCached(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	boom := errors.New("boom")
	src := &counting{src: contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
		if fail.Load() {
			return contextcache.Document{}, boom
		}
		return contextcache.Document{Title: "ok"}, nil
	})}
	clk := newClock()
	c := newCache(t, src, contextcache.Config{Now: clk.Now})
	ctx := testCtx(t)
	_, err := c.Get(ctx, "c", "v")
	if !errors.Is(err, contextcache.ErrUnavailable) || !errors.Is(err, boom) {
		t.Fatalf("Get: %v; want ErrUnavailable wrapping the Source's error", err)
	}
	fail.Store(false)
	clk.Advance(contextcache.DefaultRetrySourceAfter) // the failure is not retried before
	if r, err := c.Get(ctx, "c", "v"); err != nil || r.Document.Title != "ok" || r.Tier != contextcache.TierSource {
		t.Fatalf("Get after the Source recovered: %+v, %v", r, err)
	}
}

func TestCallerContextEndsWaitNotSharedLoad(t *testing.T) {
	release := make(chan struct{})
	src := &counting{src: contextcache.SourceFunc(func(ctx context.Context, _, _ string) (contextcache.Document, error) {
		select {
		case <-release:
			return contextcache.Document{Title: "done"}, nil
		case <-ctx.Done():
			return contextcache.Document{}, ctx.Err()
		}
	})}
	c := newCache(t, src, contextcache.Config{})

	// A caller that has already left starts no load.
	gone, cancelGone := context.WithCancel(testCtx(t))
	cancelGone()
	if _, err := c.Get(gone, "c", "v"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Get with a canceled context: %v; want context.Canceled", err)
	}
	if s := c.Stats(); s.Misses != 0 || s.Loads != 0 {
		t.Fatalf("Stats() after a Get with a canceled context = %+v; want no miss and no load", s)
	}

	// A caller that leaves while the load runs gets its context's error;
	// the load goes on for the others.
	ctx, cancel := context.WithCancel(testCtx(t))
	got := make(chan error, 1)
	go func() {
		_, err := c.Get(ctx, "c", "v")
		got <- err
	}()
	if !eventually(10*time.Second, func() bool { return src.n.Load() == 1 }) {
		t.Fatal("the load did not start")
	}
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("Get whose context ended during the load: %v; want context.Canceled", err)
	}
	close(release)
	r, err := c.Get(testCtx(t), "c", "v")
	if err != nil || r.Document.Title != "done" {
		t.Fatalf("Get: %+v, %v", r, err)
	}
	if n := src.n.Load(); n != 1 {
		t.Fatalf("Source.Load called %d times; want 1 (the load went on after the first caller left)", n)
	}
}

func TestL1BoundedByBytes(t *testing.T) {
	text := strings.Repeat("x", 10_000)
	src := contextcache.SourceFunc(func(_ context.Context, _, video string) (contextcache.Document, error) {
		return contextcache.Document{Text: text}, nil
	})
	c := newCache(t, src, contextcache.Config{L1MaxBytes: 100_000})
	ctx := testCtx(t)
	for i := range 100 {
		if _, err := c.Get(ctx, "c", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if s := c.Stats(); s.L1Bytes > 100_000 || s.L1Entries > 10 {
		t.Fatalf("L1 holds %d entries, %d bytes; want at most 100000 bytes", s.L1Entries, s.L1Bytes)
	}
}

func TestMetricsOnCallerRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	src := contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
		return contextcache.Document{}, nil
	})
	c, err := contextcache.New(src, contextcache.Config{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	for range 3 {
		if _, err := c.Get(ctx, "c", "v"); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			got[name] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	for name, want := range map[string]float64{
		"contextcache_hits_total{tier=l1}": 2,
		"contextcache_misses_total":        1,
		"contextcache_loads_total":         1,
		"contextcache_l1_entries":          1,
	} {
		if got[name] != want {
			t.Errorf("%s = %v; want %v", name, got[name], want)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// Close unregistered the collector: a new cache can take its place.
	c2, err := contextcache.New(src, contextcache.Config{Registerer: reg})
	if err != nil {
		t.Fatalf("New on the registry after Close: %v", err)
	}
	_ = c2.Close()
}

func TestCloseStopsGoroutines(t *testing.T) {
	env := testutil.Redis(t)
	release := make(chan struct{})
	src := contextcache.SourceFunc(func(ctx context.Context, _, _ string) (contextcache.Document, error) {
		select {
		case <-release:
		case <-ctx.Done():
			return contextcache.Document{}, ctx.Err()
		}
		return contextcache.Document{}, nil
	})
	c, err := contextcache.New(src, contextcache.Config{Redis: env.Client, Prefix: env.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := c.Get(ctx, "c", "v") // blocks in the Source
		got <- err
	}()
	if !eventually(10*time.Second, func() bool { return c.Stats().Loads == 1 }) {
		t.Fatal("the load did not start")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; !errors.Is(err, contextcache.ErrClosed) {
		t.Fatalf("Get during Close: %v; want ErrClosed", err)
	}
	if _, err := c.Get(ctx, "c", "other"); !errors.Is(err, contextcache.ErrClosed) {
		t.Fatalf("Get after Close: %v; want ErrClosed", err)
	}
	if err := c.Start(ctx); !errors.Is(err, contextcache.ErrClosed) {
		t.Fatalf("Start after Close: %v; want ErrClosed", err)
	}
	close(release)
	var stacks string
	if !eventually(10*time.Second, func() bool {
		buf := make([]byte, 1<<20)
		stacks = string(buf[:runtime.Stack(buf, true)])
		return !strings.Contains(stacks, "contextcache.(*Cache)")
	}) {
		t.Fatalf("goroutines of the Cache still run after Close:\n%s", stacks)
	}
}

func TestNewRejectsImpossibleConfig(t *testing.T) {
	src := contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
		return contextcache.Document{}, nil
	})
	if _, err := contextcache.New(nil, contextcache.Config{}); !errors.Is(err, contextcache.ErrInvalidConfig) {
		t.Errorf("New(nil Source) = %v; want ErrInvalidConfig", err)
	}
	for _, cfg := range []contextcache.Config{{L1TTL: -1}, {L1MaxBytes: -1}, {L2TTL: -1}, {LockTTL: -1}, {Prefix: "app:{x}:"}} {
		if _, err := contextcache.New(src, cfg); !errors.Is(err, contextcache.ErrInvalidConfig) {
			t.Errorf("New(%+v) = %v; want ErrInvalidConfig", cfg, err)
		}
	}
}
