package chat

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/internal/testutil"
)

// dump renders everything reg gathers, for before/after comparisons.
func dump(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		b.WriteString(mf.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// Clients with distinct Names, or the same Name and distinct ConstLabels,
// share a registry; Close gives it back as it was.
func TestMetricsShareRegistryAndClose(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	reg := prometheus.NewRegistry()
	host := prometheus.NewCounter(prometheus.CounterOpts{Name: "host_requests_total", Help: "The host's own."})
	reg.MustRegister(host)
	host.Inc()
	before := dump(t, reg)

	var clients []*Client
	for _, cfg := range []Config{
		{Name: "a", ConstLabels: prometheus.Labels{"region": "eu"}},
		{Name: "b", ConstLabels: prometheus.Labels{"region": "eu"}},
		{Name: "a", ConstLabels: prometheus.Labels{"region": "us"}},
	} {
		cfg.Registerer = reg
		c, err := NewClient(NewOpenAI(fake.URL, "sk-test", 4), cfg)
		if err != nil {
			t.Fatalf("%s %v: %v", cfg.Name, cfg.ConstLabels, err)
		}
		if _, err := c.CreateChatCompletion(context.Background(), request("m")); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]int{} // client/region -> ok calls
	for _, mf := range mfs {
		if mf.GetName() != "ai_chat_client_calls_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["outcome"] == "ok" {
				series[l["client"]+"/"+l["region"]] += int(m.GetCounter().GetValue())
			}
		}
	}
	if len(series) != 3 || series["a/eu"] != 1 || series["b/eu"] != 1 || series["a/us"] != 1 {
		t.Fatalf("calls series %v", series)
	}

	// The same Name and ConstLabels again: refused while the first is
	// registered, accepted once it is closed.
	dup := Config{Registerer: reg, Name: "a", ConstLabels: prometheus.Labels{"region": "eu"}}
	if _, err := NewClient(NewOpenAI(fake.URL, "sk-test", 4), dup); err == nil {
		t.Fatal("duplicate registration accepted")
	}
	if err := clients[0].Close(); err != nil {
		t.Fatal(err)
	}
	again, err := NewClient(NewOpenAI(fake.URL, "sk-test", 4), dup)
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	clients[0] = again

	for _, c := range clients {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil { // idempotent
			t.Fatal(err)
		}
	}
	if after := dump(t, reg); after != before {
		t.Fatalf("registry after Close:\n%s\nbefore:\n%s", after, before)
	}
	// A closed Client still answers, without metrics.
	if resp, err := clients[1].CreateChatCompletion(context.Background(), request("closed")); err != nil || IsDegraded(resp) {
		t.Fatalf("after Close: %v", err)
	}
}

// A registration refused halfway leaves nothing of the Client behind.
func TestMetricsRegistrationAllOrNothing(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	reg := prometheus.NewRegistry()
	// Takes the name of the Client's sixth collector.
	squatter := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ai_chat_client_breaker_trips_total", Help: "Not the Client's.",
		ConstLabels: prometheus.Labels{"client": "openai"},
	})
	reg.MustRegister(squatter)
	before := dump(t, reg)
	if _, err := NewClient(NewOpenAI(fake.URL, "sk-test", 4), Config{Registerer: reg}); err == nil {
		t.Fatal("conflicting registration accepted")
	}
	if after := dump(t, reg); after != before {
		t.Fatalf("a failed NewClient left collectors behind:\n%s", after)
	}
	// With its own Namespace it does not collide.
	c, err := NewClient(NewOpenAI(fake.URL, "sk-test", 4), Config{Registerer: reg, Namespace: "tutor"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mfs, _ := reg.Gather()
	found := false
	for _, mf := range mfs {
		found = found || mf.GetName() == "tutor_client_calls_total"
	}
	if !found {
		t.Fatal("tutor_client_calls_total not registered")
	}
}

func TestLoadScripts(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	ctx := context.Background()
	noRedis := newTestClient(t, fake, Config{}, false)
	if err := noRedis.LoadScripts(ctx); err != nil {
		t.Fatalf("without Redis: %v", err)
	}

	env := testutil.Redis(t)
	c := newTestClient(t, fake, Config{Redis: env.Client, Prefix: env.Prefix}, false)
	hashes := make([]string, len(luaScripts))
	for i, s := range luaScripts {
		hashes[i] = s.Hash()
	}
	// Every server that can run the scripts: every master of a cluster.
	servers := func(fn func(redis.Cmdable) error) error {
		if cc, ok := env.Client.(*redis.ClusterClient); ok {
			return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return fn(c) })
		}
		return fn(env.Client)
	}
	if env.Backend == testutil.Miniredis {
		// A fresh server: nothing cached before LoadScripts.
		if ok, err := env.Client.ScriptExists(ctx, hashes...).Result(); err != nil || ok[0] || ok[1] || ok[2] {
			t.Fatalf("before: %v %v", ok, err)
		}
	}
	if err := c.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	err := servers(func(s redis.Cmdable) error {
		ok, err := s.ScriptExists(ctx, hashes...).Result()
		if err != nil {
			return err
		}
		for i, v := range ok {
			if !v {
				return errors.New("script " + hashes[i] + " not loaded")
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.LoadScripts(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
}

// The Client's keys live under Prefix, "chat:" and the {Name} hash tag.
func TestKeysUnderPrefix(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	fake.Always(&testutil.FakeStep{Status: 503})
	c := newTestClient(t, fake, Config{Redis: env.Client, Prefix: env.Prefix, Name: "tutor", MaxAttempts: 1, BreakerMinRequests: 1}, false)
	_, _ = c.CreateChatCompletion(context.Background(), request("trip"))
	keys, err := env.Keys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != env.Prefix+"chat:{tutor}:breaker" {
		t.Fatalf("keys %v", keys)
	}
	if stateKey("", "openai") != "chat:{openai}:breaker" {
		t.Fatal(stateKey("", "openai"))
	}
	def, err := NewClient(NewOpenAI(fake.URL, "", 1), Config{})
	if err != nil {
		t.Fatal(err)
	}
	if def.cfg.Prefix != "chatscale:" || stateKey(def.cfg.Prefix, def.cfg.Name) != "chatscale:chat:{openai}:breaker" {
		t.Fatalf("default key %q", stateKey(def.cfg.Prefix, def.cfg.Name))
	}
}
