package chatscale_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/ratelimit"
	"github.com/chatscale/chatscale/threads"
)

// TestConventionsConfigErrors checks the README's conventions across the
// packages: every constructor refuses a nil required argument, a brace in
// Prefix and ConstLabels holding its own labels with a
// *chatscale.ConfigError naming the field.
func TestConventionsConfigErrors(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	src := contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
		return contextcache.Document{}, nil
	})
	lim := ratelimit.PerMinute(10)
	dup := func(l string) prometheus.Labels { return prometheus.Labels{l: "x"} }
	for _, tc := range []struct {
		name, field string
		new         func() error
	}{
		{"threads nil rdb", "rdb", func() error { _, err := threads.NewRedis(nil, threads.Config{}); return err }},
		{"threads prefix", "Config.Prefix", func() error { _, err := threads.NewRedis(rdb, threads.Config{Prefix: "a{"}); return err }},
		{"ratelimit nil rdb", "rdb", func() error { _, err := ratelimit.NewRedis(nil, lim, ratelimit.Config{}); return err }},
		{"ratelimit prefix", "Config.Prefix", func() error { _, err := ratelimit.NewRedis(rdb, lim, ratelimit.Config{Prefix: "a}"}); return err }},
		{"ratelimit labels", "Config.ConstLabels", func() error {
			_, err := ratelimit.NewRedis(rdb, lim, ratelimit.Config{ConstLabels: dup("limiter")})
			return err
		}},
		{"contextcache nil src", "src", func() error { _, err := contextcache.New(nil, contextcache.Config{}); return err }},
		{"contextcache prefix", "Config.Prefix", func() error { _, err := contextcache.New(src, contextcache.Config{Prefix: "{"}); return err }},
		{"contextcache labels", "Config.ConstLabels", func() error {
			_, err := contextcache.New(src, contextcache.Config{ConstLabels: dup("tier")})
			return err
		}},
		{"chat nil inner", "inner", func() error { _, err := chat.NewClient(nil, chat.Config{}); return err }},
		{"chat prefix", "Config.Prefix", func() error {
			_, err := chat.NewClient(chat.NewOpenAI("http://127.0.0.1:1/v1", "k", 1), chat.Config{Prefix: "}"})
			return err
		}},
		{"chat labels", "Config.ConstLabels", func() error {
			_, err := chat.NewClient(chat.NewOpenAI("http://127.0.0.1:1/v1", "k", 1), chat.Config{ConstLabels: dup("outcome")})
			return err
		}},
	} {
		err := tc.new()
		var ce *chatscale.ConfigError
		if !errors.Is(err, chatscale.ErrInvalidConfig) || !errors.As(err, &ce) || ce.Field != tc.field {
			t.Errorf("%s: err = %v; want a *chatscale.ConfigError for %s", tc.name, err, tc.field)
		}
	}
}

// TestConventionsDefaultPrefix checks that every package writes its keys
// under chatscale:<package>: by default.
func TestConventionsDefaultPrefix(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	st, err := threads.NewRedis(rdb, threads.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetOrCreate(ctx, "u", "c"); err != nil {
		t.Fatal(err)
	}
	rl, err := ratelimit.NewRedis(rdb, ratelimit.PerMinute(10), ratelimit.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rl.Allow(ctx, "k", 1); err != nil {
		t.Fatal(err)
	}
	cc, err := contextcache.New(contextcache.SourceFunc(func(_ context.Context, c, v string) (contextcache.Document, error) {
		return contextcache.Document{CourseID: c, VideoURL: v, Text: "t"}, nil
	}), contextcache.Config{Redis: rdb})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := cc.Get(ctx, "c", "v"); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, k := range mr.Keys() {
		pkg, _, ok := strings.Cut(strings.TrimPrefix(k, chatscale.DefaultPrefix), ":")
		if !strings.HasPrefix(k, chatscale.DefaultPrefix) || !ok {
			t.Errorf("key %q is not under %s<package>:", k, chatscale.DefaultPrefix)
			continue
		}
		seen[pkg] = true
	}
	for _, pkg := range []string{"threads", "ratelimit", "contextcache"} {
		if !seen[pkg] {
			t.Errorf("no key under %s%s: in %v", chatscale.DefaultPrefix, pkg, mr.Keys())
		}
	}
}
