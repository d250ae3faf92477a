package threads_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/threads"
	"github.com/chatscale/chatscale/threads/threadstest"
)

func newMemory(t testing.TB, cfg threads.Config) *threads.MemoryStore {
	t.Helper()
	st, err := threads.NewMemory(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func TestMemoryConformance(t *testing.T) {
	threadstest.Run(t, func(t *testing.T, cfg threads.Config) threadstest.Harness {
		clock := newFakeClock()
		cfg.Now = clock.Now
		return threadstest.Harness{Store: newMemory(t, cfg), Now: clock.Now, Advance: clock.Advance}
	})
}

func TestMemoryConformanceRealClock(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for real TTLs")
	}
	threadstest.Run(t, func(t *testing.T, cfg threads.Config) threadstest.Harness {
		return threadstest.Harness{Store: newMemory(t, cfg)}
	})
}

func TestMemoryZeroValue(t *testing.T) {
	ctx := context.Background()
	var st threads.MemoryStore
	defer st.Close()
	if _, err := st.Find(ctx, "u", "c"); !errors.Is(err, threads.ErrNotFound) {
		t.Fatalf("Find on a zero MemoryStore = %v; want ErrNotFound", err)
	}
	if s := st.Stats(); s.Threads != 0 {
		t.Fatalf("Stats after Find = %+v; want no thread", s)
	}
	sess, err := st.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c", VideoURL: "v"})
	if err != nil || !sess.Created {
		t.Fatalf("Open on a zero MemoryStore = %+v, %v", sess, err)
	}
	if err := st.Append(ctx, sess.Thread.ID, threads.Message{Role: threads.RoleUser, Content: "hi"}); err != nil {
		t.Fatal(err)
	}
	h, err := st.History(ctx, sess.Thread.ID, 0)
	if err != nil || len(h) != 1 || h[0].Content != "hi" {
		t.Fatalf("History = %v, %v", h, err)
	}
}

func TestMemoryEvictsLeastRecentlyWritten(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	st := newMemory(t, threads.Config{MaxThreads: 3, Shards: 4, Now: clock.Now})
	ids := map[string]string{}
	for _, c := range []string{"a", "b", "c"} {
		th, err := st.GetOrCreate(ctx, "u", c)
		if err != nil {
			t.Fatal(err)
		}
		ids[c] = th.ID
		clock.Advance(time.Second)
	}
	// Writing to "a" makes "b" the least recently written.
	if err := st.Append(ctx, ids["a"], threads.Message{Role: threads.RoleUser, Content: "x"}); err != nil {
		t.Fatal(err)
	}
	// Reads do not count.
	if _, err := st.Get(ctx, ids["b"]); err != nil {
		t.Fatal(err)
	}
	if th, err := st.Find(ctx, "u", "b"); err != nil || th.ID != ids["b"] {
		t.Fatalf("Find(u, b) = %+v, %v; want thread %q", th, err, ids["b"])
	}
	if _, err := st.GetOrCreate(ctx, "u", "d"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, ids["b"]); !errors.Is(err, threads.ErrNotFound) {
		t.Fatalf("Get of the least recently written thread: %v; want ErrNotFound", err)
	}
	for _, c := range []string{"a", "c"} {
		if _, err := st.Get(ctx, ids[c]); err != nil {
			t.Fatalf("thread %s was evicted: %v", c, err)
		}
	}
	if s := st.Stats(); s.Threads != 3 || s.Evicted != 1 {
		t.Fatalf("Stats = %+v; want 3 threads, 1 evicted", s)
	}
}

func TestMemoryBoundHoldsAcrossShards(t *testing.T) {
	ctx := context.Background()
	st := newMemory(t, threads.Config{MaxThreads: 100, Shards: 8})
	for i := range 1000 {
		if _, err := st.GetOrCreate(ctx, fmt.Sprint("user", i), "c"); err != nil {
			t.Fatal(err)
		}
	}
	if s := st.Stats(); s.Threads > 100 || s.Threads+int(s.Evicted) != 1000 {
		t.Fatalf("Stats = %+v; want at most 100 threads and the rest evicted", s)
	}
}

func TestMemoryExpiredThreadsMakeRoomFirst(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	st := newMemory(t, threads.Config{MaxThreads: 2, Shards: 1, TTL: time.Hour, Now: clock.Now, SweepInterval: -1})
	old, _ := st.GetOrCreate(ctx, "u", "old")
	clock.Advance(30 * time.Minute)
	st.GetOrCreate(ctx, "u", "mid")
	clock.Advance(31 * time.Minute)
	st.GetOrCreate(ctx, "u", "new")
	if s := st.Stats(); s.Threads != 2 || s.Expired != 1 || s.Evicted != 0 {
		t.Fatalf("Stats = %+v; want the expired thread removed, none evicted", s)
	}
	if _, err := st.Get(ctx, old.ID); !errors.Is(err, threads.ErrNotFound) {
		t.Fatalf("Get(expired) = %v", err)
	}
}

func TestMemoryCloseIsIdempotent(t *testing.T) {
	ctx := context.Background()
	st, err := threads.NewMemory(threads.Config{})
	if err != nil {
		t.Fatal(err)
	}
	th, err := st.GetOrCreate(ctx, "u", "c")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := st.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	if _, err := st.Get(ctx, th.ID); !errors.Is(err, threads.ErrClosed) {
		t.Fatalf("Get after Close = %v; want ErrClosed", err)
	}
	if _, err := st.GetOrCreate(ctx, "u", "c"); !errors.Is(err, threads.ErrClosed) {
		t.Fatalf("GetOrCreate after Close = %v; want ErrClosed", err)
	}
	if _, err := st.Find(ctx, "u", "c"); !errors.Is(err, threads.ErrClosed) {
		t.Fatalf("Find after Close = %v; want ErrClosed", err)
	}
	var zero threads.MemoryStore
	if err := zero.Close(); err != nil {
		t.Fatalf("Close of a zero store: %v", err)
	}
}

// sweeperRunning reports whether a sweeper goroutine exists.
func sweeperRunning() bool {
	buf := make([]byte, 1<<20)
	return strings.Contains(string(buf[:runtime.Stack(buf, true)]), "threads.(*MemoryStore).sweepLoop")
}

// waitFor polls cond until it holds or five seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestMemorySweeperStartsLazilyAndCloseStopsIt(t *testing.T) {
	ctx := context.Background()
	waitFor(t, "no sweeper from other tests", func() bool { return !sweeperRunning() })
	st, err := threads.NewMemory(threads.Config{SweepInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, "x.y"); !errors.Is(err, threads.ErrNotFound) {
		t.Fatal(err)
	}
	if sweeperRunning() {
		t.Fatal("a sweeper runs before the first write")
	}
	if _, err := st.GetOrCreate(ctx, "u", "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a sweeper after the first write", sweeperRunning)
	st.Close()
	waitFor(t, "the sweeper to exit after Close", func() bool { return !sweeperRunning() })

	never, err := threads.NewMemory(threads.Config{TTL: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer never.Close()
	if _, err := never.GetOrCreate(ctx, "u", "c"); err != nil {
		t.Fatal(err)
	}
	if sweeperRunning() {
		t.Fatal("a sweeper runs although threads never expire")
	}
}

func TestMemorySweeperRemovesExpiredThreads(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	st := newMemory(t, threads.Config{TTL: time.Hour, Now: clock.Now, SweepInterval: time.Millisecond})
	for i := range 10 {
		if _, err := st.GetOrCreate(ctx, fmt.Sprint("u", i), "c"); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(30 * time.Minute)
	keep, _ := st.GetOrCreate(ctx, "keep", "c")
	clock.Advance(31 * time.Minute)
	waitFor(t, "the sweeper to remove 10 expired threads", func() bool { return st.Stats().Expired == 10 })
	if s := st.Stats(); s.Threads != 1 {
		t.Fatalf("Stats = %+v; want 1 thread left", s)
	}
	if _, err := st.Get(ctx, keep.ID); err != nil {
		t.Fatalf("the live thread was swept: %v", err)
	}
}

func TestMemoryConfigErrors(t *testing.T) {
	for _, cfg := range []threads.Config{{Shards: -1}} {
		if _, err := threads.NewMemory(cfg); !errors.Is(err, chatscale.ErrInvalidConfig) {
			t.Fatalf("NewMemory(%+v) = %v; want ErrInvalidConfig", cfg, err)
		}
	}
}

func TestMemoryContextCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	st := newMemory(t, threads.Config{})
	if _, err := st.GetOrCreate(ctx, "u", "c"); !errors.Is(err, context.Canceled) {
		t.Fatalf("GetOrCreate with a canceled context = %v", err)
	}
}

// idleThreadBytes measures the heap held per idle thread (no messages,
// 12-byte user and 10-byte course IDs) over n threads.
func idleThreadBytes(tb testing.TB, n int) float64 {
	ctx := context.Background()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	st, err := threads.NewMemory(threads.Config{MaxThreads: n, SweepInterval: -1})
	if err != nil {
		tb.Fatal(err)
	}
	for i := range n {
		if _, err := st.GetOrCreate(ctx, fmt.Sprintf("user-%07d", i), fmt.Sprintf("course-%03d", i%1000)); err != nil {
			tb.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if got := st.Stats().Threads; got != n {
		tb.Fatalf("store holds %d threads; want %d", got, n)
	}
	runtime.KeepAlive(st)
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
}

func TestMemoryPerIdleThreadUnder1KiB(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 100k threads")
	}
	b := idleThreadBytes(t, 100_000)
	t.Logf("heap per idle thread: %.0f B", b)
	if b >= 1024 {
		t.Fatalf("heap per idle thread = %.0f B; want under 1 KiB", b)
	}
}

// storeOnly hides every method of a store but Store's, as a third-party
// store written against Store alone would.
type storeOnly struct{ threads.Store }

// TestConformanceWithoutFinder runs the suite on a store that does not
// implement threads.Finder: the Find subtests skip, the others pass.
func TestConformanceWithoutFinder(t *testing.T) {
	if _, ok := threads.Store(storeOnly{}).(threads.Finder); ok {
		t.Fatal("storeOnly implements threads.Finder")
	}
	threadstest.Run(t, func(t *testing.T, cfg threads.Config) threadstest.Harness {
		clock := newFakeClock()
		cfg.Now = clock.Now
		return threadstest.Harness{Store: storeOnly{newMemory(t, cfg)}, Now: clock.Now, Advance: clock.Advance}
	})
}
