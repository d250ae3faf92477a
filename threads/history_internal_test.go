package threads

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/internal/testutil"
)

// pipelines counts the round trips of a client that carry data: one per
// command outside pipelines, one per pipeline or transaction, leaving out
// the commands that set up a connection.
type pipelines struct{ n atomic.Int64 }

func handshake(cmd redis.Cmder) bool { return cmd.Name() == "hello" || cmd.Name() == "client" }

func (h *pipelines) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *pipelines) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !handshake(cmd) {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h *pipelines) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if slices.ContainsFunc(cmds, func(c redis.Cmder) bool { return !handshake(c) }) {
			h.n.Add(1)
		}
		return next(ctx, cmds)
	}
}

func contents(msgs []Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.Content
	}
	return out
}

// TestRedisHistoryAfterScriptFlush checks Open and History, whose script
// runs in a MULTI/EXEC with the LRANGE of the history, on a server that
// lost its scripts: the EVALSHA answered NOSCRIPT inside the transaction is
// retried as EVAL in a second one, and the history comes back whole.
func TestRedisHistoryAfterScriptFlush(t *testing.T) {
	ctx := context.Background()
	env := testutil.MiniredisEnv(t)
	rdb := env.NewClient()
	hook := &pipelines{}
	rdb.AddHook(hook)
	st, err := NewRedis(rdb, Config{Prefix: env.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	th, err := st.GetOrCreate(ctx, "u", "c")
	if err != nil {
		t.Fatal(err)
	}
	msgs := []Message{{Role: RoleUser, Content: "q1"}, {Role: RoleAssistant, Content: "a1"}, {Role: RoleUser, Content: "q2"}}
	if err := st.Append(ctx, th.ID, msgs...); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		read func() ([]Message, error)
		want []string
	}{
		{"Open", func() ([]Message, error) {
			s, err := st.Open(ctx, OpenRequest{UserID: "u", CourseID: "c", VideoURL: "v", HistoryLimit: 2})
			return s.History, err
		}, []string{"a1", "q2"}},
		{"History", func() ([]Message, error) { return st.History(ctx, th.ID, 0) }, []string{"q1", "a1", "q2"}},
	} {
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		for i, trips := range []int64{2, 1} { // NOSCRIPT then EVAL; then EVALSHA
			hook.n.Store(0)
			h, err := c.read()
			if err != nil {
				t.Fatalf("%s #%d after SCRIPT FLUSH: %v", c.name, i+1, err)
			}
			if got := contents(h); !slices.Equal(got, c.want) {
				t.Fatalf("%s #%d after SCRIPT FLUSH: history %q; want %q", c.name, i+1, got, c.want)
			}
			if n := hook.n.Load(); n != trips {
				t.Fatalf("%s #%d after SCRIPT FLUSH took %d round trips; want %d", c.name, i+1, n, trips)
			}
		}
	}
}

// TestRedisOpenReadsHistoryAfterTheScript checks the order inside Open's
// transaction: the history is read after the script ran, so a thread the
// script creates reads as empty even where a message list was left
// without its thread (the script deletes it).
func TestRedisOpenReadsHistoryAfterTheScript(t *testing.T) {
	ctx := context.Background()
	env := testutil.Redis(t)
	st, err := NewRedis(env.Client, Config{Prefix: env.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	k := st.keys(digest('u', "u"), digest('c', "c"))
	if err := env.Client.RPush(ctx, k.msgs, "u1:orphan").Err(); err != nil {
		t.Fatal(err)
	}
	s, err := st.Open(ctx, OpenRequest{UserID: "u", CourseID: "c", HistoryLimit: 0})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Created || len(s.History) != 0 || s.History == nil {
		t.Fatalf("Open over an orphan message list = created %v, history %q; want a created thread with an empty history", s.Created, contents(s.History))
	}
	if n, err := env.Client.Exists(ctx, k.msgs).Result(); err != nil || n != 0 {
		t.Fatalf("orphan message list left: %d, %v", n, err)
	}
}
