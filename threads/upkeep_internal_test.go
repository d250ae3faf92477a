package threads

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/chatscale/chatscale/internal/testutil"
)

// usersOfOneBucket returns n user IDs whose threads share one bucket.
func usersOfOneBucket(t *testing.T, n int) []string {
	t.Helper()
	users := []string{"u0"}
	tag := bucketTag(digest('u', "u0"))
	for i := 1; i < 1_000_000 && len(users) < n; i++ {
		if u := fmt.Sprint("u", i); bucketTag(digest('u', u)) == tag {
			users = append(users, u)
		}
	}
	if len(users) < n {
		t.Fatalf("found %d users of u0's bucket; want %d", len(users), n)
	}
	return users
}

// TestRedisActivityIsPrunedWhenTheSetGrows pins when the bucket's sorted
// set drops the entries of expired threads: not on every write, only on a
// write that adds a member. Until then the stale entry stays, and Active
// does not count it.
func TestRedisActivityIsPrunedWhenTheSetGrows(t *testing.T) {
	ctx := context.Background()
	env := testutil.MiniredisEnv(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	advance := func(d time.Duration) {
		now = now.Add(d)
		env.Mini.FastForward(d)
	}
	st, err := NewRedis(env.Client, Config{Prefix: env.Prefix, TTL: time.Hour, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	users := usersOfOneBucket(t, 3)
	gone, live, later := users[0], users[1], users[2]
	if _, err := st.GetOrCreate(ctx, gone, "c"); err != nil {
		t.Fatal(err)
	}
	b, err := st.GetOrCreate(ctx, live, "c")
	if err != nil {
		t.Fatal(err)
	}
	active := st.keys(digest('u', gone), "").active
	members := func() []string {
		t.Helper()
		m, err := env.Client.ZRange(ctx, active, 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(m)
		return m
	}
	entry := func(u string) string { return digest('u', u) + digest('c', "c") }

	advance(30 * time.Minute)
	if err := st.Append(ctx, b.ID, Message{Role: RoleUser, Content: "x"}); err != nil {
		t.Fatal(err)
	}
	advance(30 * time.Minute) // gone's thread expires now; live's lives 30m more
	if _, err := st.Get(ctx, b.ID); err != nil {
		t.Fatalf("the live thread: %v", err)
	}
	// Writes to a thread already in the set leave the stale entry.
	if err := st.Append(ctx, b.ID, Message{Role: RoleUser, Content: "y"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Open(ctx, OpenRequest{UserID: live, CourseID: "c", HistoryLimit: 1}); err != nil {
		t.Fatal(err)
	}
	want := []string{entry(gone), entry(live)}
	slices.Sort(want)
	if got := members(); !slices.Equal(got, want) {
		t.Fatalf("entries after writes to a listed thread = %q; want the stale one kept: %q", got, want)
	}
	if n, err := st.Active(ctx, 10*time.Hour); err != nil || n != 1 {
		t.Fatalf("Active with a stale entry = %d, %v; want 1 (expired threads never count)", n, err)
	}
	// A write that adds a member prunes the expired ones.
	if _, err := st.GetOrCreate(ctx, later, "c"); err != nil {
		t.Fatal(err)
	}
	want = []string{entry(live), entry(later)}
	slices.Sort(want)
	if got := members(); !slices.Equal(got, want) {
		t.Fatalf("entries after a new thread joined the bucket = %q; want %q", got, want)
	}
	if n, err := st.Active(ctx, 10*time.Hour); err != nil || n != 2 {
		t.Fatalf("Active = %d, %v; want 2", n, err)
	}
}

// TestRedisWritesRestoreAMissingUserSet checks that a write that refreshes
// the thread (made once the refresh interval has passed since the last
// refresh) and finds the user's set gone (it is written only when a
// thread is created) lists the thread again, so that ForgetUser still
// finds it.
func TestRedisWritesRestoreAMissingUserSet(t *testing.T) {
	const ttl = time.Hour
	writes := map[string]func(ctx context.Context, st *RedisStore, th Thread) error{
		"Append": func(ctx context.Context, st *RedisStore, th Thread) error {
			return st.Append(ctx, th.ID, Message{Role: RoleUser, Content: "x"})
		},
		"TrackVideo": func(ctx context.Context, st *RedisStore, th Thread) error {
			_, err := st.TrackVideo(ctx, th.ID, "v2")
			return err
		},
		"Open": func(ctx context.Context, st *RedisStore, th Thread) error {
			_, err := st.Open(ctx, OpenRequest{UserID: th.UserID, CourseID: th.CourseID, HistoryLimit: 5})
			return err
		},
		"GetOrCreate": func(ctx context.Context, st *RedisStore, th Thread) error {
			_, err := st.GetOrCreate(ctx, th.UserID, th.CourseID)
			return err
		},
	}
	for name, write := range writes {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			env := testutil.Redis(t)
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			st, err := NewRedis(env.Client, Config{Prefix: env.Prefix, TTL: ttl, Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			th, err := st.GetOrCreate(ctx, "u", "c")
			if err != nil {
				t.Fatal(err)
			}
			k := st.keys(digest('u', "u"), digest('c', "c"))
			if err := env.Client.Del(ctx, k.user).Err(); err != nil {
				t.Fatal(err)
			}
			now = now.Add(refreshInterval(&st.cfg))
			if err := write(ctx, st, th); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if m, err := env.Client.SMembers(ctx, k.user).Result(); err != nil || !slices.Equal(m, []string{k.ch}) {
				t.Fatalf("user set after %s = %q, %v; want [%s]", name, m, err, k.ch)
			}
			if pttl, err := env.Client.PTTL(ctx, k.user).Result(); err != nil || pttl <= ttl-time.Minute || pttl > ttl {
				t.Fatalf("user set TTL after %s = %v, %v; want %v", name, pttl, err, ttl)
			}
			if n, err := st.ForgetUser(ctx, "u"); err != nil || n != 1 {
				t.Fatalf("ForgetUser = %d, %v; want 1", n, err)
			}
		})
	}
}
