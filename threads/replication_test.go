package threads_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/threads"
)

// TestRedisWaitReplicasShortfall asks every write for more replicas than
// the test's Redis has (none on a single server or the CI's cluster): each
// returns a *ReplicationError with what it got, its write applied on the
// master all the same, and in one round trip: the WAIT rides in the
// write's pipeline, sent on a Cluster to the master of the thread's slot
// (a write sent elsewhere would be answered MOVED, not run).
func TestRedisWaitReplicasShortfall(t *testing.T) {
	env := testutil.Redis(t)
	if env.Mini != nil {
		t.Skip("miniredis has no WAIT: set CHATSCALE_REDIS_URL or CHATSCALE_REDIS_CLUSTER")
	}
	ctx := context.Background()
	rdb := env.NewClient()
	counter := &roundTrips{dataOnly: true}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		cc.OnNewNode(func(n *redis.Client) { n.AddHook(counter) })
	} else {
		rdb.AddHook(counter)
	}
	const want = 100
	st := newRedis(t, rdb, threads.Config{Prefix: env.Prefix, WaitReplicas: want, WaitTimeout: 10 * time.Millisecond})
	if err := st.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	shortfall := func(what string, err error) {
		t.Helper()
		var re *threads.ReplicationError
		if !errors.Is(err, threads.ErrNotReplicated) || !errors.As(err, &re) || re.Want != want || re.Got >= want {
			t.Fatalf("%s: err = %v; want a *ReplicationError with Want %d", what, err, want)
		}
	}
	th, err := st.GetOrCreate(ctx, "u", "c") // does not wait
	if err != nil {
		t.Fatal(err)
	}
	// Dial the connections the pipelines take (HELLO and CLIENT SETINFO
	// pass the hook too).
	warm, err := st.GetOrCreate(ctx, "w", "c")
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Append(ctx, warm.ID, threads.Message{Role: threads.RoleUser})
	counter.n.Store(0)
	shortfall("Append", st.Append(ctx, th.ID, threads.Message{Role: threads.RoleUser, Content: "kept", ID: "m1"}))
	if n := counter.n.Load(); n != 1 {
		t.Errorf("Append with WaitReplicas took %d round trips; want 1", n)
	}
	shortfall("retried Append", st.Append(ctx, th.ID, threads.Message{Role: threads.RoleUser, Content: "kept", ID: "m1"}))
	_, err = st.TrackVideo(ctx, th.ID, "v2")
	shortfall("TrackVideo", err)
	got, err := st.Get(ctx, th.ID)
	if err != nil || got.VideoURL != "v2" {
		t.Fatalf("Get after the writes = %+v, %v; want video v2", got, err)
	}
	h, err := st.History(ctx, th.ID, 0)
	if err != nil || len(h) != 1 || h[0].Content != "kept" {
		t.Fatalf("History = %+v, %v; want the one message, applied on the master", h, err)
	}
	if err := st.Append(ctx, "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB.CCCCCCCCCCCCCCCCCCCCCC", threads.Message{Role: threads.RoleUser}); !errors.Is(err, threads.ErrNotFound) {
		t.Fatalf("Append to no thread: err = %v; want ErrNotFound", err)
	}
	counter.n.Store(0)
	shortfall("Delete", st.Delete(ctx, th.ID))
	if n := counter.n.Load(); n != 1 {
		t.Errorf("Delete with WaitReplicas took %d round trips; want 1", n)
	}
	if _, err := st.Get(ctx, th.ID); !errors.Is(err, threads.ErrNotFound) {
		t.Fatalf("Get after Delete: err = %v; want ErrNotFound", err)
	}
	if err := st.Delete(ctx, th.ID); !errors.Is(err, threads.ErrNotFound) {
		t.Fatalf("second Delete: err = %v; want ErrNotFound", err)
	}
	if _, err := st.GetOrCreate(ctx, "u", "c2"); err != nil {
		t.Fatal(err)
	}
	n, err := st.ForgetUser(ctx, "u")
	shortfall("ForgetUser", err)
	if n != 1 {
		t.Fatalf("ForgetUser deleted %d threads; want 1", n)
	}
	if _, err := st.Find(ctx, "u", "c2"); !errors.Is(err, threads.ErrNotFound) {
		t.Fatalf("Find after ForgetUser: err = %v; want ErrNotFound", err)
	}
}

// TestRedisWaitReplicas checks WaitReplicas against a real master and
// replica started by the test: confirmed writes return nil; with the
// replica frozen (SIGSTOP) they return a *ReplicationError with Got 0
// after WaitTimeout, applied on the master.
func TestRedisWaitReplicas(t *testing.T) {
	master := testutil.StartRedis(t)
	replica := testutil.StartReplica(t, master)
	ctx := context.Background()
	rdb := master.Client()
	defer rdb.Close()
	// A replica's acknowledgement takes a few milliseconds, more on a
	// loaded machine: the confirmed case waits up to 10 s for it, the
	// frozen case (fast) 50 ms.
	st := newRedis(t, rdb, threads.Config{WaitReplicas: 1, WaitTimeout: 10 * time.Second, RedisTimeout: 30 * time.Second})
	fast := newRedis(t, rdb, threads.Config{WaitReplicas: 1, WaitTimeout: 50 * time.Millisecond})
	sess, err := st.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Append(ctx, sess.Thread.ID, threads.Message{Role: threads.RoleUser, Content: "one"}); err != nil {
		t.Fatalf("Append confirmed by the replica: %v", err)
	}
	rc := replica.Client()
	defer rc.Close()
	onReplica := newRedis(t, rc, threads.Config{})
	if h, err := onReplica.History(ctx, sess.Thread.ID, 0); err != nil || len(h) != 1 {
		t.Fatalf("History on the replica right after a confirmed Append = %+v, %v; want the message", h, err)
	}
	replica.Stop()
	err = fast.Append(ctx, sess.Thread.ID, threads.Message{Role: threads.RoleUser, Content: "two"})
	var re *threads.ReplicationError
	if !errors.As(err, &re) || re.Want != 1 || re.Got != 0 {
		t.Fatalf("Append with the replica frozen: err = %v; want a *ReplicationError{Want 1, Got 0}", err)
	}
	replica.Cont()
	if h, err := st.History(ctx, sess.Thread.ID, 0); err != nil || len(h) != 2 {
		t.Fatalf("History on the master = %+v, %v; want both messages", h, err)
	}
}

// TestRedisWaitConfig checks the Config fields of the replicated
// acknowledgement.
func TestRedisWaitConfig(t *testing.T) {
	env := testutil.MiniredisEnv(t)
	for _, cfg := range []threads.Config{
		{WaitTimeout: -time.Millisecond},
		{WaitReplicas: 1, WaitTimeout: time.Second},
		{WaitReplicas: 1, RedisTimeout: 50 * time.Millisecond, WaitTimeout: 50 * time.Millisecond},
	} {
		_, err := threads.NewRedis(env.Client, cfg)
		var ce *chatscale.ConfigError
		if !errors.As(err, &ce) || ce.Field != "Config.WaitTimeout" {
			t.Errorf("NewRedis(%+v): err = %v; want a *chatscale.ConfigError for Config.WaitTimeout", cfg, err)
		}
	}
	if _, err := threads.NewRedis(env.Client, threads.Config{WaitReplicas: 1, RedisTimeout: -1, WaitTimeout: time.Minute}); err != nil {
		t.Errorf("NewRedis with no RedisTimeout and a long WaitTimeout: %v", err)
	}
}
