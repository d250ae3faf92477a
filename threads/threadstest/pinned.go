package threadstest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/chatscale/chatscale/threads"
)

// testOpenFirstVideo checks that Open naming a video on an existing thread
// that has none recorded yet records it without reporting a switch, as
// TrackVideo does for the first video.
func (s suite) testOpenFirstVideo(t *testing.T) {
	e := s.env(t, threads.Config{})
	th := e.thread("u", "c") // created without a video
	e.append(th.ID, user("m1"))
	sess, err := e.Store.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c", VideoURL: "v1"})
	if err != nil {
		t.Fatalf("Open with the first video: %v", err)
	}
	if sess.Created || sess.Thread.ID != th.ID || sess.VideoSwitched || sess.PreviousVideo != "" || sess.Thread.VideoURL != "v1" {
		t.Fatalf("Open with the first video of an existing thread = %+v; want thread %q, not created, on v1, "+
			"VideoSwitched false and PreviousVideo empty (the first video is not a switch)", sess, th.ID)
	}
	wantContents(t, "Open history", sess.History, "m1")
	if got, err := e.Store.Get(ctx, th.ID); err != nil || got.VideoURL != "v1" {
		t.Fatalf("Get after Open with the first video = %+v, %v; want v1 recorded", got, err)
	}
	// The next different video is a switch from the first.
	sess, err = e.Store.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c", VideoURL: "v2"})
	if err != nil || !sess.VideoSwitched || sess.PreviousVideo != "v1" || sess.Thread.VideoURL != "v2" {
		t.Fatalf("Open on v2 after v1 = %+v, %v; want a switch from v1", sess, err)
	}

	// The same for a thread that Open created without a video.
	s1, err := e.Store.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c2"})
	if err != nil || !s1.Created || s1.Thread.VideoURL != "" {
		t.Fatalf("Open without a video = %+v, %v; want a created thread without video", s1, err)
	}
	s2, err := e.Store.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c2", VideoURL: "v9"})
	if err != nil || s2.Created || s2.Thread.ID != s1.Thread.ID || s2.VideoSwitched || s2.PreviousVideo != "" || s2.Thread.VideoURL != "v9" {
		t.Fatalf("second Open, first video = %+v, %v; want the same thread on v9, no switch, no PreviousVideo", s2, err)
	}
}

// testWritesKeepIndexesAlive checks that every write that slides a
// thread's TTL keeps the thread findable through the store's indexes for
// as long as the thread lives: it still counts in Active and ForgetUser
// still deletes it after the TTL the thread had before the write has
// passed. (On Redis: the user set and the bucket's sorted set get the TTL
// with every write, not only when a thread is created. A ForgetUser that
// misses a live thread breaks the right to erasure.)
func (s suite) testWritesKeepIndexesAlive(t *testing.T) {
	s.expiryTest(t, s.indexesFake, s.indexesReal)
}

// indexUser is the user whose thread the write name slides: one user per
// write, so that no write slides the indexes of another's thread.
func indexUser(name string) string { return "user-" + name }

func (s suite) indexesFake(e *env) {
	t := e.t
	writes := e.writes()
	names := make([]string, 0, len(writes))
	for name := range writes {
		names = append(names, name)
	}
	slices.Sort(names)
	// One write at a time, alone in the store, so that nothing else keeps
	// the indexes alive.
	for _, name := range names {
		u := indexUser(name)
		id := e.thread(u, "c").ID
		e.Advance(e.ttl / 2)
		if err := writes[name](id); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		e.Advance(e.ttl/2 + time.Second) // past the TTL the thread had before the write
		if !e.exists(id) {
			t.Fatalf("%s did not slide the TTL", name)
		}
		if n, err := e.Store.Active(ctx, e.ttl); err != nil || n != 1 {
			t.Fatalf("Active after the TTL slid by %s = %d, %v; want 1 (the live thread)", name, n, err)
		}
		if n, err := e.Store.ForgetUser(ctx, u); err != nil || n != 1 {
			t.Fatalf("ForgetUser after the TTL slid by %s = %d, %v; want 1: a live thread escaped erasure", name, n, err)
		}
		if e.exists(id) {
			t.Fatalf("thread slid by %s survived ForgetUser", name)
		}
		if n, err := e.Store.Active(ctx, e.ttl); err != nil || n != 0 {
			t.Fatalf("Active after ForgetUser = %d, %v; want 0", n, err)
		}
	}
}

// indexesReal is indexesFake on a real clock: the threads are created at
// t0..t1, slid halfway through their TTL, and checked after t1 + TTL,
// when every index that was not slid has expired.
func (s suite) indexesReal(e *env) bool {
	t := e.t
	writes := e.writes()
	ids := map[string]string{}
	t0 := e.now()
	for name := range writes {
		ids[name] = e.thread(indexUser(name), "c").ID
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
	// Unslid, every key written at t0..t1 has expired at t1 + TTL; slid
	// at tw or later, each lives until tw + TTL.
	e.waitUntil(t1.Add(e.ttl + margin))
	alive := map[string]error{}
	for name, id := range ids {
		_, alive[name] = e.Store.Get(ctx, id)
	}
	active, activeErr := e.Store.Active(ctx, 10*e.ttl)
	forgot := map[string]int{}
	forgotErr := map[string]error{}
	for name := range writes {
		forgot[name], forgotErr[name] = e.Store.ForgetUser(ctx, indexUser(name))
	}
	if e.late(tw) {
		return false
	}
	for name, err := range alive {
		if err != nil {
			t.Fatalf("Get after the TTL slid by %s: %v", name, err)
		}
	}
	if activeErr != nil || active != len(writes) {
		t.Fatalf("Active after the writes slid the TTLs = %d, %v; want %d (every slid thread)", active, activeErr, len(writes))
	}
	for name, n := range forgot {
		if forgotErr[name] != nil || n != 1 {
			t.Fatalf("ForgetUser after the TTL slid by %s = %d, %v; want 1: a live thread escaped erasure", name, n, forgotErr[name])
		}
	}
	for name, id := range ids {
		if e.exists(id) {
			t.Fatalf("thread slid by %s survived ForgetUser", name)
		}
	}
	return true
}

// testStaleIDs checks that the ID of a deleted or forgotten thread stays
// ErrNotFound for every call after its pair got a new thread, and never
// reaches the new thread (which a store keying threads by pair alone
// would let it).
func (s suite) testStaleIDs(t *testing.T) {
	e := s.env(t, threads.Config{})
	old := e.thread("u", "c")
	e.append(old.ID, user("old"))
	if err := e.Store.Delete(ctx, old.ID); err != nil {
		t.Fatal(err)
	}
	forgotten := e.thread("v", "c")
	if n, err := e.Store.ForgetUser(ctx, "v"); err != nil || n != 1 {
		t.Fatalf("ForgetUser = %d, %v; want 1", n, err)
	}
	for _, stale := range []threads.Thread{old, forgotten} {
		cur, err := e.Store.Open(ctx, threads.OpenRequest{UserID: stale.UserID, CourseID: stale.CourseID, VideoURL: "v1"})
		if err != nil || !cur.Created || cur.Thread.ID == stale.ID {
			t.Fatalf("Open after the thread went = %+v, %v; want a new thread", cur, err)
		}
		e.append(cur.Thread.ID, user("new"))
		_, err = e.Store.Get(ctx, stale.ID)
		wantNotFound(t, "Get of the stale ID", err)
		_, err = e.Store.History(ctx, stale.ID, 0)
		wantNotFound(t, "History of the stale ID", err)
		_, err = e.Store.TrackVideo(ctx, stale.ID, "v2")
		wantNotFound(t, "TrackVideo of the stale ID", err)
		wantNotFound(t, "Append to the stale ID", e.Store.Append(ctx, stale.ID, user("x")))
		wantNotFound(t, "Delete of the stale ID", e.Store.Delete(ctx, stale.ID))
		th, err := e.Store.Get(ctx, cur.Thread.ID)
		if err != nil || th.VideoURL != "v1" {
			t.Fatalf("the new thread after calls on the stale ID = %+v, %v; want it alive on v1", th, err)
		}
		wantContents(t, "History of the new thread", e.history(cur.Thread.ID, 0), "new")
	}
}

// testForgetUserSomeExpired checks ForgetUser for a user one of whose
// threads expired while another lives: it deletes the live one, returns
// 1 and no error (on Redis the user set still lists the expired thread,
// which ForgetUser must drop rather than retry).
func (s suite) testForgetUserSomeExpired(t *testing.T) {
	s.expiryTest(t, s.forgetSomeExpiredFake, s.forgetSomeExpiredReal)
}

func (s suite) forgetSomeExpiredFake(e *env) {
	t := e.t
	gone := e.thread("u", "c1")
	e.Advance(e.ttl / 2)
	live := e.thread("u", "c2")
	e.Advance(e.ttl/2 + time.Second)
	if e.exists(gone.ID) || !e.exists(live.ID) {
		t.Fatal("want the first thread expired and the second alive")
	}
	if n, err := e.Store.ForgetUser(ctx, "u"); err != nil || n != 1 {
		t.Fatalf("ForgetUser with one thread expired and one alive = %d, %v; want 1, nil", n, err)
	}
	if e.exists(live.ID) {
		t.Fatal("the live thread survived ForgetUser")
	}
}

func (s suite) forgetSomeExpiredReal(e *env) bool {
	t := e.t
	gone := e.thread("u", "c1")
	t1 := e.now()
	e.waitUntil(t1.Add(e.ttl / 2))
	t2 := e.now()
	live := e.thread("u", "c2")
	e.waitUntil(t1.Add(e.ttl + margin))
	goneExists, liveExists := e.exists(gone.ID), e.exists(live.ID)
	n, err := e.Store.ForgetUser(ctx, "u")
	if e.late(t2) {
		return false
	}
	if goneExists || !liveExists {
		t.Fatalf("want the first thread expired (%v) and the second alive (%v)", goneExists, liveExists)
	}
	if err != nil || n != 1 {
		t.Fatalf("ForgetUser with one thread expired and one alive = %d, %v; want 1, nil", n, err)
	}
	if e.exists(live.ID) {
		t.Fatal("the live thread survived ForgetUser")
	}
	return true
}

// testActiveBoundaries checks Active at the millisecond edges: a thread
// written exactly `within` ago counts, one written earlier does not; a
// thread counts until the last millisecond of its TTL and not once it has
// expired, even while the store still holds other threads of its bucket
// and shard. It needs a harness that moves time.
func (s suite) testActiveBoundaries(t *testing.T) {
	e := s.env(t, threads.Config{TTL: ttl})
	if e.Advance == nil {
		t.Skip("needs a harness that moves the store's time (Harness.Advance)")
	}
	active := func(within time.Duration, want int) {
		t.Helper()
		if n, err := e.Store.Active(ctx, within); err != nil || n != want {
			t.Fatalf("Active(%v) = %d, %v; want %d", within, n, err, want)
		}
	}
	first := e.thread("u", "c1")
	e.Advance(time.Minute)
	second := e.thread("u", "c2") // same user: same shard, same bucket
	e.Advance(5 * time.Minute)
	active(5*time.Minute, 1)                  // second, written exactly 5m ago
	active(5*time.Minute-time.Millisecond, 0) // none
	e.Advance(ttl - 6*time.Minute - time.Millisecond)
	if !e.exists(first.ID) {
		t.Fatal("thread expired a millisecond before its TTL")
	}
	active(10*ttl, 2)
	e.Advance(time.Millisecond)
	active(10*ttl, 1) // first expired just now
	if e.exists(first.ID) || !e.exists(second.ID) {
		t.Fatal("want the first thread expired at its TTL, the second alive")
	}
}
