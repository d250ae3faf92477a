package chat_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chatscale/chatscale/chat"
	tu "github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/threads"
)

// storedMessages returns the thread of (user, course) with the message IDs.
func (h *harness) storedMessages(user string) []threads.Message {
	h.t.Helper()
	ctx := context.Background()
	th, err := h.store.GetOrCreate(ctx, user, course)
	if err != nil {
		h.t.Fatal(err)
	}
	msgs, err := h.store.History(ctx, th.ID, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	return msgs
}

// A turn asked again with its TurnID (a retried job, a host's retry)
// returns the stored reply without asking the upstream and stores nothing
// more, unary or streamed.
func TestServiceTurnIDReplaysAStoredTurn(t *testing.T) {
	forEachStore(t, func(t *testing.T, memory bool) {
		h := newHarness(t, harnessOpts{memory: memory})
		ctx := context.Background()
		req := chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "What is a goroutine?", TurnID: "job:1"}
		first, err := h.svc.Ask(ctx, req)
		if err != nil || !first.Stored || first.Replayed {
			t.Fatalf("first run: %+v, %v", first, err)
		}
		again, err := h.svc.Ask(ctx, req)
		if err != nil || !again.Replayed || !again.Stored || again.Reply != first.Reply || again.Degraded {
			t.Fatalf("second run: %+v, %v; want the stored reply, replayed", again, err)
		}
		var deltas []string
		streamed, err := h.svc.Stream(ctx, req, func(d string) error { deltas = append(deltas, d); return nil })
		if err != nil || !streamed.Replayed || len(deltas) != 1 || deltas[0] != first.Reply {
			t.Fatalf("streamed again: %+v, %v, deltas %q", streamed, err, deltas)
		}
		if n := h.fake.Requests(); n != 1 {
			t.Errorf("the upstream got %d requests for one turn asked three times, want 1", n)
		}
		msgs := h.storedMessages("ada")
		if len(msgs) != 2 || msgs[0].ID != "job:1/q" || msgs[1].ID != "job:1/a" {
			t.Fatalf("thread %+v: want the exchange once, with the turn's message IDs", msgs)
		}
		// Another turn of the same learner is asked as usual.
		other := req
		other.TurnID = "job:2"
		if r, err := h.svc.Ask(ctx, other); err != nil || r.Replayed {
			t.Fatalf("another TurnID: %+v, %v", r, err)
		}
		if n := h.fake.Requests(); n != 2 {
			t.Errorf("the upstream got %d requests, want 2", n)
		}
	})
}

// Without a TurnID every turn gets one of its own: two identical
// questions are two turns.
func TestServiceTurnIDDefaultsToARandomOne(t *testing.T) {
	h := newHarness(t, harnessOpts{memory: true})
	h.ask("ada", video1, "Again?")
	h.ask("ada", video1, "Again?")
	msgs := h.storedMessages("ada")
	if len(msgs) != 4 {
		t.Fatalf("%d messages, want 4", len(msgs))
	}
	seen := map[string]bool{}
	for _, m := range msgs {
		if m.ID == "" || seen[m.ID] {
			t.Fatalf("message IDs %q: want distinct, none empty", []string{msgs[0].ID, msgs[1].ID, msgs[2].ID, msgs[3].ID})
		}
		seen[m.ID] = true
	}
}

func TestServiceTurnIDValidated(t *testing.T) {
	h := newHarness(t, harnessOpts{memory: true})
	for _, id := range []string{string(make([]byte, chat.MaxTurnIDBytes+1)), "\xff"} {
		_, err := h.svc.Ask(context.Background(), chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "q", TurnID: id})
		var ve *chat.ValidationError
		if !errors.As(err, &ve) || ve.Field != "TurnID" {
			t.Errorf("TurnID %q: err %v, want a ValidationError on TurnID", id, err)
		}
	}
}

// With threads.Config.WaitReplicas on a Redis without replicas, the
// exchange is stored on the master and the turn says it is not
// replicated.
func TestServiceNotReplicated(t *testing.T) {
	env := tu.Redis(t)
	if env.Backend != tu.Server && env.Backend != tu.Cluster {
		t.Skipf("needs a real Redis whose masters have no replica, not %s", env.Backend)
	}
	h := newHarness(t, harnessOpts{threads: threads.Config{WaitReplicas: 1, WaitTimeout: 10 * time.Millisecond}})
	r := h.ask("ada", video1, "Is it replicated?")
	if !r.Stored || !r.Degraded || len(r.Reasons) != 1 || r.Reasons[0] != chat.ReasonNotReplicated {
		t.Fatalf("response %+v: want stored, degraded with %s", r, chat.ReasonNotReplicated)
	}
	if got := h.history("ada"); len(got) != 2 {
		t.Fatalf("history %q: want the exchange", got)
	}
}
