package contextcache_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/internal/testutil"
)

// perCourse is a Source whose transcript of a video depends on the course
// asking: the same URL in two courses is two transcripts. Loads block
// until release is closed, so that a test can hold every first load open
// until all its callers have arrived.
type perCourse struct {
	release chan struct{}
	mu      sync.Mutex
	loads   map[string]int // by course
}

func newPerCourse() *perCourse {
	return &perCourse{release: make(chan struct{}), loads: map[string]int{}}
}

func courseText(course, video string) string {
	return "transcript of " + video + " as taught in " + course
}

func (s *perCourse) Load(ctx context.Context, course, video string) (contextcache.Document, error) {
	s.mu.Lock()
	s.loads[course]++
	s.mu.Unlock()
	select {
	case <-s.release:
	case <-ctx.Done():
		return contextcache.Document{}, ctx.Err()
	}
	// The Source does not fill CourseID and VideoURL: the Cache must.
	return contextcache.Document{
		Title:    "title in " + course,
		Text:     courseText(course, video),
		Segments: []contextcache.Segment{{End: time.Second, Text: "segment in " + course}},
	}, nil
}

func (s *perCourse) counts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.loads))
	for k, v := range s.loads {
		out[k] = v
	}
	return out
}

// checkCourseDoc reports how r differs from the transcript of video in
// course, or "" when it is that transcript.
func checkCourseDoc(r contextcache.Result, course, video string) string {
	d := r.Document
	if d.CourseID != course || d.VideoURL != video || d.Title != "title in "+course ||
		d.Text != courseText(course, video) || len(d.Segments) != 1 || d.Segments[0].Text != "segment in "+course {
		return fmt.Sprintf("got course %q title %q text %q segments %+v from %v; want the transcript of %q",
			d.CourseID, d.Title, d.Text, d.Segments, r.Tier, course)
	}
	return ""
}

// The same video URL in two courses is two transcripts at every tier and
// in every shared load: the in-process singleflight, the Redis lock of the
// cross-instance load, L1 and L2. Concurrent first loads of (A, url) and
// (B, url) on two instances sharing Redis must each get their own course's
// transcript, with one Source load per course for the cluster.
func TestSameVideoInTwoCoursesIsTwoTranscripts(t *testing.T) {
	t.Parallel()
	env := testutil.Redis(t)
	const video = "https://cdn.example/v/shared-intro.mp4"
	courses := [2]string{"course-A", "course-B"}
	src := newPerCourse()
	clk := newClock() // stands still: no lock wait runs out, nothing expires
	cfg := func() contextcache.Config {
		return contextcache.Config{
			Redis: env.NewClient(), Prefix: env.Prefix, Now: clk.Now,
			LockTTL: time.Minute, LockWait: time.Minute, LoadTimeout: time.Minute,
		}
	}
	a, b := newCache(t, src, cfg()), newCache(t, src, cfg())
	caches := []*contextcache.Cache{a, b}
	ctx := testCtx(t)

	// Distinct keys in Redis, value and lock, for the two courses.
	va, la := contextcache.RedisKeys(a, courses[0], video)
	vb, lb := contextcache.RedisKeys(a, courses[1], video)
	if va == vb || la == lb {
		t.Fatalf("courses share Redis keys: value %q / %q, lock %q / %q", va, vb, la, lb)
	}

	// Concurrent first loads: per instance and course, several callers.
	const perCacheCourse = 8
	const total = 2 * 2 * perCacheCourse
	type got struct {
		course string
		r      contextcache.Result
		err    error
	}
	results := make(chan got, total)
	start := make(chan struct{})
	for i := range total {
		c, course := caches[i%2], courses[(i/2)%2]
		go func() {
			<-start
			r, err := c.Get(ctx, course, video)
			results <- got{course, r, err}
		}()
	}
	close(start)
	// Hold the loads until every Get has missed, one instance loads each
	// course and the other waits on that course's Redis lock: then the
	// loads of both courses overlap in each process and in Redis.
	misses := func() (n uint64) {
		for _, c := range caches {
			n += c.Stats().Misses
		}
		return n
	}
	lockWaits := func() (n uint64) {
		for _, c := range caches {
			n += c.Stats().LockWaits
		}
		return n
	}
	overlapped := testutil.Eventually(10*time.Second, func() bool {
		n := src.counts()
		return misses() == total && n[courses[0]] == 1 && n[courses[1]] == 1 && lockWaits() == 2
	})
	close(src.release)
	for range total {
		g := <-results
		if g.err != nil {
			t.Errorf("Get(%q) during the first loads: %v", g.course, g.err)
		} else if diff := checkCourseDoc(g.r, g.course, video); diff != "" {
			t.Errorf("Get(%q) during the first loads: %s", g.course, diff)
		}
	}
	if !overlapped {
		t.Errorf("the first loads did not overlap as expected: %d misses (want %d), Source loads %v (want 1 per course), %d lock waits (want 2)",
			misses(), total, src.counts(), lockWaits())
	}
	if t.Failed() {
		t.FailNow()
	}

	// L1 hits on both instances.
	for _, c := range caches {
		for _, course := range courses {
			r, err := c.Get(ctx, course, video)
			if err != nil || r.Tier != contextcache.TierL1 {
				t.Fatalf("Get(%q) after the loads: %v from %v; want an L1 hit", course, err, r.Tier)
			}
			if diff := checkCourseDoc(r, course, video); diff != "" {
				t.Fatalf("L1 hit for %q: %s", course, diff)
			}
		}
	}
	// L2 hits on a fresh instance, in both orders.
	for _, order := range [][2]string{courses, {courses[1], courses[0]}} {
		fresh := newCache(t, src, cfg())
		for _, course := range order {
			r, err := fresh.Get(ctx, course, video)
			if err != nil || r.Tier != contextcache.TierL2 || r.Stale {
				t.Fatalf("fresh instance Get(%q): %v from %v (stale %v); want a fresh L2 hit", course, err, r.Tier, r.Stale)
			}
			if diff := checkCourseDoc(r, course, video); diff != "" {
				t.Fatalf("L2 hit for %q: %s", course, diff)
			}
		}
		caches = append(caches, fresh)
	}

	if n := src.counts(); len(n) != 2 || n[courses[0]] != 1 || n[courses[1]] != 1 {
		t.Fatalf("Source loads by course %v; want one per course for the cluster", n)
	}
	for i, c := range caches {
		if s := c.Stats(); s.CorruptL2 != 0 || s.LockTimeouts != 0 || s.RedisErrors != 0 {
			t.Errorf("instance %d: Stats() = %+v; want no corrupt L2 value, no lock timeout, no Redis error", i, s)
		}
	}
}

// Invalidating a video in one course leaves the same URL in another
// course alone, in L1 on every started instance and in L2.
func TestInvalidateOneCourseKeepsTheOther(t *testing.T) {
	t.Parallel()
	env := testutil.Redis(t)
	const video = "https://cdn.example/v/shared-intro.mp4"
	src := newPerCourse()
	close(src.release)
	cfg := func() contextcache.Config { return contextcache.Config{Redis: env.NewClient(), Prefix: env.Prefix} }
	a, b := newCache(t, src, cfg()), newCache(t, src, cfg())
	ctx := testCtx(t)
	for _, c := range []*contextcache.Cache{a, b} {
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		for _, course := range []string{"course-A", "course-B"} {
			if _, err := c.Get(ctx, course, video); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := a.Invalidate(ctx, "course-A", video); err != nil {
		t.Fatal(err)
	}
	if !testutil.Eventually(10*time.Second, func() bool { return b.Stats().InvalidationsReceived >= 1 }) {
		t.Fatal("b received no invalidation")
	}
	for name, c := range map[string]*contextcache.Cache{"a": a, "b": b} {
		r, err := c.Get(ctx, "course-B", video)
		if err != nil || r.Tier != contextcache.TierL1 {
			t.Fatalf("%s.Get(course-B) after invalidating course-A: %v from %v; want its L1 copy", name, err, r.Tier)
		}
		if diff := checkCourseDoc(r, "course-B", video); diff != "" {
			t.Fatalf("%s.Get(course-B): %s", name, diff)
		}
	}
	r, err := newCache(t, src, cfg()).Get(ctx, "course-B", video)
	if err != nil || r.Tier != contextcache.TierL2 {
		t.Fatalf("fresh instance Get(course-B) after invalidating course-A: %v from %v; want the L2 copy", err, r.Tier)
	}
	// course-A itself is gone from L1 (on b too) and from L2.
	r, err = b.Get(ctx, "course-A", video)
	if err != nil || r.Tier != contextcache.TierSource {
		t.Fatalf("b.Get(course-A) after its invalidation: %v from %v; want a load from the Source", err, r.Tier)
	}
	if diff := checkCourseDoc(r, "course-A", video); diff != "" {
		t.Fatalf("b.Get(course-A): %s", diff)
	}
}

// An Invalidate that overtakes a running load leaves no old copy: the load
// read the transcript before it changed, so afterwards this instance
// serves the new one, whether the Get starts while that load still runs
// (it must not join it) or after it ended (its result must not land in L1,
// nor, with Redis, in L2, where another instance would find it). Before
// the fix the overtaken load wrote the old transcript to L2 after
// Invalidate had deleted it, to be served for a whole L2TTL.
func TestInvalidateDuringLoadLeavesNoOldCopy(t *testing.T) {
	t.Parallel()
	for _, withRedis := range []bool{false, true} {
		t.Run(fmt.Sprintf("redis=%v", withRedis), func(t *testing.T) {
			t.Parallel()
			var cfg func() contextcache.Config
			if withRedis {
				env := testutil.Redis(t)
				cfg = func() contextcache.Config { return contextcache.Config{Redis: env.NewClient(), Prefix: env.Prefix} }
			} else {
				cfg = func() contextcache.Config { return contextcache.Config{} }
			}
			var mu sync.Mutex
			title, calls := "old", 0
			entered := make(chan struct{})
			release := make(chan struct{})
			src := contextcache.SourceFunc(func(ctx context.Context, _, _ string) (contextcache.Document, error) {
				mu.Lock()
				read := title
				calls++
				first := calls == 1
				mu.Unlock()
				if first { // holds the first load until the transcript has changed
					close(entered)
					select {
					case <-release:
					case <-ctx.Done():
						return contextcache.Document{}, ctx.Err()
					}
				}
				return contextcache.Document{Title: read}, nil
			})
			c := newCache(t, src, cfg())
			ctx := testCtx(t)
			overtaken := make(chan contextcache.Result, 1)
			go func() {
				r, _ := c.Get(ctx, "c", "v")
				overtaken <- r
			}()
			<-entered
			mu.Lock()
			title = "new"
			mu.Unlock()
			if err := c.Invalidate(ctx, "c", "v"); err != nil {
				t.Fatal(err)
			}
			// While the overtaken load still runs: a load of its own.
			during, cancel := context.WithTimeout(ctx, 5*time.Second)
			r, err := c.Get(during, "c", "v")
			cancel()
			if err != nil || r.Document.Title != "new" {
				t.Fatalf("Get after Invalidate, the old load running: %q from %v, %v; want new", r.Document.Title, r.Tier, err)
			}
			close(release)
			if r := <-overtaken; r.Document.Title != "old" {
				t.Fatalf("the overtaken Get: %q; want the copy it loaded", r.Document.Title)
			}
			// After the overtaken load ended.
			if r, err := c.Get(ctx, "c", "v"); err != nil || r.Document.Title != "new" {
				t.Fatalf("Get after the old load ended: %q from %v, %v; want new", r.Document.Title, r.Tier, err)
			}
			if withRedis {
				if r, err := newCache(t, src, cfg()).Get(ctx, "c", "v"); err != nil || r.Document.Title != "new" || r.Tier != contextcache.TierL2 {
					t.Fatalf("another instance after Invalidate: %q from %v, %v; want new from l2", r.Document.Title, r.Tier, err)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if calls != 2 {
				t.Fatalf("Source.Load called %d times; want 2 (the overtaken load and one after Invalidate)", calls)
			}
		})
	}
}

// A not-found answer is remembered for NegativeTTL, in L1 (here longer
// than L1TTL, which must not cut it short) and in L2 (where it must not
// outlive NegativeTTL: a transcript added meanwhile is then found).
func TestNegativeAnswerLastsNegativeTTL(t *testing.T) {
	t.Parallel()
	env := testutil.Redis(t)
	var exists sync.Mutex
	found := false
	src := &counting{src: contextcache.SourceFunc(func(_ context.Context, course, video string) (contextcache.Document, error) {
		exists.Lock()
		defer exists.Unlock()
		if !found {
			return contextcache.Document{}, contextcache.ErrNotFound
		}
		return contextcache.Document{Title: "added"}, nil
	})}
	clk := newClock()
	const negTTL = 10 * time.Minute
	ctx := testCtx(t)

	t.Run("L1", func(t *testing.T) {
		src := &counting{src: src.src}
		c := newCache(t, src, contextcache.Config{Now: clk.Now, L1TTL: time.Minute, NegativeTTL: negTTL})
		if _, err := c.Get(ctx, "c", "v"); !isNotFound(err) {
			t.Fatalf("first Get: %v; want ErrNotFound", err)
		}
		start := clk.Now()
		clk.Set(start.Add(2 * time.Minute)) // past L1TTL, within NegativeTTL
		if _, err := c.Get(ctx, "c", "v"); !isNotFound(err) || src.n.Load() != 1 {
			t.Fatalf("Get within NegativeTTL: %v after %d Source calls; want ErrNotFound from L1, 1 call", err, src.n.Load())
		}
		clk.Set(start.Add(negTTL + time.Second))
		if _, err := c.Get(ctx, "c", "v"); !isNotFound(err) || src.n.Load() != 2 {
			t.Fatalf("Get past NegativeTTL: %v after %d Source calls; want the Source asked again", err, src.n.Load())
		}
	})

	t.Run("L2", func(t *testing.T) {
		src := &counting{src: src.src}
		cfg := contextcache.Config{Redis: env.Client, Prefix: env.Prefix, Now: clk.Now, NegativeTTL: time.Minute}
		if _, err := newCache(t, src, cfg).Get(ctx, "c", "v"); !isNotFound(err) {
			t.Fatalf("first Get: %v; want ErrNotFound", err)
		}
		start := clk.Now()
		clk.Set(start.Add(time.Minute - time.Second))
		b := newCache(t, src, cfg)
		if _, err := b.Get(ctx, "c", "v"); !isNotFound(err) || src.n.Load() != 1 || b.Stats().NegativeHits != 1 {
			t.Fatalf("another instance within NegativeTTL: %v, %d Source calls, %+v; want the L2 marker", err, src.n.Load(), b.Stats())
		}
		exists.Lock()
		found = true
		exists.Unlock()
		clk.Set(start.Add(time.Minute + time.Second))
		r, err := newCache(t, src, cfg).Get(ctx, "c", "v")
		if err != nil || r.Tier != contextcache.TierSource || r.Document.Title != "added" {
			t.Fatalf("another instance past NegativeTTL: %q from %v, %v; want the added transcript from the Source", r.Document.Title, r.Tier, err)
		}
	})
}

func isNotFound(err error) bool { return errors.Is(err, contextcache.ErrNotFound) }
