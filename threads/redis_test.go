package threads_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/threads"
	"github.com/chatscale/chatscale/threads/threadstest"
)

func newRedis(t testing.TB, rdb redis.UniversalClient, cfg threads.Config) *threads.RedisStore {
	t.Helper()
	st, err := threads.NewRedis(rdb, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestRedisConformance runs the suite on miniredis (time moved by a fake
// clock and FastForward), or on the real server or cluster named by
// CHATSCALE_REDIS_URL / CHATSCALE_REDIS_CLUSTER (real time, short TTLs).
func TestRedisConformance(t *testing.T) {
	threadstest.Run(t, func(t *testing.T, cfg threads.Config) threadstest.Harness {
		env := testutil.Redis(t)
		cfg.Prefix = env.Prefix + "threads:"
		// ConcurrentGetOrCreate queues 1000 calls for the client's pool;
		// under -race on a loaded machine the last wait longer than the
		// default bound of 1 s, which TestRedisHungServer checks.
		cfg.RedisTimeout = 30 * time.Second
		var h threadstest.Harness
		if env.Mini != nil {
			clock := newFakeClock()
			cfg.Now = clock.Now
			h.Now = clock.Now
			h.Advance = func(d time.Duration) {
				clock.Advance(d)
				env.Mini.FastForward(d)
			}
		}
		h.Store = newRedis(t, env.Client, cfg)
		h.NewPeer = func() threads.Store { return newRedis(t, env.NewClient(), cfg) }
		return h
	})
}

// TestRedisRoundTrips counts, with a go-redis hook, the round trips of
// each call: one each. On a Cluster a second hook on every node's client
// also checks that each call sent one command to one master (no MOVED, ASK
// or NOSCRIPT retry hidden inside the cluster client).
func TestRedisRoundTrips(t *testing.T) {
	ctx := context.Background()
	env := testutil.Redis(t)
	rdb := env.NewClient()
	client := &roundTrips{}
	var nodes *roundTrips
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		nodes = &roundTrips{dataOnly: true}
		cc.OnNewNode(func(n *redis.Client) { n.AddHook(nodes) })
	}
	rdb.AddHook(client)
	st := newRedis(t, rdb, threads.Config{Prefix: env.Prefix})
	msg := threads.Message{Role: threads.RoleUser, Content: "q"}
	// Load the scripts on every server, then dial the connections (HELLO
	// and CLIENT SETINFO pass the hook too).
	if err := st.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	warm, err := st.Open(ctx, threads.OpenRequest{UserID: "w", CourseID: "c", VideoURL: "v"})
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Append(ctx, warm.Thread.ID, msg)
	_, _ = st.History(ctx, warm.Thread.ID, 0)
	_ = st.Delete(ctx, warm.Thread.ID)
	_, _ = st.Active(ctx, time.Minute)

	var id string
	ops := []struct {
		name string
		fn   func() error
	}{
		{"Open", func() error {
			s, err := st.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c", VideoURL: "v", HistoryLimit: 20})
			id = s.Thread.ID
			return err
		}},
		{"Append", func() error { return st.Append(ctx, id, msg, msg) }},
		{"Open again", func() error {
			_, err := st.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c", VideoURL: "v2", HistoryLimit: 20})
			return err
		}},
		{"GetOrCreate", func() error { _, err := st.GetOrCreate(ctx, "u", "c"); return err }},
		{"TrackVideo", func() error { _, err := st.TrackVideo(ctx, id, "v3"); return err }},
		{"Get", func() error { _, err := st.Get(ctx, id); return err }},
		{"History", func() error { _, err := st.History(ctx, id, 10); return err }},
		{"Find", func() error {
			th, err := st.Find(ctx, "u", "c")
			if err == nil && th.ID != id {
				err = fmt.Errorf("found thread %q; want %q", th.ID, id)
			}
			return err
		}},
		{"Find of a pair without a thread", func() error {
			if _, err := st.Find(ctx, "u", "no thread"); !errors.Is(err, threads.ErrNotFound) {
				return fmt.Errorf("err = %v; want ErrNotFound", err)
			}
			return nil
		}},
		{"Active", func() error { _, err := st.Active(ctx, time.Minute); return err }},
		{"Delete", func() error { return st.Delete(ctx, id) }},
	}
	for _, op := range ops {
		client.n.Store(0)
		if nodes != nil {
			nodes.n.Store(0)
		}
		if err := op.fn(); err != nil {
			t.Fatalf("%s: %v", op.name, err)
		}
		if n := client.n.Load(); n != 1 {
			t.Errorf("%s took %d round trips; want 1", op.name, n)
		}
		// Active's one pipeline is split into one per master.
		if nodes != nil && op.name != "Active" {
			if n := nodes.n.Load(); n != 1 {
				t.Errorf("%s sent %d commands to the cluster's nodes; want 1", op.name, n)
			}
		}
	}
}

func TestRedisKeysShareOneHashTag(t *testing.T) {
	ctx := context.Background()
	env := testutil.Redis(t)
	st := newRedis(t, env.Client, threads.Config{Prefix: env.Prefix})
	for _, u := range []string{"{a}", "}b{", "c:{d}", "e f", "日本"} {
		s, err := st.Open(ctx, threads.OpenRequest{UserID: u, CourseID: "{course}", VideoURL: "v"})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Append(ctx, s.Thread.ID, threads.Message{Role: threads.RoleUser, Content: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	keys, err := env.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) == 0 {
		t.Fatal("no keys under the prefix")
	}
	for _, k := range keys {
		rest := strings.TrimPrefix(k, env.Prefix+"threads:")
		if strings.Count(rest, "{") != 1 || strings.Count(rest, "}") != 1 || !strings.HasPrefix(rest, "{") {
			t.Fatalf("key %q: want exactly one hash tag, right after the prefix", k)
		}
	}
}

func TestRedisOutageIsAnError(t *testing.T) {
	ctx := context.Background()
	env := testutil.MiniredisEnv(t)
	st := newRedis(t, env.Client, threads.Config{Prefix: env.Prefix})
	th, err := st.GetOrCreate(ctx, "u", "c")
	if err != nil {
		t.Fatal(err)
	}
	env.Mini.SetError("LOADING Redis is loading the dataset in memory")
	_, err = st.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c"})
	if !errors.Is(err, threads.ErrUnavailable) || errors.Is(err, threads.ErrNotFound) || errors.Is(err, chatscale.ErrInvalidInput) {
		t.Fatalf("Open during an outage = %v; want ErrUnavailable", err)
	}
	if err := st.Append(ctx, th.ID); !errors.Is(err, threads.ErrUnavailable) {
		t.Fatalf("Append during an outage = %v; want ErrUnavailable", err)
	}
	if _, err := st.Find(ctx, "u", "c"); !errors.Is(err, threads.ErrUnavailable) || errors.Is(err, threads.ErrNotFound) {
		t.Fatalf("Find during an outage = %v; want ErrUnavailable", err)
	}
	// An error reply that is not about availability (a script failing on
	// bad data) is not ErrUnavailable: retrying will not help.
	env.Mini.SetError("ERR something else")
	if _, err := st.Get(ctx, th.ID); err == nil || errors.Is(err, threads.ErrUnavailable) {
		t.Fatalf("Get on an ERR reply = %v; want an error that is not ErrUnavailable", err)
	}
	if _, err := st.Find(ctx, "u", "c"); err == nil || errors.Is(err, threads.ErrUnavailable) || errors.Is(err, threads.ErrNotFound) {
		t.Fatalf("Find on an ERR reply = %v; want an error that is neither ErrUnavailable nor ErrNotFound", err)
	}
	env.Mini.SetError("")
	// A ctx that ended is ctx's error, not ErrUnavailable.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := st.Get(cctx, th.ID); !errors.Is(err, context.Canceled) || errors.Is(err, threads.ErrUnavailable) {
		t.Fatalf("Get with a cancelled ctx = %v; want context.Canceled only", err)
	}
	if _, err := st.Find(cctx, "u", "c"); !errors.Is(err, context.Canceled) || errors.Is(err, threads.ErrUnavailable) {
		t.Fatalf("Find with a cancelled ctx = %v; want context.Canceled only", err)
	}
	if _, err := st.Get(ctx, th.ID); err != nil {
		t.Fatalf("Get after the outage: %v", err)
	}
}

func TestRedisSurvivesScriptFlush(t *testing.T) {
	ctx := context.Background()
	env := testutil.MiniredisEnv(t)
	st := newRedis(t, env.Client, threads.Config{Prefix: env.Prefix})
	th, err := st.GetOrCreate(ctx, "u", "c")
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Client.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := st.Append(ctx, th.ID, threads.Message{Role: threads.RoleUser, Content: "x"}); err != nil {
		t.Fatalf("Append after SCRIPT FLUSH: %v", err)
	}
}

func TestNewRedisRejectsBadConfig(t *testing.T) {
	env := testutil.MiniredisEnv(t)
	for _, p := range []string{"a{b", "a}b"} {
		if _, err := threads.NewRedis(env.Client, threads.Config{Prefix: p}); !errors.Is(err, chatscale.ErrInvalidConfig) {
			t.Fatalf("NewRedis with prefix %q = %v; want ErrInvalidConfig", p, err)
		}
	}
	if _, err := threads.NewRedis(nil, threads.Config{}); !errors.Is(err, chatscale.ErrInvalidConfig) {
		t.Fatalf("NewRedis(nil) = %v; want ErrInvalidConfig", err)
	}
}

func TestRedisServerGoneIsUnavailable(t *testing.T) {
	// A port nothing listens on: the dial fails at once.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer rdb.Close()
	st := newRedis(t, rdb, threads.Config{})
	_, err = st.Open(context.Background(), threads.OpenRequest{UserID: "u", CourseID: "c"})
	if !errors.Is(err, threads.ErrUnavailable) {
		t.Fatalf("Open with no server = %v; want ErrUnavailable", err)
	}
}

func TestRedisDefaultPrefix(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	st := newRedis(t, rdb, threads.Config{})
	if _, err := st.GetOrCreate(ctx, "u", "c"); err != nil {
		t.Fatal(err)
	}
	if len(mr.Keys()) == 0 {
		t.Fatal("GetOrCreate wrote no key")
	}
	for _, k := range mr.Keys() {
		if !strings.HasPrefix(k, "chatscale:threads:{") {
			t.Errorf("key %q does not start with chatscale:threads:{", k)
		}
	}
}
