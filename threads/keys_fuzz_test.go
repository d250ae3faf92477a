package threads

import (
	"context"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/testutil"
)

// FuzzThreadKeys checks, for two (user, course) pairs, that the Redis
// keys of their threads are the same exactly when the pairs are, that a
// user's index key is the same exactly when the users are, that all the
// keys of a thread share one hash tag, and that both stores give the two
// pairs one thread when they are equal and two distinct threads when
// they differ. Across the iterations of one fuzzing process the stores
// keep their threads, so a thread ID that two pairs ever shared would be
// caught too.
func FuzzThreadKeys(f *testing.F) {
	f.Add("ada", "go-101", "ada", "go-101")
	f.Add("ada", "go-101", "ada", "go-102")
	f.Add("ada", "go-101", "bob", "go-101")
	// Concatenations and separators that a naive key would confuse.
	f.Add("ab", "c", "a", "bc")
	f.Add("a:b", "c", "a", "b:c")
	f.Add("a", "b", "b", "a")
	f.Add("x", "x", "x", "x\x00")
	f.Add("{tag}", "c", "tag", "c")
	f.Add("u", "c", "u ", "c")
	f.Add("é", "c", "e\u0301", "c")
	f.Add("\xff", "c", "\ufffd", "c")
	f.Add(strings.Repeat("u", MaxIDBytes), "c", strings.Repeat("u", MaxIDBytes+1), "c")

	ctx := context.Background()
	env := testutil.Redis(f)
	rs, err := NewRedis(env.Client, Config{Prefix: env.Prefix})
	if err != nil {
		f.Fatal(err)
	}
	ms, err := NewMemory(Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = ms.Close() })
	type pair struct{ user, course string }
	owners := map[string]pair{} // thread ID -> its pair, both stores

	f.Fuzz(func(t *testing.T, u1, c1, u2, c2 string) {
		same := u1 == u2 && c1 == c2
		k1 := rs.keys(digest('u', u1), digest('c', c1))
		k2 := rs.keys(digest('u', u2), digest('c', c2))
		if (k1.thread == k2.thread) != same || (k1.msgs == k2.msgs) != same {
			t.Fatalf("pairs (%q, %q) and (%q, %q): thread keys %q and %q, message keys %q and %q",
				u1, c1, u2, c2, k1.thread, k2.thread, k1.msgs, k2.msgs)
		}
		if (k1.user == k2.user) != (u1 == u2) {
			t.Fatalf("users %q and %q: index keys %q and %q", u1, u2, k1.user, k2.user)
		}
		for _, k := range []redisKeys{k1, k2} {
			if k.thread == k.msgs || k.thread == k.user || k.msgs == k.user {
				t.Fatalf("a thread's keys overlap: %+v", k)
			}
			tag := hashTag(k.thread)
			for _, key := range k.all() {
				if !strings.HasPrefix(key, env.Prefix) || hashTag(key) != tag || tag == "" {
					t.Fatalf("key %q: not under the prefix or not in the hash tag {%s} of %q", key, tag, k.thread)
				}
			}
		}

		valid := validID(u1) && validID(c1) && validID(u2) && validID(c2)
		for _, st := range []Store{rs, ms} {
			a, errA := st.GetOrCreate(ctx, u1, c1)
			b, errB := st.GetOrCreate(ctx, u2, c2)
			if !valid {
				for _, err := range []error{errA, errB} {
					if err != nil && !errors.Is(err, chatscale.ErrInvalidInput) {
						t.Fatalf("%T: GetOrCreate of an invalid pair: %v; want an input error", st, err)
					}
				}
				if (errA == nil) != (validID(u1) && validID(c1)) || (errB == nil) != (validID(u2) && validID(c2)) {
					t.Fatalf("%T: GetOrCreate(%q, %q) = %v, GetOrCreate(%q, %q) = %v; want an error for exactly the invalid pairs",
						st, u1, c1, errA, u2, c2, errB)
				}
				continue
			}
			if errA != nil || errB != nil {
				t.Fatalf("%T: GetOrCreate: %v, %v", st, errA, errB)
			}
			if (a.ID == b.ID) != same {
				t.Fatalf("%T: pairs (%q, %q) and (%q, %q) have threads %q and %q", st, u1, c1, u2, c2, a.ID, b.ID)
			}
			for _, th := range []struct {
				id string
				p  pair
			}{{a.ID, pair{u1, c1}}, {b.ID, pair{u2, c2}}} {
				if p, ok := owners[th.id]; ok && p != th.p {
					t.Fatalf("%T: thread %q belongs to (%q, %q) and to (%q, %q)", st, th.id, p.user, p.course, th.p.user, th.p.course)
				}
				owners[th.id] = th.p
			}
			if a.UserID != u1 || a.CourseID != c1 || b.UserID != u2 || b.CourseID != c2 {
				t.Fatalf("%T: threads %+v and %+v do not name their pairs", st, a, b)
			}
		}
	})
}

// hashTag returns the hash tag of a Redis key: what is between its first
// '{' and the next '}'.
func hashTag(key string) string {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return ""
	}
	j := strings.IndexByte(key[i+1:], '}')
	if j < 0 {
		return ""
	}
	return key[i+1 : i+1+j]
}

// validID reports whether id is a user or course ID the stores accept.
func validID(id string) bool {
	return id != "" && len(id) <= MaxIDBytes && utf8.ValidString(id)
}
