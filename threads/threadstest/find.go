package threadstest

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/threads"
)

// finder returns the store as a threads.Finder, or skips the test when the
// store does not implement it (Finder is optional).
func (e *env) finder() threads.Finder {
	e.t.Helper()
	f, ok := e.Store.(threads.Finder)
	if !ok {
		e.t.Skipf("%T does not implement threads.Finder", e.Store)
	}
	return f
}

// find calls Find and fails the test on any error but ErrNotFound; found
// is false for ErrNotFound.
func (e *env) find(f threads.Finder, user, course string) (th threads.Thread, found bool) {
	e.t.Helper()
	th, err := f.Find(ctx, user, course)
	switch {
	case err == nil:
		return th, true
	case errors.Is(err, threads.ErrNotFound):
		return threads.Thread{}, false
	}
	e.t.Fatalf("Find(%q, %q): %v", user, course, err)
	return threads.Thread{}, false
}

// wantFound checks that Find(user, course) returns want, field by field.
func (e *env) wantFound(f threads.Finder, what, user, course string, want threads.Thread) {
	e.t.Helper()
	got, found := e.find(f, user, course)
	if !found {
		e.t.Fatalf("%s: Find(%q, %q) = ErrNotFound; want thread %q", what, user, course, want.ID)
	}
	if !sameThread(got, want) {
		e.t.Fatalf("%s: Find(%q, %q) = %+v; want %+v", what, user, course, got, want)
	}
}

// wantMissing checks that Find(user, course) returns ErrNotFound.
func (e *env) wantMissing(f threads.Finder, what, user, course string) {
	e.t.Helper()
	if got, found := e.find(f, user, course); found {
		e.t.Fatalf("%s: Find(%q, %q) = %+v; want ErrNotFound", what, user, course, got)
	}
}

// active returns Active(within) and fails the test on an error.
func (e *env) active(within time.Duration) int {
	e.t.Helper()
	n, err := e.Store.Active(ctx, within)
	if err != nil {
		e.t.Fatalf("Active(%v): %v", within, err)
	}
	return n
}

func sameThread(a, b threads.Thread) bool {
	return a.ID == b.ID && a.UserID == b.UserID && a.CourseID == b.CourseID && a.VideoURL == b.VideoURL &&
		a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt)
}

// testFind checks Find through a thread's life: not found (and not
// created) before the first GetOrCreate or Open, the thread as Get returns
// it after each write, not found after Delete and ForgetUser, the new
// thread after the pair gets one again.
func (s suite) testFind(t *testing.T) {
	e := s.env(t, threads.Config{})
	f := e.finder()

	e.wantMissing(f, "before any thread", "u", "c")
	e.wantMissing(f, "a second time", "u", "c")
	if n := e.active(time.Hour); n != 0 {
		t.Fatalf("Active after Find of an unknown pair = %d; want 0: Find created a thread", n)
	}
	sess, err := e.Store.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c", VideoURL: "v1"})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if !sess.Created {
		t.Fatalf("Open after Find of the pair = %+v; want Created: Find created the thread", sess)
	}
	e.wantFound(f, "after Open", "u", "c", sess.Thread)

	e.append(sess.Thread.ID, user("m1"))
	if _, err := e.Store.TrackVideo(ctx, sess.Thread.ID, "v2"); err != nil {
		t.Fatal(err)
	}
	got, err := e.Store.Get(ctx, sess.Thread.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.VideoURL != "v2" {
		t.Fatalf("Get after TrackVideo = %+v; want v2", got)
	}
	e.wantFound(f, "after Append and TrackVideo", "u", "c", got)
	wantContents(t, "History of the thread Find returned", e.history(got.ID, 0), "m1")

	// Only the pair's own thread: not another course of the user, nor
	// another user's thread of the course.
	e.wantMissing(f, "another course of the user", "u", "c2")
	e.wantMissing(f, "another user of the course", "v", "c")
	other := e.thread("v", "c")
	e.wantFound(f, "another user's thread", "v", "c", other)
	e.wantFound(f, "after another user's thread was created", "u", "c", got)

	if e.NewPeer != nil {
		if pf, ok := e.NewPeer().(threads.Finder); ok {
			e.wantFound(pf, "from a peer", "u", "c", got)
		}
	}

	// Delete: not found until the pair gets a new thread.
	if err := e.Store.Delete(ctx, got.ID); err != nil {
		t.Fatal(err)
	}
	e.wantMissing(f, "after Delete", "u", "c")
	e.wantFound(f, "the other user's thread after Delete", "v", "c", other)
	again := e.thread("u", "c")
	if again.ID == got.ID {
		t.Fatal("GetOrCreate after Delete returned the deleted ID")
	}
	e.wantFound(f, "after GetOrCreate made a new thread", "u", "c", again)

	// ForgetUser: every thread of the user is gone, the others stay.
	c2 := e.thread("u", "c2")
	e.wantFound(f, "the user's second thread", "u", "c2", c2)
	if n, err := e.Store.ForgetUser(ctx, "u"); err != nil || n != 2 {
		t.Fatalf("ForgetUser = %d, %v; want 2", n, err)
	}
	e.wantMissing(f, "after ForgetUser", "u", "c")
	e.wantMissing(f, "after ForgetUser", "u", "c2")
	e.wantFound(f, "another user's thread after ForgetUser", "v", "c", other)
	if n := e.active(time.Hour); n != 1 {
		t.Fatalf("Active after ForgetUser and Finds = %d; want 1 (the other user's thread)", n)
	}
}

// testFindKeyCollisions checks that Find tells apart the pairs that differ
// only in where separators, braces and the like fall: with the threads of
// every other colliding pair created, each pair finds its own thread, and
// a pair without one finds none (not its look-alike's).
func (s suite) testFindKeyCollisions(t *testing.T) {
	e := s.env(t, threads.Config{})
	f := e.finder()
	made := map[int]threads.Thread{}
	for i, p := range collidingPairs {
		if i%2 == 0 {
			made[i] = e.thread(p[0], p[1])
		}
	}
	for i, p := range collidingPairs {
		if th, ok := made[i]; ok {
			e.wantFound(f, fmt.Sprintf("pair %q", p), p[0], p[1], th)
		} else {
			e.wantMissing(f, fmt.Sprintf("pair %q, which has no thread", p), p[0], p[1])
		}
	}
	if n := e.active(time.Hour); n != len(made) {
		t.Fatalf("Active after the Finds = %d; want %d (the threads created)", n, len(made))
	}
}

// testFindBadInput checks that Find refuses the IDs GetOrCreate refuses,
// with a *chatscale.InputError naming the field, and accepts IDs of
// MaxIDBytes bytes.
func (s suite) testFindBadInput(t *testing.T) {
	e := s.env(t, threads.Config{})
	f := e.finder()
	e.thread("u", "c")
	for _, v := range []string{"", strings.Repeat("x", threads.MaxIDBytes+1), "\xff\xfe"} {
		q := fmt.Sprintf("%.8q", v)
		for _, c := range []struct{ field, user, course string }{{"UserID", v, "c"}, {"CourseID", "u", v}} {
			_, err := f.Find(ctx, c.user, c.course)
			wantInvalid(t, "Find "+c.field+" "+q, err)
			var ie *chatscale.InputError
			if errors.As(err, &ie) && ie.Field != c.field {
				t.Fatalf("Find with a bad %s: InputError.Field = %q; want %q", c.field, ie.Field, c.field)
			}
		}
	}
	u, c := strings.Repeat("u", threads.MaxIDBytes), strings.Repeat("é", threads.MaxIDBytes/2)
	e.wantMissing(f, "512-byte IDs, no thread", u, c)
	th := e.thread(u, c)
	e.wantFound(f, "512-byte IDs", u, c, th)
}

// testFindDoesNotSlide checks that Find is a read: it neither slides the
// TTL nor counts as activity, and a thread it found expires TTL after its
// last write, after which Find answers ErrNotFound.
func (s suite) testFindDoesNotSlide(t *testing.T) {
	s.expiryTest(t, s.findFake, s.findReal)
}

func (s suite) findFake(e *env) {
	t := e.t
	f := e.finder()
	th := e.thread("u", "c")
	e.Advance(e.ttl / 2)
	e.wantFound(f, "halfway through the TTL", "u", "c", th)
	if n := e.active(e.ttl / 4); n != 0 {
		t.Fatalf("Active(TTL/4) after Find = %d; want 0: Find counted as activity", n)
	}
	e.Advance(e.ttl/2 - time.Millisecond)
	e.wantFound(f, "a millisecond before the TTL", "u", "c", th)
	e.Advance(time.Millisecond)
	e.wantMissing(f, "once the TTL passed since the last write", "u", "c")
	if e.exists(th.ID) {
		t.Fatal("Find slid the TTL: the thread outlived it")
	}
	sess, err := e.Store.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c"})
	if err != nil || !sess.Created || sess.Thread.ID == th.ID {
		t.Fatalf("Open after expiry = %+v, %v; want a new thread", sess, err)
	}
	e.wantFound(f, "the new thread after expiry", "u", "c", sess.Thread)
}

// findReal checks on a real clock that a Find halfway through the TTL
// neither counts as activity nor keeps the thread alive past TTL after its
// last write.
func (s suite) findReal(e *env) bool {
	t := e.t
	f := e.finder()
	t0 := e.now()
	th := e.thread("u", "c")
	t1 := e.now()
	e.waitUntil(t1.Add(e.ttl / 2))
	tr := e.now()
	got, err := f.Find(ctx, "u", "c")
	if err != nil {
		if errors.Is(err, threads.ErrNotFound) && e.late(t0) {
			return false
		}
		t.Fatalf("Find before the TTL passed: %v", err)
	}
	if !sameThread(got, th) {
		t.Fatalf("Find = %+v; want %+v", got, th)
	}
	// Written last at t1 or earlier, the thread is outside any window
	// shorter than the time since t1; a Find counted as activity at tr or
	// later would put it inside this one.
	if since := e.now().Sub(t1); since > 0 {
		n, err := e.Store.Active(ctx, since/2)
		if err != nil {
			t.Fatalf("Active: %v", err)
		}
		if n != 0 {
			t.Fatalf("Active(%v) after Find = %d; want 0: Find counted as activity", since/2, n)
		}
	}
	// Unslid, the thread has expired at t1 + TTL; slid by a Find at tr or
	// later, it would live until tr + TTL.
	e.waitUntil(t1.Add(e.ttl + margin))
	if _, found := e.find(f, "u", "c"); found || e.exists(th.ID) {
		t.Fatal("Find slid the TTL (or the thread outlived it)")
	}
	return !e.late(tr)
}
