package queue_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/chat/queue"
	"github.com/chatscale/chatscale/contextcache"
	tu "github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/threads"
)

// Environment of the worker process TestKilledWorkerLosesNoJob starts
// and kills.
const (
	envChildPrefix = "CHATSCALE_QUEUE_CHILD_PREFIX"
	// envRealLease makes TestKilledWorkerLosesNoJob wait for the lease to
	// expire (about a minute) instead of moving its expiry to the past.
	envRealLease = "CHATSCALE_QUEUE_REAL_LEASE"
)

// A worker process killed in the middle of a job loses no job: once the
// job's lease has expired, another worker's recoverer takes it back and
// runs it, the killed attempt counted.
//
// The lease expires a minute after the last heartbeat of the killed
// worker (asynq's 30 s lease and 30 s of allowance for clock skew). The
// test moves that expiry to the past in asynq's lease set, which is what
// the minute would do; with CHATSCALE_QUEUE_REAL_LEASE=1 it waits for it.
func TestKilledWorkerLosesNoJob(t *testing.T) {
	realLease := os.Getenv(envRealLease) != ""
	r := newRig(t, rigOpts{})
	id := r.enqueue(request("ada", "Asked of a worker that dies"), queue.MaxAttempts(3))

	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledWorkerHelper$", "-test.v")
	cmd.Env = append(os.Environ(), envChildPrefix+"="+r.env.Prefix)
	if r.env.Backend == tu.Miniredis {
		cmd.Env = append(cmd.Env, tu.EnvRedisURL+"=redis://"+r.env.Mini.Addr())
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		forgetServer(t, r.env, pid)
	})
	active := func() bool {
		st, err := r.client.Status(context.Background(), id)
		return err == nil && st.State == queue.StateActive
	}
	if !tu.Eventually(60*time.Second, active) {
		t.Fatalf("the child worker never took the job; its output:\n%s", out.String())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if st := r.status(id); st.State != queue.StateActive {
		t.Fatalf("after the kill: %s; want still active, under the dead worker's lease", describe(st))
	}
	if !realLease {
		expireLease(t, r.env, r.cfg.QueueName("default"), strings.TrimPrefix(id, "default."))
	}
	r.worker(r.service(svcOpts{}), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	st, err := r.client.Wait(ctx, id)
	if err != nil || st.State != queue.StateDone || st.Attempts != 2 {
		t.Fatalf("Wait = %s, %v; want done at the second attempt", describe(st), err)
	}
	if got := r.fake.Requests(); got != 1 {
		t.Errorf("the surviving worker's upstream got %d requests, want 1", got)
	}
}

// expireLease moves the lease of job id in qname an hour back, as if its
// worker had stopped renewing it long ago. The lease set is asynq's
// (asynq:{<queue>}:lease, scored by expiry in Unix seconds).
func expireLease(t *testing.T, env *tu.RedisEnv, qname, id string) {
	t.Helper()
	key := "asynq:{" + qname + "}:lease"
	n, err := env.Client.ZAddXX(context.Background(), key, redis.Z{Score: float64(time.Now().Add(-time.Hour).Unix()), Member: id}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if score, err := env.Client.ZScore(context.Background(), key, id).Result(); err != nil || n != 0 || score > float64(time.Now().Unix()) {
		t.Fatalf("lease of %s in %s: score %v, %v", id, key, score, err)
	}
}

// forgetServer removes the killed worker from asynq's lists of servers
// and workers, which a worker that stops cleanly does itself.
func forgetServer(t *testing.T, env *tu.RedisEnv, pid int) {
	ctx := context.Background()
	for _, set := range []string{"asynq:servers", "asynq:workers"} {
		members, err := env.Client.ZRange(ctx, set, 0, -1).Result()
		if err != nil {
			t.Logf("reading %s: %v", set, err)
			continue
		}
		for _, m := range members {
			if strings.Contains(m, fmt.Sprintf(":%d:", pid)) {
				env.Client.ZRem(ctx, set, m)
			}
		}
	}
}

// TestKilledWorkerHelper is the worker process of
// TestKilledWorkerLosesNoJob: it runs the jobs of the parent's queues
// against an upstream that never answers, until it is killed (or its
// stdin closes).
func TestKilledWorkerHelper(t *testing.T) {
	prefix := os.Getenv(envChildPrefix)
	if prefix == "" {
		t.Skip("the worker process of TestKilledWorkerLosesNoJob")
	}
	env := tu.Redis(t)
	fake := tu.OpenAI(t, tu.OpenAIConfig{})
	fake.Always(&tu.FakeStep{Hang: true})
	store, err := threads.NewMemory(threads.Config{})
	if err != nil {
		t.Fatal(err)
	}
	cache, err := contextcache.New(contextcache.SourceFunc(newSource().load), contextcache.Config{})
	if err != nil {
		t.Fatal(err)
	}
	client, err := chat.NewClient(chat.NewOpenAI(fake.URL, "sk-test", 4), chat.Config{AttemptTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := chat.NewService(chat.ServiceConfig{Threads: store, Transcripts: cache, Completer: client, Model: "gpt-4o-mini"})
	if err != nil {
		t.Fatal(err)
	}
	w, err := queue.NewWorker(env.Client, svc, queue.Config{Prefix: prefix, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	fmt.Println("worker started")
	_, _ = io.Copy(io.Discard, os.Stdin)
}
