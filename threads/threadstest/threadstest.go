// Package threadstest is the conformance suite of threads.Store: every
// backend, ours and third parties', runs it from its own tests, with -race:
//
//	func TestConformance(t *testing.T) {
//		threadstest.Run(t, func(t *testing.T, cfg threads.Config) threadstest.Harness {
//			clock := ... // a fake clock
//			cfg.Now = clock.Now
//			st, err := mystore.New(cfg)
//			if err != nil {
//				t.Fatal(err)
//			}
//			t.Cleanup(func() { st.Close() })
//			return threadstest.Harness{Store: st, Now: clock.Now, Advance: clock.Advance}
//		})
//	}
//
// The suite checks the semantics documented on threads.Store: get-or-create,
// video tracking, history order and trimming, idempotent appends (a
// retried Append with the same message IDs stores one copy, also after
// other appends and from concurrent retries), deletion, ForgetUser, key
// collisions between odd IDs, bad input, not-found, TTL expiry and sliding,
// every write keeping its thread counted by Active and erasable by
// ForgetUser for as long as it lives, the active count, concurrency (one
// thread for 1000 concurrent GetOrCreate calls spread over 4 peers) and
// large histories. For a store that implements threads.Finder it also
// checks Find: ErrNotFound and nothing created for a pair without a
// thread, the pair's own thread and no other, ErrNotFound after Delete,
// ForgetUser and expiry, no TTL slide, no activity, bad input. The Find
// subtests skip for a store that does not implement it.
package threadstest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/threads"
)

// Harness is one fresh store under test and the means to move its time.
type Harness struct {
	// Store is an empty store built with the Config the suite passed to the
	// factory.
	Store threads.Store
	// Now is the store's clock (its Config.Now). Nil means time.Now.
	Now func() time.Time
	// Advance moves the store's time forward by d: its clock and whatever
	// expiry the backend runs by itself (for miniredis, FastForward). Nil
	// means the store runs on real time: the suite then checks expiry with
	// TTLs of RealTTL (doubled on a machine too slow to observe them) and
	// waits for them to pass, polling with a deadline.
	Advance func(d time.Duration)
	// NewPeer returns another Store over the same data as Store, as another
	// instance of the application with its own connections would have. Nil
	// means the suite shares Store between its goroutines.
	NewPeer func() threads.Store
}

// NewHarness builds a Harness for one test. cfg sets TTL and MaxMessages,
// which the store must honour; the factory may set the other fields (Prefix,
// Now, ...). It registers its cleanup with t.
type NewHarness func(t *testing.T, cfg threads.Config) Harness

// RealTTL is the TTL of the expiry tests on backends that run on real time.
// An attempt whose observations come too late to prove its claim (on a
// slow or loaded machine) is repeated with twice the TTL, then four times;
// the test fails if none proves it.
const RealTTL = 2 * time.Second

// realTimeAttempts is the number of TTLs, doubling from RealTTL, that a
// real-time expiry test tries.
const realTimeAttempts = 3

// margin is how long past an expiry a real-time test waits before checking
// that the thread is gone.
const margin = 20 * time.Millisecond

// ttl is the TTL of the expiry tests on backends whose time the suite moves.
const ttl = time.Hour

// Run runs the conformance suite against the stores newHarness builds, one
// fresh store per subtest. The real-time expiry subtests run in parallel.
func Run(t *testing.T, newHarness NewHarness) {
	s := suite{newHarness: newHarness}
	tests := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"GetOrCreate", s.testGetOrCreate},
		{"IDs", s.testIDs},
		{"KeyCollisions", s.testKeyCollisions},
		{"TrackVideo", s.testTrackVideo},
		{"Open", s.testOpen},
		{"OpenFirstVideo", s.testOpenFirstVideo},
		{"AppendHistory", s.testAppendHistory},
		{"MessageTimes", s.testMessageTimes},
		{"IdempotentAppend", s.testIdempotentAppend},
		{"ConcurrentRetries", s.testConcurrentRetries},
		{"Trim", s.testTrim},
		{"KeepAll", s.testKeepAll},
		{"Delete", s.testDelete},
		{"StaleIDs", s.testStaleIDs},
		{"ForgetUser", s.testForgetUser},
		{"ForgetUserSomeExpired", s.testForgetUserSomeExpired},
		{"NotFound", s.testNotFound},
		{"BadInput", s.testBadInput},
		{"Expiry", s.testExpiry},
		{"Sliding", s.testSliding},
		{"ReadsDoNotSlide", s.testReadsDoNotSlide},
		{"WritesKeepIndexesAlive", s.testWritesKeepIndexesAlive},
		{"Active", s.testActive},
		{"ActiveBoundaries", s.testActiveBoundaries},
		{"Peers", s.testPeers},
		{"ConcurrentGetOrCreate", s.testConcurrentGetOrCreate},
		{"ConcurrentAppend", s.testConcurrentAppend},
		{"ConcurrentTurns", s.testConcurrentTurns},
		{"LargeHistory", s.testLargeHistory},
		{"Find", s.testFind},
		{"FindKeyCollisions", s.testFindKeyCollisions},
		{"FindBadInput", s.testFindBadInput},
		{"FindDoesNotSlide", s.testFindDoesNotSlide},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.fn)
	}
}

type suite struct{ newHarness NewHarness }

// env is a Harness with helpers.
type env struct {
	Harness
	t   *testing.T
	ttl time.Duration
}

func (s suite) env(t *testing.T, cfg threads.Config) *env {
	t.Helper()
	h := s.newHarness(t, cfg)
	if h.Store == nil {
		t.Fatal("threadstest: the factory returned no Store")
	}
	return &env{Harness: h, t: t, ttl: cfg.TTL}
}

func (e *env) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

func (e *env) peer(i int) threads.Store {
	if e.NewPeer == nil || i == 0 {
		return e.Store
	}
	return e.NewPeer()
}

// waitUntil polls the store's clock until it reaches when (real-time
// backends only).
func (e *env) waitUntil(when time.Time) {
	e.t.Helper()
	limit := time.Now().Add(time.Until(when) + 10*time.Second)
	for e.now().Before(when) {
		if time.Now().After(limit) {
			e.t.Fatalf("the store's clock never reached %v", when)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var ctx = context.Background()

func (e *env) thread(user, course string) threads.Thread {
	e.t.Helper()
	th, err := e.Store.GetOrCreate(ctx, user, course)
	if err != nil {
		e.t.Fatalf("GetOrCreate(%q, %q): %v", user, course, err)
	}
	return th
}

func (e *env) append(id string, msgs ...threads.Message) {
	e.t.Helper()
	if err := e.Store.Append(ctx, id, msgs...); err != nil {
		e.t.Fatalf("Append(%q): %v", id, err)
	}
}

func (e *env) history(id string, limit int) []threads.Message {
	e.t.Helper()
	h, err := e.Store.History(ctx, id, limit)
	if err != nil {
		e.t.Fatalf("History(%q, %d): %v", id, limit, err)
	}
	return h
}

func (e *env) exists(id string) bool {
	e.t.Helper()
	_, err := e.Store.Get(ctx, id)
	switch {
	case err == nil:
		return true
	case errors.Is(err, threads.ErrNotFound):
		return false
	}
	e.t.Fatalf("Get(%q): %v", id, err)
	return false
}

func user(content string) threads.Message {
	return threads.Message{Role: threads.RoleUser, Content: content}
}

func contents(h []threads.Message) []string {
	out := make([]string, len(h))
	for i, m := range h {
		out[i] = m.Content
	}
	return out
}

func wantContents(t *testing.T, what string, h []threads.Message, want ...string) {
	t.Helper()
	if got := contents(h); !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
		t.Fatalf("%s = %q; want %q", what, got, want)
	}
}

func wantNotFound(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, threads.ErrNotFound) {
		t.Fatalf("%s: err = %v; want ErrNotFound", what, err)
	}
}

func wantInvalid(t *testing.T, what string, err error) {
	t.Helper()
	var ie *chatscale.InputError
	if !errors.Is(err, chatscale.ErrInvalidInput) || !errors.As(err, &ie) || ie.Field == "" {
		t.Fatalf("%s: err = %v; want a *chatscale.InputError", what, err)
	}
}

func ms(t time.Time) time.Time { return t.Truncate(time.Millisecond) }

// within checks that got lies in [from truncated to ms, to].
func within(t *testing.T, what string, got, from, to time.Time) {
	t.Helper()
	if got.Before(ms(from)) || got.After(to) {
		t.Fatalf("%s = %v; want within [%v, %v]", what, got, ms(from), to)
	}
}

func (s suite) testGetOrCreate(t *testing.T) {
	e := s.env(t, threads.Config{})
	before := e.now()
	th := e.thread("u1", "c1")
	after := e.now()
	if th.ID == "" || th.UserID != "u1" || th.CourseID != "c1" || th.VideoURL != "" {
		t.Fatalf("GetOrCreate = %+v; want an ID, u1, c1 and no video", th)
	}
	within(t, "CreatedAt", th.CreatedAt, before, after)
	within(t, "UpdatedAt", th.UpdatedAt, before, after)
	if again := e.thread("u1", "c1"); again.ID != th.ID || !again.CreatedAt.Equal(th.CreatedAt) {
		t.Fatalf("second GetOrCreate = %+v; want the thread %+v", again, th)
	}
	got, err := e.Store.Get(ctx, th.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got.ID != th.ID || got.UserID != "u1" || got.CourseID != "c1" || !got.CreatedAt.Equal(th.CreatedAt) || got.UpdatedAt.Before(th.UpdatedAt) {
		t.Fatalf("Get = %+v; want %+v", got, th)
	}
	if other := e.thread("u1", "c2"); other.ID == th.ID {
		t.Fatal("two courses of one user share a thread")
	}
	if other := e.thread("u2", "c1"); other.ID == th.ID {
		t.Fatal("two users of one course share a thread")
	}
}

func (s suite) testIDs(t *testing.T) {
	e := s.env(t, threads.Config{})
	seen := map[string]bool{}
	for i := range 200 {
		id := e.thread(fmt.Sprintf("user-%d", i%20), fmt.Sprintf("course-%d", i/20)).ID
		if seen[id] {
			t.Fatalf("ID %q given to two pairs", id)
		}
		seen[id] = true
		if len(id) < 22 || len(id) > threads.MaxIDBytes {
			t.Fatalf("ID %q: want 22 to %d characters (128 random bits, URL-safe)", id, threads.MaxIDBytes)
		}
		for _, c := range id {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-._~", c)) {
				t.Fatalf("ID %q holds %q, which is not URL-safe", id, c)
			}
		}
	}
}

// collidingPairs differ only in where separators, braces, spaces and
// normalisation fall.
var collidingPairs = [][2]string{
	{"a:b", "c"}, {"a", "b:c"}, {"a", "b"}, {"a:", "b"}, {"a", ":b"},
	{"{a}", "b"}, {"a", "{b}"}, {"}a{", "b"}, {"{", "}"}, {"}", "{"},
	{"a b", "c"}, {"a", "b c"}, {"a.b", "c"}, {"a", "b.c"}, {"a*", "b"},
	{"a", "*"}, {"é", "x"}, {"e\u0301", "x"}, {"u\x00", "c"}, {"u", "\x00c"},
	{"0", "c"}, {"00", "c"}, {"u", "c\n"}, {"a\\", "b"}, {"日本", "語"}, {"日", "本語"},
}

func (s suite) testKeyCollisions(t *testing.T) {
	e := s.env(t, threads.Config{})
	ids := map[string][2]string{}
	for i, p := range collidingPairs {
		th := e.thread(p[0], p[1])
		if q, dup := ids[th.ID]; dup {
			t.Fatalf("pairs %q and %q share thread %q", p, q, th.ID)
		}
		ids[th.ID] = p
		if th.UserID != p[0] || th.CourseID != p[1] {
			t.Fatalf("GetOrCreate(%q, %q) = user %q, course %q", p[0], p[1], th.UserID, th.CourseID)
		}
		e.append(th.ID, user(fmt.Sprint("msg ", i)))
		if _, err := e.Store.TrackVideo(ctx, th.ID, fmt.Sprint("video ", i)); err != nil {
			t.Fatal(err)
		}
	}
	check := func(deletedUser string) {
		t.Helper()
		for i, p := range collidingPairs {
			th := e.thread(p[0], p[1])
			if p[0] == deletedUser {
				if len(e.history(th.ID, 0)) != 0 {
					t.Fatalf("pair %q kept its history after ForgetUser(%q)", p, deletedUser)
				}
				continue
			}
			if _, ok := ids[th.ID]; !ok {
				t.Fatalf("pair %q got a new thread", p)
			}
			wantContents(t, fmt.Sprintf("History of %q", p), e.history(th.ID, 0), fmt.Sprint("msg ", i))
			if th.VideoURL != fmt.Sprint("video ", i) {
				t.Fatalf("pair %q has video %q", p, th.VideoURL)
			}
		}
	}
	check("")
	want := 0
	for _, p := range collidingPairs {
		if p[0] == "a" {
			want++
		}
	}
	n, err := e.Store.ForgetUser(ctx, "a")
	if err != nil || n != want {
		t.Fatalf("ForgetUser(a) = %d, %v; want the %d threads of user \"a\"", n, err, want)
	}
	check("a")
}

func (s suite) testTrackVideo(t *testing.T) {
	e := s.env(t, threads.Config{})
	id := e.thread("u", "c").ID
	steps := []struct {
		video    string
		switched bool
	}{{"v1", false}, {"v1", false}, {"v2", true}, {"v2", false}, {"v1", true}}
	for _, st := range steps {
		sw, err := e.Store.TrackVideo(ctx, id, st.video)
		if err != nil || sw != st.switched {
			t.Fatalf("TrackVideo(%q) = %v, %v; want %v", st.video, sw, err, st.switched)
		}
		if th, err := e.Store.Get(ctx, id); err != nil || th.VideoURL != st.video {
			t.Fatalf("Get after TrackVideo(%q) = %+v, %v", st.video, th, err)
		}
	}
}

func (s suite) testOpen(t *testing.T) {
	e := s.env(t, threads.Config{})
	before := e.now()
	s1, err := e.Store.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c", VideoURL: "v1"})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if !s1.Created || s1.VideoSwitched || s1.PreviousVideo != "" || len(s1.History) != 0 || s1.Thread.VideoURL != "v1" ||
		s1.Thread.UserID != "u" || s1.Thread.CourseID != "c" {
		t.Fatalf("first Open = %+v; want a created thread on v1, no switch, no history", s1)
	}
	within(t, "CreatedAt", s1.Thread.CreatedAt, before, e.now())
	if th := e.thread("u", "c"); th.ID != s1.Thread.ID || th.VideoURL != "v1" {
		t.Fatalf("GetOrCreate after Open = %+v; want thread %q on v1", th, s1.Thread.ID)
	}
	e.append(s1.Thread.ID, user("m1"), user("m2"), user("m3"))

	s2, err := e.Store.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c", VideoURL: "v1", HistoryLimit: 2})
	if err != nil || s2.Created || s2.VideoSwitched || s2.Thread.ID != s1.Thread.ID {
		t.Fatalf("second Open = %+v, %v; want the same thread, not created, no switch", s2, err)
	}
	wantContents(t, "Open history (limit 2)", s2.History, "m2", "m3")

	s3, err := e.Store.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c", VideoURL: "v2", HistoryLimit: -1})
	if err != nil || !s3.VideoSwitched || s3.PreviousVideo != "v1" || s3.Thread.VideoURL != "v2" || len(s3.History) != 0 {
		t.Fatalf("Open on v2 = %+v, %v; want a switch from v1 and no history", s3, err)
	}
	s4, err := e.Store.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c"})
	if err != nil || s4.VideoSwitched || s4.Thread.VideoURL != "v2" {
		t.Fatalf("Open without video = %+v, %v; want v2 kept, no switch", s4, err)
	}
	wantContents(t, "Open history (limit 0)", s4.History, "m1", "m2", "m3")
	if s4.Thread.UpdatedAt.Before(s1.Thread.UpdatedAt) || !s4.Thread.CreatedAt.Equal(s1.Thread.CreatedAt) {
		t.Fatalf("times went wrong: first %+v, last %+v", s1.Thread, s4.Thread)
	}
	s5, err := e.Store.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "other", VideoURL: "v9", HistoryLimit: 5})
	if err != nil || !s5.Created || s5.VideoSwitched || s5.Thread.ID == s1.Thread.ID {
		t.Fatalf("Open of another course = %+v, %v; want a new thread, no switch", s5, err)
	}
}

func (s suite) testAppendHistory(t *testing.T) {
	e := s.env(t, threads.Config{})
	id := e.thread("u", "c").ID
	if h := e.history(id, 0); len(h) != 0 {
		t.Fatalf("History of a new thread = %v; want none", h)
	}
	e.append(id, threads.Message{Role: threads.RoleSystem, Content: "sys"})
	e.append(id, user("q"), threads.Message{Role: threads.RoleAssistant, Content: "a"})
	e.append(id) // no messages: a write without content
	h := e.history(id, 0)
	wantContents(t, "History", h, "sys", "q", "a")
	if h[0].Role != threads.RoleSystem || h[1].Role != threads.RoleUser || h[2].Role != threads.RoleAssistant {
		t.Fatalf("roles = %q %q %q", h[0].Role, h[1].Role, h[2].Role)
	}
	wantContents(t, "History(2)", e.history(id, 2), "q", "a")
	wantContents(t, "History(1)", e.history(id, 1), "a")
	wantContents(t, "History(10)", e.history(id, 10), "sys", "q", "a")
	wantContents(t, "History(-1)", e.history(id, -1))
	e.append(id, user(""), user("with : { } \n \x00 and é"))
	wantContents(t, "History(2)", e.history(id, 2), "", "with : { } \n \x00 and é")
}

func (s suite) testMessageTimes(t *testing.T) {
	e := s.env(t, threads.Config{})
	th := e.thread("u", "c")
	before := e.now()
	e.append(th.ID, user("now"))
	after := e.now()
	given := time.Date(2020, 1, 2, 3, 4, 5, 678901234, time.FixedZone("X", 3600))
	e.append(th.ID, threads.Message{Role: threads.RoleUser, Content: "given", Time: given})
	h := e.history(th.ID, 0)
	within(t, "time of a message given no time", h[0].Time, before, after)
	if !h[1].Time.Equal(ms(given)) {
		t.Fatalf("time = %v; want %v (millisecond precision)", h[1].Time, ms(given))
	}
	got, err := e.Store.Get(ctx, th.ID)
	if err != nil {
		t.Fatal(err)
	}
	within(t, "UpdatedAt after Append", got.UpdatedAt, before, e.now())
	if !got.CreatedAt.Equal(th.CreatedAt) {
		t.Fatalf("CreatedAt changed from %v to %v", th.CreatedAt, got.CreatedAt)
	}
}

// testIdempotentAppend checks that a message whose ID a kept message holds
// is not stored again: a retried Append stores one copy, also when another
// Append came in between, and History returns the IDs.
func (s suite) testIdempotentAppend(t *testing.T) {
	e := s.env(t, threads.Config{MaxMessages: 4})
	id := e.thread("u", "c").ID
	q := threads.Message{Role: threads.RoleUser, Content: "question", ID: "turn-1/q"}
	a := threads.Message{Role: threads.RoleAssistant, Content: "answer", ID: "turn-1/a"}
	e.append(id, q, a)
	e.append(id, q, a) // the retry of a call that seemed to fail
	h := e.history(id, 0)
	wantContents(t, "History after a retried Append", h, "question", "answer")
	if h[0].ID != q.ID || h[1].ID != a.ID {
		t.Fatalf("History IDs = %q, %q; want %q, %q", h[0].ID, h[1].ID, q.ID, a.ID)
	}
	// Another turn, then a late retry of the first: still one copy.
	e.append(id, threads.Message{Role: threads.RoleUser, Content: "next", ID: "turn-2/q"})
	e.append(id, q, a)
	wantContents(t, "History after a late retry", e.history(id, 0), "question", "answer", "next")
	// A retry that also carries a new message stores the new one only;
	// an ID repeated within one call is stored once; messages without ID
	// are always stored.
	e.append(id, threads.Message{Role: threads.RoleUser, Content: "next", ID: "turn-2/q"},
		threads.Message{Role: threads.RoleAssistant, Content: "reply", ID: "turn-2/a"},
		threads.Message{Role: threads.RoleAssistant, Content: "reply again", ID: "turn-2/a"})
	wantContents(t, "History after a partial retry", e.history(id, 0), "question", "answer", "next", "reply")
	e.append(id, user("plain"), user("plain"))
	wantContents(t, "History after messages without ID", e.history(id, 0), "next", "reply", "plain", "plain")
	// IDs live with the kept messages: once its message is trimmed away, an
	// ID is new again.
	e.append(id, q)
	wantContents(t, "History after the ID's message was trimmed", e.history(id, 0), "reply", "plain", "plain", "question")
	// An ID held by another thread is no concern of this one.
	other := e.thread("u", "other").ID
	e.append(other, a)
	wantContents(t, "History of another thread", e.history(other, 0), "answer")
	// Bad IDs.
	for _, bad := range []string{strings.Repeat("x", threads.MaxMessageIDBytes+1), "\xff"} {
		err := e.Store.Append(ctx, id, user("ok"), threads.Message{Role: threads.RoleUser, Content: "x", ID: bad})
		var ie *chatscale.InputError
		if !errors.As(err, &ie) || ie.Field != "Messages[1].ID" {
			t.Fatalf("Append with ID %q: err = %v; want a *chatscale.InputError for Messages[1].ID", bad, err)
		}
	}
	long := strings.Repeat("é", threads.MaxMessageIDBytes/2)
	e.append(id, threads.Message{Role: threads.RoleUser, Content: "long id", ID: long})
	if h := e.history(id, 1); len(h) != 1 || h[0].ID != long {
		t.Fatalf("History of a message with a %d-byte ID = %+v", len(long), h)
	}
}

// testConcurrentRetries checks that concurrent retries of one Append, from
// several peers, store one copy.
func (s suite) testConcurrentRetries(t *testing.T) {
	e := s.env(t, threads.Config{})
	id := e.thread("u", "c").ID
	const tries = 16
	var wg sync.WaitGroup
	errs := make(chan error, tries)
	start := make(chan struct{})
	for i := range tries {
		st := e.peer(i % 4)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs <- st.Append(ctx, id,
				threads.Message{Role: threads.RoleUser, Content: "q", ID: "t1-q"},
				threads.Message{Role: threads.RoleAssistant, Content: "a", ID: "t1-a"})
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	wantContents(t, "History after concurrent retries", e.history(id, 0), "q", "a")
}

func (s suite) testTrim(t *testing.T) {
	e := s.env(t, threads.Config{MaxMessages: 5})
	id := e.thread("u", "c").ID
	for i := 1; i <= 3; i++ {
		e.append(id, user(fmt.Sprint("m", i)))
	}
	e.append(id, user("m4"), user("m5"), user("m6"), user("m7"), user("m8"))
	wantContents(t, "History", e.history(id, 0), "m4", "m5", "m6", "m7", "m8")
	e.append(id, user("m9"))
	wantContents(t, "History", e.history(id, 0), "m5", "m6", "m7", "m8", "m9")
	var batch []threads.Message
	for i := 10; i <= 16; i++ {
		batch = append(batch, user(fmt.Sprint("m", i)))
	}
	e.append(id, batch...)
	wantContents(t, "History", e.history(id, 0), "m12", "m13", "m14", "m15", "m16")
	wantContents(t, "History(3)", e.history(id, 3), "m14", "m15", "m16")
	s1, err := e.Store.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c", HistoryLimit: 50})
	if err != nil {
		t.Fatal(err)
	}
	wantContents(t, "Open history", s1.History, "m12", "m13", "m14", "m15", "m16")
}

func (s suite) testKeepAll(t *testing.T) {
	e := s.env(t, threads.Config{MaxMessages: -1})
	id := e.thread("u", "c").ID
	var batch, want []string
	var msgs []threads.Message
	for i := range 250 {
		batch = append(batch, fmt.Sprint("m", i))
		msgs = append(msgs, user(batch[i]))
	}
	e.append(id, msgs...)
	e.append(id, msgs[:60]...)
	want = append(append(want, batch...), batch[:60]...)
	wantContents(t, "History (MaxMessages < 0 keeps all)", e.history(id, 0), want...)
}

func (s suite) testDelete(t *testing.T) {
	e := s.env(t, threads.Config{})
	a, b := e.thread("u", "c1"), e.thread("u", "c2")
	e.append(a.ID, user("a"))
	e.append(b.ID, user("b"))
	if err := e.Store.Delete(ctx, a.ID); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if e.exists(a.ID) {
		t.Fatal("deleted thread still exists")
	}
	wantNotFound(t, "second Delete", e.Store.Delete(ctx, a.ID))
	wantContents(t, "History of the other thread", e.history(b.ID, 0), "b")
	again := e.thread("u", "c1")
	if again.ID == a.ID {
		t.Fatal("GetOrCreate after Delete returned the deleted ID")
	}
	if h := e.history(again.ID, 0); len(h) != 0 {
		t.Fatalf("new thread has history %q", contents(h))
	}
	wantNotFound(t, "Append to the deleted ID", e.Store.Append(ctx, a.ID, user("x")))
	if h := e.history(again.ID, 0); len(h) != 0 {
		t.Fatalf("Append to the deleted ID reached the new thread: %q", contents(h))
	}
}

func (s suite) testForgetUser(t *testing.T) {
	e := s.env(t, threads.Config{})
	var ids []string
	for _, c := range []string{"c1", "c2", "c3"} {
		id := e.thread("u", c).ID
		e.append(id, user(c))
		ids = append(ids, id)
	}
	other := e.thread("v", "c1")
	e.append(other.ID, user("v"))
	n, err := e.Store.ForgetUser(ctx, "u")
	if err != nil || n != 3 {
		t.Fatalf("ForgetUser = %d, %v; want 3", n, err)
	}
	for _, id := range ids {
		if e.exists(id) {
			t.Fatalf("thread %q survived ForgetUser", id)
		}
	}
	wantContents(t, "History of another user", e.history(other.ID, 0), "v")
	if n, err := e.Store.ForgetUser(ctx, "u"); err != nil || n != 0 {
		t.Fatalf("second ForgetUser = %d, %v; want 0", n, err)
	}
	if n, err := e.Store.ForgetUser(ctx, "nobody"); err != nil || n != 0 {
		t.Fatalf("ForgetUser(nobody) = %d, %v; want 0", n, err)
	}
	if th := e.thread("u", "c1"); slices.Contains(ids, th.ID) {
		t.Fatal("GetOrCreate after ForgetUser returned a forgotten ID")
	}
}

func (s suite) testNotFound(t *testing.T) {
	e := s.env(t, threads.Config{})
	gone := e.thread("u", "c").ID
	if err := e.Store.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{gone, "nope", strings.Repeat("x", threads.MaxIDBytes), "{x}:y"} {
		_, err := e.Store.Get(ctx, id)
		wantNotFound(t, "Get", err)
		_, err = e.Store.History(ctx, id, 0)
		wantNotFound(t, "History", err)
		_, err = e.Store.TrackVideo(ctx, id, "v")
		wantNotFound(t, "TrackVideo", err)
		wantNotFound(t, "Append", e.Store.Append(ctx, id, user("x")))
		wantNotFound(t, "Delete", e.Store.Delete(ctx, id))
	}
}

func (s suite) testBadInput(t *testing.T) {
	e := s.env(t, threads.Config{})
	id := e.thread("u", "c").ID
	e.append(id, user("kept"))
	long := strings.Repeat("x", threads.MaxIDBytes+1)
	bad := "\xff\xfe"
	st := e.Store
	cases := map[string]error{}
	add := func(name string, err error) { cases[name] = err }
	for _, v := range []string{"", long, bad} {
		q := fmt.Sprintf("%.8q", v)
		_, err := st.GetOrCreate(ctx, v, "c")
		add("GetOrCreate user "+q, err)
		_, err = st.GetOrCreate(ctx, "u", v)
		add("GetOrCreate course "+q, err)
		_, err = st.Open(ctx, threads.OpenRequest{UserID: v, CourseID: "c"})
		add("Open user "+q, err)
		_, err = st.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: v})
		add("Open course "+q, err)
		_, err = st.Get(ctx, v)
		add("Get "+q, err)
		_, err = st.History(ctx, v, 0)
		add("History "+q, err)
		_, err = st.TrackVideo(ctx, v, "video")
		add("TrackVideo id "+q, err)
		add("Append id "+q, st.Append(ctx, v, user("x")))
		add("Delete "+q, st.Delete(ctx, v))
		_, err = st.ForgetUser(ctx, v)
		add("ForgetUser "+q, err)
	}
	_, err := st.TrackVideo(ctx, id, "")
	add("TrackVideo empty video", err)
	_, err = st.TrackVideo(ctx, id, bad)
	add("TrackVideo bad video", err)
	_, err = st.TrackVideo(ctx, id, strings.Repeat("v", threads.MaxVideoURLBytes+1))
	add("TrackVideo long video", err)
	_, err = st.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c", VideoURL: bad})
	add("Open bad video", err)
	add("Append role bot", st.Append(ctx, id, threads.Message{Role: "bot", Content: "x"}))
	add("Append empty role", st.Append(ctx, id, threads.Message{Content: "x"}))
	add("Append bad content", st.Append(ctx, id, user(bad)))
	add("Append good then bad", st.Append(ctx, id, user("ok"), threads.Message{Role: "User", Content: "x"}))
	add("Append huge content", st.Append(ctx, id, user(strings.Repeat("x", threads.MaxContentBytes+1))))
	_, err = st.Active(ctx, 0)
	add("Active(0)", err)
	_, err = st.Active(ctx, -time.Minute)
	add("Active(-1m)", err)
	for name, err := range cases {
		wantInvalid(t, name, err)
	}
	wantContents(t, "History after rejected appends", e.history(id, 0), "kept")

	// The limits themselves are accepted.
	u, c := strings.Repeat("u", threads.MaxIDBytes), strings.Repeat("é", threads.MaxIDBytes/2)
	th := e.thread(u, c)
	if th.UserID != u || th.CourseID != c {
		t.Fatal("512-byte IDs came back changed")
	}
	if _, err := st.TrackVideo(ctx, th.ID, strings.Repeat("v", threads.MaxVideoURLBytes)); err != nil {
		t.Fatalf("TrackVideo with a %d-byte URL: %v", threads.MaxVideoURLBytes, err)
	}
	if n, err := st.ForgetUser(ctx, u); err != nil || n != 1 {
		t.Fatalf("ForgetUser(512-byte ID) = %d, %v; want 1", n, err)
	}
}

// expiryTest runs an expiry check. On a backend whose time the suite moves
// it runs fake once, with a TTL of an hour. On a real-time backend it runs
// real with TTLs of RealTTL, then twice and four times that: real reports
// whether the machine was quick enough for its observation to prove the
// claim, and an attempt that was not is repeated with the next TTL. The
// test fails when no attempt could prove it; it never skips.
func (s suite) expiryTest(t *testing.T, fake func(e *env), real func(e *env) (proved bool)) {
	e := s.env(t, threads.Config{TTL: ttl})
	if e.Advance != nil {
		fake(e)
		return
	}
	t.Parallel()
	d := RealTTL
	for range realTimeAttempts {
		if real(s.env(t, threads.Config{TTL: d})) {
			return
		}
		t.Logf("TTL %v: the observation came too late to prove anything; retrying with a longer TTL", d)
		d *= 2
	}
	t.Fatalf("no observation within TTLs of up to %v proved the claim: the store answers too slowly", d/2)
}

// late reports whether the store's clock has reached from + TTL, after
// which a thread written at from may have expired.
func (e *env) late(from time.Time) bool { return !e.now().Before(from.Add(e.ttl)) }

func (s suite) testExpiry(t *testing.T) {
	s.expiryTest(t, s.expiryFake, s.expiryReal)
}

func (s suite) expiryFake(e *env) {
	t := e.t
	a := e.thread("u", "c")
	e.append(a.ID, user("old"))
	other := e.thread("v", "c")
	e.Advance(e.ttl - time.Second)
	if !e.exists(a.ID) {
		t.Fatal("thread expired a second before its TTL")
	}
	e.Advance(time.Second)
	if e.exists(a.ID) || e.exists(other.ID) {
		t.Fatal("thread outlived its TTL")
	}
	e.checkExpired(a.ID, "v")
}

// expiryReal checks on a real clock that a thread lives until its TTL has
// passed since its last write, and not beyond.
func (s suite) expiryReal(e *env) bool {
	t := e.t
	t0 := e.now()
	a := e.thread("u", "c")
	if err := e.Store.Append(ctx, a.ID, user("old")); err != nil {
		if errors.Is(err, threads.ErrNotFound) && e.late(t0) {
			return false
		}
		t.Fatalf("Append right after GetOrCreate: %v", err)
	}
	e.thread("v", "c")
	t1 := e.now()
	// Written at t0 or later, the thread lives at least until t0 + TTL.
	e.waitUntil(t0.Add(e.ttl * 3 / 4))
	_, err := e.Store.Get(ctx, a.ID)
	if e.late(t0) {
		return false
	}
	if err != nil {
		t.Fatalf("Get before the TTL passed: %v", err)
	}
	// Written last at t1 or earlier, and only read since, it is gone at
	// t1 + TTL.
	e.waitUntil(t1.Add(e.ttl + margin))
	if e.exists(a.ID) {
		t.Fatal("thread outlived its TTL (or Get slid it)")
	}
	e.checkExpired(a.ID, "v")
	return true
}

// checkExpired checks how the store treats the expired thread id and the
// expired threads of user, once no thread is alive.
func (e *env) checkExpired(id, user string) {
	t := e.t
	_, err := e.Store.History(ctx, id, 0)
	wantNotFound(t, "History after expiry", err)
	wantNotFound(t, "Append after expiry", e.Store.Append(ctx, id, threads.Message{Role: threads.RoleUser, Content: "x"}))
	_, err = e.Store.TrackVideo(ctx, id, "v")
	wantNotFound(t, "TrackVideo after expiry", err)
	if n, err := e.Store.Active(ctx, 10*e.ttl); err != nil || n != 0 {
		t.Fatalf("Active after expiry = %d, %v; want 0", n, err)
	}
	sess, err := e.Store.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c"})
	if err != nil || !sess.Created || sess.Thread.ID == id || len(sess.History) != 0 {
		t.Fatalf("Open after expiry = %+v, %v; want a new empty thread", sess, err)
	}
	if n, err := e.Store.ForgetUser(ctx, user); err != nil || n != 0 {
		t.Fatalf("ForgetUser of a user whose threads expired = %d, %v; want 0", n, err)
	}
}

// writes are the calls that must slide a thread's TTL, each applied to the
// thread with the given ID.
func (e *env) writes() map[string]func(id string) error {
	return map[string]func(id string) error{
		"Append": func(id string) error { return e.Store.Append(ctx, id, user("x")) },
		"TrackVideo": func(id string) error {
			_, err := e.Store.TrackVideo(ctx, id, "video")
			return err
		},
		"GetOrCreate": func(id string) error {
			th, err := e.Store.Get(ctx, id)
			if err == nil {
				_, err = e.Store.GetOrCreate(ctx, th.UserID, th.CourseID)
			}
			return err
		},
		"Open": func(id string) error {
			th, err := e.Store.Get(ctx, id)
			if err == nil {
				_, err = e.Store.Open(ctx, threads.OpenRequest{UserID: th.UserID, CourseID: th.CourseID})
			}
			return err
		},
	}
}

func (s suite) testSliding(t *testing.T) {
	s.expiryTest(t, s.slidingFake, s.slidingReal)
}

func (s suite) slidingFake(e *env) {
	t := e.t
	for name, write := range e.writes() {
		id := e.thread("u", name).ID
		e.append(id, user("first"))
		e.Advance(e.ttl - time.Second)
		if err := write(id); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		e.Advance(e.ttl - time.Second)
		if !e.exists(id) {
			t.Fatalf("%s did not slide the TTL", name)
		}
		if h := e.history(id, 0); len(h) == 0 || h[0].Content != "first" {
			t.Fatalf("%s: history lost its TTL: %q", name, contents(h))
		}
		e.Advance(time.Second)
		if e.exists(id) {
			t.Fatalf("thread outlived the TTL slid by %s", name)
		}
	}
}

// slidingReal checks on a real clock that every write keeps its thread
// alive past the thread's first expiry, until TTL after the write.
func (s suite) slidingReal(e *env) bool {
	t := e.t
	writes := e.writes()
	ids := map[string]string{}
	t0 := e.now()
	for name := range writes {
		id := e.thread("u", name).ID
		if err := e.Store.Append(ctx, id, user("first")); err != nil {
			if errors.Is(err, threads.ErrNotFound) && e.late(t0) {
				return false
			}
			t.Fatalf("Append right after GetOrCreate: %v", err)
		}
		ids[name] = id
	}
	t1 := e.now()
	e.waitUntil(t0.Add(e.ttl / 2))
	tw := e.now()
	for name, write := range writes {
		if err := write(ids[name]); err != nil {
			if errors.Is(err, threads.ErrNotFound) && e.late(t0) {
				return false
			}
			t.Fatalf("%s: %v", name, err)
		}
	}
	tw1 := e.now()
	// Unless slid, every thread has expired at t1 + TTL; slid at tw or
	// later, each lives until tw + TTL.
	e.waitUntil(t1.Add(e.ttl + margin))
	errs := map[string]error{}
	hists := map[string][]threads.Message{}
	for name, id := range ids {
		hists[name], errs[name] = e.Store.History(ctx, id, 0)
	}
	if e.late(tw) {
		return false
	}
	for name, err := range errs {
		if errors.Is(err, threads.ErrNotFound) {
			t.Fatalf("%s did not slide the TTL", name)
		}
		if err != nil {
			t.Fatalf("History after %s: %v", name, err)
		}
		if h := hists[name]; len(h) == 0 || h[0].Content != "first" {
			t.Fatalf("%s: history lost its TTL: %q", name, contents(h))
		}
	}
	e.waitUntil(tw1.Add(e.ttl + margin))
	for name, id := range ids {
		if e.exists(id) {
			t.Fatalf("thread outlived the TTL slid by %s", name)
		}
	}
	return true
}

func (s suite) testReadsDoNotSlide(t *testing.T) {
	s.expiryTest(t, s.readsFake, s.readsReal)
}

func (s suite) readsFake(e *env) {
	id := e.thread("u", "c").ID
	e.Advance(e.ttl / 2)
	if _, err := e.Store.Get(ctx, id); err != nil {
		e.t.Fatal(err)
	}
	e.history(id, 0)
	e.Advance(e.ttl / 2)
	if e.exists(id) {
		e.t.Fatal("Get or History slid the TTL")
	}
}

// readsReal checks on a real clock that Get and History, done halfway
// through the TTL, leave the thread to expire TTL after its last write.
func (s suite) readsReal(e *env) bool {
	t := e.t
	t0 := e.now()
	id := e.thread("u", "c").ID
	t1 := e.now()
	e.waitUntil(t1.Add(e.ttl / 2))
	tr := e.now()
	_, err := e.Store.Get(ctx, id)
	if err == nil {
		_, err = e.Store.History(ctx, id, 0)
	}
	if err != nil {
		if errors.Is(err, threads.ErrNotFound) && e.late(t0) {
			return false
		}
		t.Fatalf("read before the TTL passed: %v", err)
	}
	// Unslid, the thread has expired at t1 + TTL; slid by a read at tr or
	// later, it would live until tr + TTL.
	e.waitUntil(t1.Add(e.ttl + margin))
	if e.exists(id) {
		t.Fatal("Get or History slid the TTL (or the thread outlived it)")
	}
	return !e.late(tr)
}

func (s suite) testActive(t *testing.T) {
	e := s.env(t, threads.Config{TTL: ttl})
	active := func(within time.Duration, want int) {
		t.Helper()
		if n, err := e.Store.Active(ctx, within); err != nil || n != want {
			t.Fatalf("Active(%v) = %d, %v; want %d", within, n, err, want)
		}
	}
	active(time.Hour, 0)
	a := e.thread("u", "a")
	if e.Advance == nil {
		b := e.thread("u", "b")
		e.thread("v", "c")
		active(time.Hour, 3)
		if err := e.Store.Delete(ctx, b.ID); err != nil {
			t.Fatal(err)
		}
		active(time.Hour, 2)
		if _, err := e.Store.ForgetUser(ctx, "u"); err != nil {
			t.Fatal(err)
		}
		active(time.Hour, 1)
		return
	}
	e.Advance(10 * time.Minute)
	b := e.thread("v", "b")
	active(5*time.Minute, 1)
	active(15*time.Minute, 2)
	e.append(a.ID, user("x"))
	active(5*time.Minute, 2)
	e.Advance(10 * time.Minute)
	if _, err := e.Store.Get(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	active(5*time.Minute, 0) // reads are not activity
	active(15*time.Minute, 2)
	if err := e.Store.Delete(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	active(15*time.Minute, 1)
	e.Advance(e.ttl)
	active(10*e.ttl, 0)
}

func (s suite) testPeers(t *testing.T) {
	e := s.env(t, threads.Config{})
	if e.NewPeer == nil {
		t.Skip("the backend has no peers")
	}
	p := e.NewPeer()
	th := e.thread("u", "c")
	got, err := p.GetOrCreate(ctx, "u", "c")
	if err != nil || got.ID != th.ID {
		t.Fatalf("peer GetOrCreate = %+v, %v; want thread %q", got, err, th.ID)
	}
	if err := p.Append(ctx, th.ID, user("from peer")); err != nil {
		t.Fatal(err)
	}
	wantContents(t, "History", e.history(th.ID, 0), "from peer")
}

func (s suite) testConcurrentGetOrCreate(t *testing.T) {
	e := s.env(t, threads.Config{})
	peers := []threads.Store{e.peer(0), e.peer(1), e.peer(2), e.peer(3)}
	const calls = 1000
	ids := make([]string, calls)
	errs := make([]error, calls)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			th, err := peers[i%len(peers)].GetOrCreate(ctx, "racer", "course")
			ids[i], errs[i] = th.ID, err
		}()
	}
	close(start)
	wg.Wait()
	for i := range calls {
		if errs[i] != nil {
			t.Fatalf("call %d: %v", i, errs[i])
		}
		if ids[i] != ids[0] {
			t.Fatalf("concurrent GetOrCreate returned %q and %q", ids[0], ids[i])
		}
	}
}

func (s suite) testConcurrentAppend(t *testing.T) {
	e := s.env(t, threads.Config{MaxMessages: 1000})
	id := e.thread("u", "c").ID
	const writers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		st := e.peer(w % 4)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				errs <- st.Append(ctx, id, user(fmt.Sprintf("%d/%03d", w, j)))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	h := e.history(id, 0)
	if len(h) != writers*each {
		t.Fatalf("History holds %d messages; want %d", len(h), writers*each)
	}
	last := map[string]string{}
	for _, m := range h {
		w, j, _ := strings.Cut(m.Content, "/")
		if j <= last[w] && last[w] != "" {
			t.Fatalf("writer %s: message %s after %s", w, j, last[w])
		}
		last[w] = j
	}
}

func (s suite) testConcurrentTurns(t *testing.T) {
	e := s.env(t, threads.Config{MaxMessages: 1000})
	const learners, turns = 4, 20
	var wg sync.WaitGroup
	errs := make(chan error, learners*turns*2)
	for l := range learners {
		st := e.peer(l)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range turns {
				sess, err := st.Open(ctx, threads.OpenRequest{
					UserID: "shared", CourseID: "c", VideoURL: fmt.Sprint("v", i%3), HistoryLimit: 10,
				})
				if err != nil {
					errs <- err
					return
				}
				errs <- st.Append(ctx, sess.Thread.ID, user("q"), threads.Message{Role: threads.RoleAssistant, Content: "a"})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if h := e.history(e.thread("shared", "c").ID, 0); len(h) != learners*turns*2 {
		t.Fatalf("History holds %d messages; want %d", len(h), learners*turns*2)
	}
}

func (s suite) testLargeHistory(t *testing.T) {
	const max, runes = 50, 10_000
	e := s.env(t, threads.Config{MaxMessages: max})
	id := e.thread("u", "c").ID
	pattern := []rune("aé€𝄞:{}\n\x00 ")
	text := func(i int) string {
		var b strings.Builder
		fmt.Fprintf(&b, "%04d|", i)
		for j := 0; b.Len() < 4*runes && j < runes; j++ {
			b.WriteRune(pattern[(i+j)%len(pattern)])
		}
		return b.String()
	}
	var batch []threads.Message
	for i := range 30 {
		batch = append(batch, user(text(i)))
	}
	e.append(id, batch...)
	for i := 30; i < max+5; i++ {
		e.append(id, threads.Message{Role: threads.RoleAssistant, Content: text(i)})
	}
	check := func(what string, h []threads.Message, from int) {
		t.Helper()
		if len(h) != max+5-from {
			t.Fatalf("%s holds %d messages; want %d", what, len(h), max+5-from)
		}
		for k, m := range h {
			if m.Content != text(from+k) {
				t.Fatalf("%s: message %d differs from what was appended (%d bytes vs %d)", what, k, len(m.Content), len(text(from+k)))
			}
		}
	}
	check("History(0)", e.history(id, 0), 5)
	check("History(7)", e.history(id, 7), max+5-7)
	sess, err := e.Store.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c", HistoryLimit: 0})
	if err != nil {
		t.Fatal(err)
	}
	check("Open history", sess.History, 5)
}
