package ratelimit_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// snapshot renders every series gathered from reg, one line each, sorted.
func snapshot(t *testing.T, reg prometheus.Gatherer) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	var out []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			out = append(out, fmt.Sprintf("%s{%s} %v %v %q", mf.GetName(), strings.Join(labels, ","),
				m.GetCounter().GetValue(), m.GetGauge().GetValue(), mf.GetHelp()))
		}
	}
	slices.Sort(out)
	return out
}

// countingRegisterer counts the collectors registered and unregistered
// through it.
type countingRegisterer struct {
	prometheus.Registerer
	registered, unregistered int
}

func (c *countingRegisterer) Register(col prometheus.Collector) error {
	err := c.Registerer.Register(col)
	if err == nil {
		c.registered++
	}
	return err
}

func (c *countingRegisterer) Unregister(col prometheus.Collector) bool {
	ok := c.Registerer.Unregister(col)
	if ok {
		c.unregistered++
	}
	return ok
}

// unrelated returns a registry holding a metric of the host's own.
func unrelated(t *testing.T) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "host_requests_total", Help: "The host's own."})
	c.Add(3)
	reg.MustRegister(c)
	return reg
}

func TestRedisMetricsNamesAndLabels(t *testing.T) {
	env := testutil.MiniredisEnv(t)
	reg := prometheus.NewRegistry()
	lim, err := ratelimit.NewRedis(env.Client, ratelimit.PerHour(2), ratelimit.Config{
		Registerer: reg, Namespace: "app", Name: "tokens", ConstLabels: prometheus.Labels{"upstream": "openai"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		_, _ = lim.Allow(ctx, "org", 1)
	}
	got := snapshot(t, reg)
	want := []string{
		`app_ratelimit_decisions_total{limiter=tokens,result=allowed,upstream=openai} 2 0 "Rate limit decisions by result."`,
		`app_ratelimit_decisions_total{limiter=tokens,result=limited,upstream=openai} 1 0 "Rate limit decisions by result."`,
		`app_ratelimit_fallback_total{limiter=tokens,upstream=openai} 0 0 "Calls answered by the local fallback while Redis failed."`,
		`app_ratelimit_outages_total{limiter=tokens,upstream=openai} 0 0 "Times Redis started failing."`,
		`app_ratelimit_store_errors_total{limiter=tokens,upstream=openai} 0 0 "Failed Redis calls."`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("series:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Two limiters share a registry when their Names differ, or their Names
// match and their ConstLabels differ; a third like one of them is refused
// and leaves the registry as it found it.
func TestRedisMetricsTwoLimitersOneRegistry(t *testing.T) {
	env := testutil.MiniredisEnv(t)
	for _, tc := range []struct {
		name   string
		limits []prometheus.Labels // Name "requests" or "tokens", then ConstLabels
	}{
		{"distinct Names", []prometheus.Labels{{"name": "requests"}, {"name": "tokens"}}},
		{"one Name, distinct ConstLabels", []prometheus.Labels{
			{"name": "requests", "upstream": "openai"},
			{"name": "requests", "upstream": "azure"},
			{"name": "tokens", "upstream": "openai"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := unrelated(t)
			mk := func(spec prometheus.Labels) (*ratelimit.Redis, error) {
				var labels prometheus.Labels
				if spec["upstream"] != "" {
					labels = prometheus.Labels{"upstream": spec["upstream"]}
				}
				// A Prefix of its own: Name does not enter the keys.
				prefix := env.Prefix + spec["name"] + spec["upstream"] + ":"
				return ratelimit.NewRedis(env.Client, ratelimit.PerHour(10), ratelimit.Config{Prefix: prefix, Registerer: reg, Name: spec["name"], ConstLabels: labels})
			}
			for i, spec := range tc.limits {
				lim, err := mk(spec)
				if err != nil {
					t.Fatalf("limiter %v: %v", spec, err)
				}
				for range i + 1 {
					if d, err := lim.Allow(context.Background(), "org", 1); err != nil || !d.Allowed {
						t.Fatalf("Allow: %+v, %v", d, err)
					}
				}
			}
			snap := snapshot(t, reg)
			if want := 1 + 5*len(tc.limits); len(snap) != want {
				t.Fatalf("%d series, want %d:\n%s", len(snap), want, strings.Join(snap, "\n"))
			}
			// Each limiter counts its own decisions in its own series.
			for i, spec := range tc.limits {
				want := "limiter=" + spec["name"] + ",result=allowed"
				if spec["upstream"] != "" {
					want += ",upstream=" + spec["upstream"]
				}
				want = fmt.Sprintf("ai_chat_ratelimit_decisions_total{%s} %d ", want, i+1)
				if !slices.ContainsFunc(snap, func(s string) bool { return strings.HasPrefix(s, want) }) {
					t.Errorf("no series %q in:\n%s", want, strings.Join(snap, "\n"))
				}
			}
			last := tc.limits[len(tc.limits)-1]
			if _, err := mk(last); err == nil {
				t.Fatalf("a second limiter %v registered", last)
			} else if !strings.Contains(err.Error(), "ConstLabels or Name") {
				t.Errorf("error %q does not say how to tell the limiters apart", err)
			}
			if got := snapshot(t, reg); !slices.Equal(got, snap) {
				t.Fatalf("the refused limiter changed the registry:\n%s\nwas:\n%s", strings.Join(got, "\n"), strings.Join(snap, "\n"))
			}
		})
	}
}

// A registration refused after some collectors went in takes them out.
func TestRedisMetricsRegistrationAllOrNothing(t *testing.T) {
	env := testutil.MiniredisEnv(t)
	reg := unrelated(t)
	// The host registered a series like the limiter's last one.
	taken := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ai_chat_ratelimit_outages_total", Help: "Times Redis started failing.",
		ConstLabels: prometheus.Labels{"limiter": "requests"},
	})
	reg.MustRegister(taken)
	before := snapshot(t, reg)
	cr := &countingRegisterer{Registerer: reg}
	_, err := ratelimit.NewRedis(env.Client, ratelimit.PerHour(10), ratelimit.Config{Registerer: cr, Name: "requests"})
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		t.Fatalf("NewRedis = %v, want an AlreadyRegisteredError", err)
	}
	if cr.registered != 4 || cr.unregistered != 4 {
		t.Fatalf("registered %d, unregistered %d; want 4 and 4 (refused midway, then undone)", cr.registered, cr.unregistered)
	}
	if got := snapshot(t, reg); !slices.Equal(got, before) {
		t.Fatalf("registry after the refused NewRedis:\n%s\nwas:\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
	}
	// Once the host's series is gone, the same limiter registers.
	reg.Unregister(taken)
	if _, err := ratelimit.NewRedis(env.Client, ratelimit.PerHour(10), ratelimit.Config{Registerer: cr, Name: "requests"}); err != nil {
		t.Fatalf("NewRedis after the conflict is gone: %v", err)
	}
}

func TestRedisCloseUnregisters(t *testing.T) {
	env := testutil.MiniredisEnv(t)
	reg := unrelated(t)
	other, err := ratelimit.NewRedis(env.Client, ratelimit.PerHour(10), ratelimit.Config{Prefix: env.Prefix + "tok:", Registerer: reg, Name: "tokens"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, _ = other.Allow(ctx, "org", 1)
	before := snapshot(t, reg)
	cfg := ratelimit.Config{Prefix: env.Prefix + "req:", Registerer: reg, Name: "requests"}
	lim, err := ratelimit.NewRedis(env.Client, ratelimit.PerHour(10), cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = lim.Allow(ctx, "org", 1)
	if got := snapshot(t, reg); len(got) != len(before)+5 {
		t.Fatalf("%d series with the limiter, want %d", len(got), len(before)+5)
	}
	if err := lim.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if got := snapshot(t, reg); !slices.Equal(got, before) {
		t.Fatalf("registry after Close:\n%s\nwas:\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
	}
	if err := lim.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if got := snapshot(t, reg); !slices.Equal(got, before) {
		t.Fatal("a second Close changed the registry")
	}
	// Close only unregisters: the limiter keeps working and counting.
	if d, err := lim.Allow(ctx, "org", 1); err != nil || !d.Allowed || d.Remaining != 8 {
		t.Fatalf("Allow after Close = %+v, %v; want allowed, 8 left", d, err)
	}
	if s := lim.Stats(); s.Allowed != 2 {
		t.Fatalf("Stats after Close = %+v, want 2 allowed", s)
	}
	// The Name is free again.
	again, err := ratelimit.NewRedis(env.Client, ratelimit.PerHour(10), cfg)
	if err != nil {
		t.Fatalf("NewRedis with the closed limiter's Name: %v", err)
	}
	_ = again.Close()
	// A limiter without metrics closes too.
	plain, err := ratelimit.NewRedis(env.Client, ratelimit.PerHour(10), ratelimit.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := plain.Close(); err != nil {
		t.Fatalf("Close without a Registerer = %v", err)
	}
}
