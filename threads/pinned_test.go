package threads_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/threads"
)

// TestRedisEveryWriteSlidesEveryKey checks, key by key, that each write
// made once the refresh interval has passed since the thread's last
// refresh (as every write an aged thread gets is) gives the TTL to all
// four keys of the thread (hash, messages, the user's set, the bucket's
// sorted set), not only to the thread itself: the indexes must outlive
// every thread they index, or Active undercounts and ForgetUser misses
// live threads. It ages the keys with PEXPIRE, and the store's clock by
// as much, instead of waiting, so it is exact on miniredis and on a real
// server or cluster.
func TestRedisEveryWriteSlidesEveryKey(t *testing.T) {
	const ttl = time.Hour
	const aged = time.Minute // what is left of the TTL before the write
	msg := threads.Message{Role: threads.RoleUser, Content: "x"}
	writes := map[string]func(ctx context.Context, st *threads.RedisStore, th threads.Thread) error{
		"Append": func(ctx context.Context, st *threads.RedisStore, th threads.Thread) error {
			return st.Append(ctx, th.ID, msg)
		},
		"AppendNoMessages": func(ctx context.Context, st *threads.RedisStore, th threads.Thread) error {
			return st.Append(ctx, th.ID)
		},
		"TrackVideo": func(ctx context.Context, st *threads.RedisStore, th threads.Thread) error {
			_, err := st.TrackVideo(ctx, th.ID, "v2")
			return err
		},
		"TrackSameVideo": func(ctx context.Context, st *threads.RedisStore, th threads.Thread) error {
			_, err := st.TrackVideo(ctx, th.ID, "v1")
			return err
		},
		"Open": func(ctx context.Context, st *threads.RedisStore, th threads.Thread) error {
			_, err := st.Open(ctx, threads.OpenRequest{UserID: th.UserID, CourseID: th.CourseID, VideoURL: "v2", HistoryLimit: 5})
			return err
		},
		"OpenNoVideo": func(ctx context.Context, st *threads.RedisStore, th threads.Thread) error {
			_, err := st.Open(ctx, threads.OpenRequest{UserID: th.UserID, CourseID: th.CourseID})
			return err
		},
		"GetOrCreate": func(ctx context.Context, st *threads.RedisStore, th threads.Thread) error {
			_, err := st.GetOrCreate(ctx, th.UserID, th.CourseID)
			return err
		},
	}
	for name, write := range writes {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			env := testutil.Redis(t)
			clock := newFakeClock()
			st := newRedis(t, env.Client, threads.Config{Prefix: env.Prefix, TTL: ttl, Now: clock.Now})
			sess, err := st.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c", VideoURL: "v1"})
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Append(ctx, sess.Thread.ID, msg); err != nil {
				t.Fatal(err)
			}
			keys, err := env.Keys(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != 4 {
				t.Fatalf("keys of one thread with a message = %q; want 4 (thread, messages, user set, activity)", keys)
			}
			for _, k := range keys {
				if err := env.Client.PExpire(ctx, k, aged).Err(); err != nil {
					t.Fatal(err)
				}
			}
			clock.Advance(ttl - aged)
			if err := write(ctx, st, sess.Thread); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			for _, k := range keys {
				pttl, err := env.Client.PTTL(ctx, k).Result()
				if err != nil {
					t.Fatal(err)
				}
				if pttl <= ttl-aged || pttl > ttl {
					t.Errorf("%s left key %q with a TTL of %v; want the full TTL (%v): every write slides every key of the thread", name, k, pttl, ttl)
				}
			}
		})
	}
}

// TestMemoryEvictsLeastRecentlyWrittenAcrossShards drives a full
// MemoryStore of 8 shards with random creates and writes (each at its own
// millisecond) and checks it against a model of one global LRU list: each
// creation beyond MaxThreads evicts the thread written least recently in
// the whole store, whatever its shard. TestMemoryEvictsLeastRecentlyWritten
// keeps every thread in one shard; here most evictions take a thread from
// another shard than the new one's.
func TestMemoryEvictsLeastRecentlyWrittenAcrossShards(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	const maxThreads = 12
	st := newMemory(t, threads.Config{MaxThreads: maxThreads, Shards: 8, Now: clock.Now, SweepInterval: -1})
	rng := rand.New(rand.NewPCG(7, 11))
	type pair struct{ user, course string }
	var lru []string // thread IDs, least recently written first
	pairs := map[string]pair{}
	touch := func(id string) {
		lru = slices.DeleteFunc(lru, func(x string) bool { return x == id })
		lru = append(lru, id)
	}
	// A memory thread ID starts with its shard number.
	shard := func(id string) string { return id[:strings.IndexByte(id, '.')] }
	evictions, crossShard := 0, 0
	for i := range 400 {
		clock.Advance(time.Millisecond)
		if len(lru) > 0 && rng.IntN(2) == 0 {
			id := lru[rng.IntN(len(lru))]
			var err error
			switch op := rng.IntN(4); op {
			case 0:
				err = st.Append(ctx, id, threads.Message{Role: threads.RoleUser, Content: "x"})
			case 1:
				_, err = st.TrackVideo(ctx, id, fmt.Sprint("v", i))
			case 2:
				_, err = st.Open(ctx, threads.OpenRequest{UserID: pairs[id].user, CourseID: pairs[id].course})
			case 3:
				_, err = st.GetOrCreate(ctx, pairs[id].user, pairs[id].course)
			}
			if err != nil {
				t.Fatalf("step %d: write to %s: %v", i, id, err)
			}
			touch(id)
		} else {
			p := pair{fmt.Sprint("user", rng.IntN(50)), fmt.Sprint("course", i)}
			th, err := st.GetOrCreate(ctx, p.user, p.course)
			if err != nil {
				t.Fatal(err)
			}
			pairs[th.ID] = p
			lru = append(lru, th.ID)
			if len(lru) > maxThreads {
				victim := lru[0]
				lru = lru[1:]
				evictions++
				if shard(victim) != shard(th.ID) {
					crossShard++
				}
				if _, err := st.Get(ctx, victim); !errors.Is(err, threads.ErrNotFound) {
					t.Fatalf("step %d: creating a thread in shard %s did not evict the least recently written thread %s (shard %s): Get = %v",
						i, shard(th.ID), victim, shard(victim), err)
				}
			}
		}
		for _, id := range lru { // Get is not a write: the order stays
			if _, err := st.Get(ctx, id); err != nil {
				t.Fatalf("step %d: thread %s (shard %s), not the least recently written, was evicted: %v", i, id, shard(id), err)
			}
		}
		if s := st.Stats(); s.Threads != len(lru) || s.Evicted != uint64(evictions) {
			t.Fatalf("step %d: Stats = %+v; want %d threads, %d evicted", i, s, len(lru), evictions)
		}
	}
	if crossShard < evictions/2 || evictions < 50 {
		t.Fatalf("%d evictions, %d across shards: the test did not exercise eviction across shards", evictions, crossShard)
	}
	t.Logf("%d evictions, %d of them from another shard than the new thread's", evictions, crossShard)
}

// TestRedisKeyLayoutIsTheDocumentedOne rebuilds, from the package
// documentation alone, the keys and the ID of one thread and checks that
// the store writes exactly those. The layout is a storage format: a store
// that changed it (another digest, bucket or key name) would no longer
// see the threads written before an upgrade, nor erase them in
// ForgetUser. The bucket of user "u" is pinned as a constant too.
func TestRedisKeyLayoutIsTheDocumentedOne(t *testing.T) {
	ctx := context.Background()
	env := testutil.Redis(t)
	st := newRedis(t, env.Client, threads.Config{Prefix: env.Prefix})
	digest := func(domain byte, id string) string {
		sum := sha256.Sum256(append([]byte{domain}, id...))
		return base64.RawURLEncoding.EncodeToString(sum[:12])
	}
	uh, ch := digest('u', "u"), digest('c', "c")
	raw, _ := base64.RawURLEncoding.DecodeString(uh)
	bucket := fmt.Sprintf("%03x", (int(raw[0])<<8|int(raw[1]))%threads.Buckets)
	if bucket != "2fa" {
		t.Fatalf("bucket of user u = %s; want 2fa", bucket)
	}
	th, err := st.GetOrCreate(ctx, "u", "c")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Append(ctx, th.ID, threads.Message{Role: threads.RoleUser, Content: "x"}); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(th.ID, uh+ch+".") || len(th.ID) != len(uh+ch)+1+22 {
		t.Fatalf("ID %q; want %s%s.<22 random characters>", th.ID, uh, ch)
	}
	p := env.Prefix + "threads:{" + bucket + "}:"
	want := []string{p + "a", p + "m:" + uh + ch, p + "t:" + uh + ch, p + "u:" + uh}
	got, err := env.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("keys = %q; want %q", got, want)
	}
	// The separator is part of the ID: another character there is not an
	// alias of the thread.
	alias := th.ID[:len(uh+ch)] + "_" + th.ID[len(uh+ch)+1:]
	if _, err := st.Get(ctx, alias); !errors.Is(err, threads.ErrNotFound) {
		t.Fatalf("Get(%q) with the separator replaced = %v; want ErrNotFound", alias, err)
	}
}

// TestRedisForgetUserLeavesNoKeyOfTheUser: after ForgetUser nothing of the
// user is left in Redis, not even the index entries of a thread that had
// expired before (its hash and messages gone, its member still in the
// user set and the bucket's sorted set): ForgetUser must drop those, not
// keep them as another user's. The expiry is simulated by deleting the
// thread's keys, so the test is exact on every backend.
func TestRedisForgetUserLeavesNoKeyOfTheUser(t *testing.T) {
	ctx := context.Background()
	env := testutil.Redis(t)
	st := newRedis(t, env.Client, threads.Config{Prefix: env.Prefix})
	msg := threads.Message{Role: threads.RoleUser, Content: "x"}
	gone, err := st.GetOrCreate(ctx, "u", "c1")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Append(ctx, gone.ID, msg); err != nil {
		t.Fatal(err)
	}
	goneKeys, err := env.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range goneKeys {
		if strings.Contains(k, "}:t:") || strings.Contains(k, "}:m:") {
			if err := env.Client.Del(ctx, k).Err(); err != nil { // as if expired
				t.Fatal(err)
			}
		}
	}
	for _, c := range []string{"c2", "c3"} {
		th, err := st.GetOrCreate(ctx, "u", c)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Append(ctx, th.ID, msg); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := st.ForgetUser(ctx, "u"); err != nil || n != 2 {
		t.Fatalf("ForgetUser = %d, %v; want 2 (the live threads), nil", n, err)
	}
	if keys, err := env.Keys(ctx); err != nil || len(keys) != 0 {
		t.Fatalf("keys left after ForgetUser: %q, %v; want none", keys, err)
	}
	if n, err := st.Active(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("Active after ForgetUser = %d, %v; want 0", n, err)
	}
}

// TestRedisFindWritesNothing checks, key by key, that Find writes nothing:
// of a pair without a thread it creates no key, and of a thread it leaves
// every key's content and TTL as they were (no slide of the hash, the
// messages, the user's set or the bucket's sorted set, no activity score).
// It ages the keys with PEXPIRE instead of waiting, so it is exact on
// miniredis and on a real server or cluster.
func TestRedisFindWritesNothing(t *testing.T) {
	const ttl = time.Hour
	const aged = time.Minute // what is left of the TTL before Find
	ctx := context.Background()
	env := testutil.Redis(t)
	st := newRedis(t, env.Client, threads.Config{Prefix: env.Prefix, TTL: ttl})
	if _, err := st.Find(ctx, "u", "c"); !errors.Is(err, threads.ErrNotFound) {
		t.Fatalf("Find of a pair without a thread = %v; want ErrNotFound", err)
	}
	if keys, err := env.Keys(ctx); err != nil || len(keys) != 0 {
		t.Fatalf("keys after Find of a pair without a thread: %q, %v; want none", keys, err)
	}
	sess, err := st.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c", VideoURL: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Append(ctx, sess.Thread.ID, threads.Message{Role: threads.RoleUser, Content: "x"}); err != nil {
		t.Fatal(err)
	}
	keys, err := env.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 4 {
		t.Fatalf("keys of one thread with a message = %q; want 4 (thread, messages, user set, activity)", keys)
	}
	for _, k := range keys {
		if err := env.Client.PExpire(ctx, k, aged).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// content reads a key whatever its type, in a stable form.
	content := func(k string) string {
		t.Helper()
		var (
			v   any
			err error
		)
		switch typ := env.Client.Type(ctx, k).Val(); typ {
		case "hash":
			v, err = env.Client.HGetAll(ctx, k).Result()
		case "list":
			v, err = env.Client.LRange(ctx, k, 0, -1).Result()
		case "set":
			var m []string
			m, err = env.Client.SMembers(ctx, k).Result()
			slices.Sort(m)
			v = m
		case "zset":
			v, err = env.Client.ZRangeWithScores(ctx, k, 0, -1).Result()
		default:
			t.Fatalf("key %q has type %q", k, typ)
		}
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(v)
	}
	before := map[string]string{}
	for _, k := range keys {
		before[k] = content(k)
	}
	for range 3 {
		th, err := st.Find(ctx, "u", "c")
		if err != nil || th.ID != sess.Thread.ID {
			t.Fatalf("Find = %+v, %v; want thread %q", th, err, sess.Thread.ID)
		}
		if _, err := st.Find(ctx, "u", "c2"); !errors.Is(err, threads.ErrNotFound) {
			t.Fatalf("Find of the user's other course = %v; want ErrNotFound", err)
		}
	}
	after, err := env.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(keys) {
		t.Fatalf("keys after Find = %q; want %q", after, keys)
	}
	for _, k := range keys {
		if got := content(k); got != before[k] {
			t.Errorf("Find changed key %q: %s; was %s", k, got, before[k])
		}
		pttl, err := env.Client.PTTL(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if pttl <= 0 || pttl > aged {
			t.Errorf("Find left key %q with a TTL of %v; want at most the %v it had: Find must not slide it", k, pttl, aged)
		}
	}
}
