package threads

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/internal/testutil"
)

func TestRedisDetectsDigestCollision(t *testing.T) {
	ctx := context.Background()
	env := testutil.MiniredisEnv(t)
	st, err := NewRedis(env.Client, Config{Prefix: env.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	// Plant the thread of another pair where (u, c) hashes to.
	k := st.keys(digest('u', "u"), digest('c', "c"))
	if err := env.Client.HSet(ctx, k.thread, "id", "x", "u", "other", "c", "c", "v", "", "ca", "1", "ua", "1").Err(); err != nil {
		t.Fatal(err)
	}
	_, err = st.Open(ctx, OpenRequest{UserID: "u", CourseID: "c"})
	if err == nil || !strings.Contains(err.Error(), "key collision") {
		t.Fatalf("Open onto another pair's thread = %v; want a key collision error", err)
	}
	if u, _ := env.Client.HGet(ctx, k.thread, "u").Result(); u != "other" {
		t.Fatalf("the other pair's thread was changed: u = %q", u)
	}
	// ForgetUser leaves the other user's thread and terminates.
	if err := env.Client.SAdd(ctx, k.user, k.ch).Err(); err != nil {
		t.Fatal(err)
	}
	n, err := st.ForgetUser(ctx, "u")
	if err != nil || n != 0 {
		t.Fatalf("ForgetUser = %d, %v; want 0, nil", n, err)
	}
	if ok, _ := env.Client.Exists(ctx, k.thread).Result(); ok != 1 {
		t.Fatal("ForgetUser deleted another user's thread")
	}
}

func TestRedisActivityEntriesOfExpiredThreadsAreSwept(t *testing.T) {
	ctx := context.Background()
	env := testutil.MiniredisEnv(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	st, err := NewRedis(env.Client, Config{Prefix: env.Prefix, TTL: time.Hour, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	tag := bucketTag(digest('u', "u0"))
	other := ""
	for i := 1; i < 100_000 && other == ""; i++ {
		if u := fmt.Sprint("u", i); bucketTag(digest('u', u)) == tag {
			other = u
		}
	}
	if other == "" {
		t.Fatal("no user shares u0's bucket")
	}
	if _, err := st.GetOrCreate(ctx, "u0", "c"); err != nil {
		t.Fatal(err)
	}
	active := st.keys(digest('u', "u0"), "").active
	if n, _ := env.Client.ZCard(ctx, active).Result(); n != 1 {
		t.Fatalf("activity entries = %d; want 1", n)
	}
	now = now.Add(time.Hour)
	env.Mini.FastForward(time.Hour - time.Millisecond) // the bucket's keys slide with each write
	if _, err := st.GetOrCreate(ctx, other, "c"); err != nil {
		t.Fatal(err)
	}
	members, _ := env.Client.ZRange(ctx, active, 0, -1).Result()
	if len(members) != 1 || !strings.HasPrefix(members[0], digest('u', other)) {
		t.Fatalf("activity entries = %q; want only %s's", members, other)
	}
}

func TestRedisIDLayout(t *testing.T) {
	ctx := context.Background()
	env := testutil.MiniredisEnv(t)
	st, err := NewRedis(env.Client, Config{Prefix: env.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	th, err := st.GetOrCreate(ctx, "u", "c")
	if err != nil {
		t.Fatal(err)
	}
	if len(th.ID) != redisIDLen || !strings.HasPrefix(th.ID, digest('u', "u")+digest('c', "c")+".") {
		t.Fatalf("ID %q: want <user digest><course digest>.<22 random characters>", th.ID)
	}
	k, rnd, ok := st.parseID(th.ID)
	if !ok || len(rnd) != randomPartLen || k.thread != st.keys(digest('u', "u"), digest('c', "c")).thread {
		t.Fatalf("parseID(%q) = %+v, %q, %v", th.ID, k, rnd, ok)
	}
}

// TestRedisIndexesExpireWithTheirLastThread checks that a bucket that gets
// no more writes keeps nothing: its activity set and the user set expire
// with the last thread they index, so Active's sorted sets stay bounded
// even when no later write sweeps them.
func TestRedisIndexesExpireWithTheirLastThread(t *testing.T) {
	ctx := context.Background()
	env := testutil.MiniredisEnv(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	st, err := NewRedis(env.Client, Config{Prefix: env.Prefix, TTL: time.Hour, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	a, err := st.GetOrCreate(ctx, "u", "c1")
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(30 * time.Minute)
	env.Mini.FastForward(30 * time.Minute)
	if err := st.Append(ctx, a.ID, Message{Role: RoleUser, Content: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetOrCreate(ctx, "u", "c2"); err != nil {
		t.Fatal(err)
	}
	k := st.keys(digest('u', "u"), digest('c', "c1"))
	for _, key := range k.all() {
		if !env.Mini.Exists(key) {
			t.Fatalf("key %q missing while its threads live", key)
		}
	}
	env.Mini.FastForward(time.Hour - time.Millisecond)
	if n, _ := env.Client.ZCard(ctx, k.active).Result(); n != 2 {
		t.Fatalf("activity entries a millisecond before expiry = %d; want 2", n)
	}
	env.Mini.FastForward(time.Millisecond)
	if keys := env.Mini.Keys(); len(keys) != 0 {
		t.Fatalf("keys left after every thread expired: %q", keys)
	}
}

func TestRedisLoadScriptsReachesEveryMaster(t *testing.T) {
	ctx := context.Background()
	env := testutil.Redis(t)
	if env.Mini != nil {
		// Only the test's own server may be flushed; on shared servers the
		// scripts may already be cached, which the check below tolerates.
		if err := env.Client.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	st, err := NewRedis(env.Client, Config{Prefix: env.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	var hashes []string
	for _, s := range []*redis.Script{openScript, appendScript, readScript, deleteScript, forgetScript} {
		hashes = append(hashes, s.Hash())
	}
	check := func(ctx context.Context, c *redis.Client) error {
		ok, err := c.ScriptExists(ctx, hashes...).Result()
		if err != nil {
			return err
		}
		for i, loaded := range ok {
			if !loaded {
				return fmt.Errorf("%s: script %s not loaded", c.Options().Addr, hashes[i])
			}
		}
		return nil
	}
	switch c := env.Client.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, check)
	case *redis.Client:
		err = check(ctx, c)
	default:
		t.Fatalf("unexpected client %T", env.Client)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestRedisFindIgnoresDigestCollision plants, where the keys of (u, c)
// are, the thread hash of another pair (as if their digests collided):
// Find of (u, c) answers ErrNotFound, never the other pair's thread, and
// changes nothing. A hash holding (u, c) itself is found, with the ID
// rebuilt from the digests and the stored random part.
func TestRedisFindIgnoresDigestCollision(t *testing.T) {
	ctx := context.Background()
	env := testutil.MiniredisEnv(t)
	st, err := NewRedis(env.Client, Config{Prefix: env.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	k := st.keys(digest('u', "u"), digest('c', "c"))
	const rnd = "AAAAAAAAAAAAAAAAAAAAAA"
	plant := func(user, course string) {
		t.Helper()
		if err := env.Client.HSet(ctx, k.thread, "id", rnd, "u", user, "c", course, "v", "video", "ca", "1000", "ua", "2000").Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, other := range [][2]string{{"other", "c"}, {"u", "other"}, {"other", "other"}, {"u\x00", "c"}, {"u", "c "}} {
		plant(other[0], other[1])
		th, err := st.Find(ctx, "u", "c")
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("Find(u, c) onto the thread of %q = %+v, %v; want ErrNotFound", other, th, err)
		}
		if keys := env.Mini.Keys(); len(keys) != 1 || keys[0] != k.thread {
			t.Fatalf("keys after Find = %q; want only the planted hash", keys)
		}
		if got, _ := env.Client.HGetAll(ctx, k.thread).Result(); got["u"] != other[0] || got["c"] != other[1] || got["ua"] != "2000" {
			t.Fatalf("Find changed the other pair's thread: %q", got)
		}
	}
	plant("u", "c")
	th, err := st.Find(ctx, "u", "c")
	want := Thread{
		ID: k.uh + k.ch + "." + rnd, UserID: "u", CourseID: "c", VideoURL: "video",
		CreatedAt: fromMillis(1000), UpdatedAt: fromMillis(2000),
	}
	if err != nil || th.ID != want.ID || th.UserID != want.UserID || th.CourseID != want.CourseID || th.VideoURL != want.VideoURL ||
		!th.CreatedAt.Equal(want.CreatedAt) || !th.UpdatedAt.Equal(want.UpdatedAt) {
		t.Fatalf("Find(u, c) of its own hash = %+v, %v; want %+v", th, err, want)
	}
	// A hash without the random part is not a thread.
	if err := env.Client.HDel(ctx, k.thread, "id").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Find(ctx, "u", "c"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Find of a hash without id = %v; want ErrNotFound", err)
	}
}
