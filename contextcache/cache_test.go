package contextcache_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/internal/testutil"
)

func TestRetrySourceAfterEndsOnInvalidateAndCanBeDisabled(t *testing.T) {
	t.Parallel()
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
		if mf.GetName() == "ai_chat_contextcache_source_skips_total" {
			skips = mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	if skips != 1 {
		t.Fatalf("ai_chat_contextcache_source_skips_total = %v; want 1", skips)
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

func TestSubscriberResubscribesAfterRedisRestart(t *testing.T) {
	t.Parallel()
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
	ok := testutil.Eventually(10*time.Second, func() bool {
		_ = a.Invalidate(ctx, "c", "v")
		return b.Stats().InvalidationsReceived > 0
	})
	if !ok {
		t.Fatal("b received no invalidation after Redis came back")
	}
}

func TestLockWaitRunsOutThenLoadsItself(t *testing.T) {
	t.Parallel()
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
	t.Parallel()
	src := &counting{src: contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
		return contextcache.Document{}, nil
	})}
	c := newCache(t, src, contextcache.Config{})
	ctx := testCtx(t)
	for _, k := range [][2]string{
		{"", "v"}, {"c", ""}, {"c\x00", "v"}, {"c", "v\n"}, {"\xff", "v"}, {"c", strings.Repeat("x", contextcache.MaxKeyLen+1)},
	} {
		_, err := c.Get(ctx, k[0], k[1])
		field := "CourseID"
		if k[0] == "c" {
			field = "VideoURL"
		}
		var ie *chatscale.InputError
		if !errors.Is(err, chatscale.ErrInvalidInput) || !errors.As(err, &ie) || ie.Package != "contextcache" || ie.Field != field {
			t.Errorf("Get(%q, %q) = %v; want a *chatscale.InputError on %s", k[0], k[1], err, field)
		}
		if err := c.Invalidate(ctx, k[0], k[1]); !errors.Is(err, chatscale.ErrInvalidInput) || !errors.As(err, &ie) || ie.Field != field {
			t.Errorf("Invalidate(%q, %q) = %v; want a *chatscale.InputError on %s", k[0], k[1], err, field)
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
	t.Parallel()
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
	t.Parallel()
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
	if !testutil.Eventually(10*time.Second, func() bool { return src.n.Load() == 1 }) {
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
	t.Parallel()
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

// gathered returns every series of reg as "name{label=value,...}" mapped
// to its value, labels in the registry's order.
func gathered(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			got[name] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return got
}

func TestMetricsOnCallerRegistry(t *testing.T) {
	t.Parallel()
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
	got := gathered(t, reg)
	for name, want := range map[string]float64{
		"ai_chat_contextcache_hits_total{tier=l1}": 2,
		"ai_chat_contextcache_misses_total":        1,
		"ai_chat_contextcache_loads_total":         1,
		"ai_chat_contextcache_l1_entries":          1,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v); want %v", name, v, ok, want)
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

func TestMetricsTwoCachesOneRegistryAndCloseLeavesItAsFound(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	// The host's own metric, which must survive the Caches.
	other := prometheus.NewCounter(prometheus.CounterOpts{Name: "host_requests_total", Help: "The host's."})
	other.Add(3)
	reg.MustRegister(other)
	before := gathered(t, reg)

	src := contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
		return contextcache.Document{}, nil
	})
	cfg := func(instance string) contextcache.Config {
		return contextcache.Config{Registerer: reg, Namespace: "tutor", ConstLabels: prometheus.Labels{"cache": instance}}
	}
	a, err := contextcache.New(src, cfg("a"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := contextcache.New(src, cfg("b"))
	if err != nil {
		t.Fatalf("second Cache with other ConstLabels on the registry: %v", err)
	}
	ctx := testCtx(t)
	for range 2 {
		if _, err := a.Get(ctx, "c", "v"); err != nil {
			t.Fatal(err)
		}
	}
	got := gathered(t, reg)
	for name, want := range map[string]float64{
		"tutor_contextcache_hits_total{cache=a,tier=l1}": 1,
		"tutor_contextcache_hits_total{cache=b,tier=l1}": 0,
		"tutor_contextcache_loads_total{cache=a}":        1,
		"tutor_contextcache_loads_total{cache=b}":        0,
		"tutor_contextcache_l1_bytes{cache=b}":           0,
		"host_requests_total":                            3,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v); want %v", name, v, ok, want)
		}
	}
	for name := range got {
		if strings.HasPrefix(name, "ai_chat_") {
			t.Errorf("series %s ignores Config.Namespace", name)
		}
	}

	// A third Cache with the same ConstLabels as a is refused, and leaves
	// nothing registered.
	if _, err := contextcache.New(src, cfg("a")); err == nil {
		t.Fatal("a Cache with the ConstLabels of another on the same registry was accepted")
	}
	if again := gathered(t, reg); fmt.Sprint(again) != fmt.Sprint(got) {
		t.Fatalf("a refused New changed the registry:\n%v\nwant\n%v", again, got)
	}

	for _, c := range []*contextcache.Cache{a, b, a} { // Close is idempotent
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if after := gathered(t, reg); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("registry after Close:\n%v\nwant it as before New:\n%v", after, before)
	}
}

// TestCloseStopsGoroutines is not parallel: the goroutines of other tests'
// Caches would fail it. Go runs the tests that are not parallel first.
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
	if !testutil.Eventually(10*time.Second, func() bool { return c.Stats().Loads == 1 }) {
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
	if !testutil.Eventually(10*time.Second, func() bool {
		buf := make([]byte, 1<<20)
		stacks = string(buf[:runtime.Stack(buf, true)])
		return !strings.Contains(stacks, "contextcache.(*Cache)")
	}) {
		t.Fatalf("goroutines of the Cache still run after Close:\n%s", stacks)
	}
}

func TestNewRejectsImpossibleConfig(t *testing.T) {
	t.Parallel()
	src := contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
		return contextcache.Document{}, nil
	})
	var ce *chatscale.ConfigError
	if _, err := contextcache.New(nil, contextcache.Config{}); !errors.Is(err, chatscale.ErrInvalidConfig) ||
		!errors.As(err, &ce) || ce.Package != "contextcache" || ce.Field != "src" {
		t.Errorf("New(nil Source) = %v; want a *chatscale.ConfigError on src", err)
	}
	for _, tc := range []struct {
		cfg   contextcache.Config
		field string
	}{
		{contextcache.Config{L1TTL: -1}, "Config.L1TTL"},
		{contextcache.Config{L1MaxBytes: -1}, "Config.L1MaxBytes"},
		{contextcache.Config{L2TTL: -1}, "Config.L2TTL"},
		{contextcache.Config{LockTTL: -1}, "Config.LockTTL"},
		{contextcache.Config{Prefix: "app:{x}:"}, "Config.Prefix"},
		{contextcache.Config{Prefix: "app:}"}, "Config.Prefix"},
	} {
		if _, err := contextcache.New(src, tc.cfg); !errors.Is(err, chatscale.ErrInvalidConfig) ||
			!errors.As(err, &ce) || ce.Package != "contextcache" || ce.Field != tc.field {
			t.Errorf("New(%+v) = %v; want a *chatscale.ConfigError on %s", tc.cfg, err, tc.field)
		}
	}
}

func TestSourceInvalidInputIsPassedOnNotCached(t *testing.T) {
	t.Parallel()
	refused := &chatscale.InputError{Package: "mysource", Field: "CourseID", Reason: "not a course of ours"}
	src := &counting{src: contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
		return contextcache.Document{}, fmt.Errorf("mysource: %w", refused)
	})}
	c := newCache(t, src, contextcache.Config{})
	ctx := testCtx(t)
	for i := range 2 {
		_, err := c.Get(ctx, "c", "v")
		var ie *chatscale.InputError
		if !errors.Is(err, chatscale.ErrInvalidInput) || !errors.As(err, &ie) || ie != refused ||
			errors.Is(err, contextcache.ErrUnavailable) {
			t.Fatalf("Get #%d: %v; want the Source's *chatscale.InputError, not ErrUnavailable", i, err)
		}
	}
	// Neither cached nor remembered as a failure: each Get asks the Source.
	if n := src.n.Load(); n != 2 {
		t.Fatalf("Source.Load called %d times; want 2", n)
	}
	if s := c.Stats(); s.LoadErrors != 0 || s.SourceSkips != 0 || s.L1Entries != 0 {
		t.Fatalf("Stats() = %+v; want no load error, no skip, nothing cached", s)
	}
}

func TestKeysAndChannelUnderPrefix(t *testing.T) {
	t.Parallel()
	src := contextcache.SourceFunc(func(_ context.Context, _, video string) (contextcache.Document, error) {
		return contextcache.Document{Title: video}, nil
	})
	for _, tc := range []struct{ prefix, want string }{
		{"", chatscale.DefaultPrefix + "contextcache:"},
		{"tenant-a:", "tenant-a:contextcache:"},
	} {
		env := testutil.MiniredisEnv(t) // its own server: the default prefix is not unique
		c := newCache(t, src, contextcache.Config{Redis: env.Client, Prefix: tc.prefix})
		ctx := testCtx(t)
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(ctx, "c", "v"); err != nil {
			t.Fatal(err)
		}
		keys := env.Mini.Keys()
		if len(keys) != 1 || !strings.HasPrefix(keys[0], tc.want+"{") || !strings.HasSuffix(keys[0], "}:doc") {
			t.Errorf("Prefix %q: keys %q; want one %s{…}:doc", tc.prefix, keys, tc.want)
		}
		if chans := env.Mini.PubSubChannels(""); len(chans) != 1 || chans[0] != tc.want+"invalidate" {
			t.Errorf("Prefix %q: channels %q; want %sinvalidate", tc.prefix, chans, tc.want)
		}
	}
}

func TestRedisFailuresInMethodsAreUnavailable(t *testing.T) {
	t.Parallel()
	env := testutil.MiniredisEnv(t)
	src := contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
		return contextcache.Document{Title: "t"}, nil
	})
	c := newCache(t, src, contextcache.Config{Redis: env.Client, Prefix: env.Prefix})
	ctx := testCtx(t)
	env.Mini.SetError("LOADING Redis is loading the dataset in memory")
	for name, call := range map[string]func(context.Context) error{
		"Invalidate":  func(ctx context.Context) error { return c.Invalidate(ctx, "c", "v") },
		"Start":       c.Start,
		"LoadScripts": c.LoadScripts,
	} {
		if err := call(ctx); !errors.Is(err, contextcache.ErrUnavailable) {
			t.Errorf("%s with Redis failing: %v; want ErrUnavailable", name, err)
		}
	}
	// A Get is still answered, from the Source.
	if r, err := c.Get(ctx, "c", "v"); err != nil || r.Tier != contextcache.TierSource {
		t.Fatalf("Get with Redis failing: %v from %v; want a load from the Source", err, r.Tier)
	}
	// A ctx that has ended is returned as such, not as ErrUnavailable.
	gone, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.Invalidate(gone, "c", "v"); !errors.Is(err, context.Canceled) || errors.Is(err, contextcache.ErrUnavailable) {
		t.Fatalf("Invalidate with an ended ctx: %v; want context.Canceled only", err)
	}
	if err := c.LoadScripts(gone); !errors.Is(err, context.Canceled) || errors.Is(err, contextcache.ErrUnavailable) {
		t.Fatalf("LoadScripts with an ended ctx: %v; want context.Canceled only", err)
	}
	_ = c.Close()
	if err := c.LoadScripts(ctx); !errors.Is(err, contextcache.ErrClosed) {
		t.Fatalf("LoadScripts after Close: %v; want ErrClosed", err)
	}
}
