package queue_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/chat/queue"
	"github.com/chatscale/chatscale/contextcache"
	tu "github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/threads"
)

// envChildHoldAppend makes TestKilledAfterAppendHelper run: the worker
// process of TestKilledWorkerAfterAppendReplaysTheStoredReply.
const envChildHoldAppend = "CHATSCALE_QUEUE_CHILD_HOLD_APPEND"

// appendedLine is what the worker process prints once the exchange is in
// the thread.
const appendedLine = "exchange appended"

// A worker process killed (SIGKILL) after the upstream answered and the
// exchange was appended to the learner's thread, but before the job's
// result was written, loses no job and stores no turn twice: once the
// lease has expired, a second worker runs the job again, and since every
// attempt of a job is one turn (Request.TurnID is the job's ID) the
// Service finds the exchange in the thread and returns the stored reply
// without asking the upstream again. The learner sees the job done at its
// second attempt with the first attempt's reply, and the thread holds the
// exchange once.
//
// As in TestKilledWorkerLosesNoJob, the lease's expiry (a minute after
// the killed worker's last heartbeat: asynq v0.26's fixed 30 s lease and
// 30 s of allowance for clock skew, neither configurable) is moved to the
// past in asynq's lease set; with CHATSCALE_QUEUE_REAL_LEASE=1 the test
// waits for it instead.
func TestKilledWorkerAfterAppendReplaysTheStoredReply(t *testing.T) {
	switch runtime.GOOS {
	case "js", "wasip1", "ios":
		t.Skipf("%s cannot start a child process", runtime.GOOS)
	}
	realLease := os.Getenv(envRealLease) != ""
	ctx := context.Background()
	r := newRig(t, rigOpts{})
	const question = "Asked of a worker that dies after storing the answer"
	id := r.enqueue(request("ada", question), queue.MaxAttempts(3))

	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledAfterAppendHelper$", "-test.v")
	cmd.Env = append(os.Environ(), envChildPrefix+"="+r.env.Prefix, envChildHoldAppend+"=1")
	if r.env.Backend == tu.Miniredis {
		cmd.Env = append(cmd.Env, tu.EnvRedisURL+"=redis://"+r.env.Mini.Addr())
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		if errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EPERM) {
			t.Skipf("cannot start a child process: %v", err)
		}
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	out := &lines{appended: make(chan struct{})}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		out.read(stdout)
	}()
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		<-copied
		_ = cmd.Wait()
		forgetServer(t, r.env, pid)
	})

	select {
	case <-out.appended:
	case <-time.After(60 * time.Second):
		t.Fatalf("the child worker did not store the exchange within 60 s; its output:\n%s", out)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-copied
	_ = cmd.Wait()
	if st := r.status(id); st.State != queue.StateActive {
		t.Fatalf("after the kill: %s; want still active, under the dead worker's lease", describe(st))
	}
	store, err := threads.NewRedis(r.env.Client, threads.Config{Prefix: r.env.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	history := func() []threads.Message {
		t.Helper()
		th, err := store.Find(ctx, "ada", course)
		if err != nil {
			t.Fatalf("the learner's thread: %v", err)
		}
		msgs, err := store.History(ctx, th.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		return msgs
	}
	if h := history(); len(h) != 2 || h[0].Content != question {
		t.Fatalf("the killed worker left the history %+v; want its one exchange", h)
	}

	if !realLease {
		expireLease(t, r.env, r.cfg.QueueName("default"), strings.TrimPrefix(id, "default."))
	}
	r.worker(r.service(svcOpts{}), nil)
	wctx, cancel := context.WithTimeout(ctx, 150*time.Second)
	defer cancel()
	st, err := r.client.Wait(wctx, id)
	if err != nil || st.State != queue.StateDone || st.Attempts != 2 || st.Err != nil {
		t.Fatalf("Wait = %s, %v; want done at the second attempt", describe(st), err)
	}
	stored := history()
	if len(stored) != 2 || stored[0].Content != question {
		t.Fatalf("history after the recovery: %+v; want the one exchange, stored once", stored)
	}
	if !st.Response.Replayed || !st.Response.Stored || st.Response.Reply != stored[1].Content {
		t.Fatalf("the learner sees %+v; want the stored reply %q, replayed", st.Response, stored[1].Content)
	}
	if got := r.fake.Requests(); got != 0 {
		t.Errorf("the surviving worker's upstream got %d requests, want none: the turn was already answered", got)
	}
}

// lines collects a child's output and reports the appended line.
type lines struct {
	mu       sync.Mutex
	b        strings.Builder
	appended chan struct{}
}

func (l *lines) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	seen := false
	for sc.Scan() {
		l.mu.Lock()
		l.b.WriteString(sc.Text() + "\n")
		l.mu.Unlock()
		if !seen && strings.HasPrefix(sc.Text(), appendedLine) {
			seen = true
			close(l.appended)
		}
	}
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// holdingStore is the thread store of the worker process: the Redis
// store, whose Append, once the messages are stored, says so on stdout
// and then holds the turn (as a worker about to write the job's result
// would be when it dies) until release is closed. The Service gives
// Append a context of its own, which a hold until its end would outlast.
type holdingStore struct {
	*threads.RedisStore
	release <-chan struct{}
}

func (s holdingStore) Append(ctx context.Context, threadID string, msgs ...threads.Message) error {
	if err := s.RedisStore.Append(ctx, threadID, msgs...); err != nil {
		return err
	}
	fmt.Println(appendedLine, threadID)
	<-s.release
	return errors.New("released")
}

// TestKilledAfterAppendHelper is the worker process of
// TestKilledWorkerAfterAppendReplaysTheStoredReply: it runs the jobs of the
// parent's queues with a thread store in the parent's Redis that holds
// each turn once its exchange is stored, until it is killed (or its
// stdin closes: the turn is then let go).
func TestKilledAfterAppendHelper(t *testing.T) {
	prefix := os.Getenv(envChildPrefix)
	if prefix == "" || os.Getenv(envChildHoldAppend) == "" {
		t.Skip("the worker process of TestKilledWorkerAfterAppendReplaysTheStoredReply")
	}
	env := tu.Redis(t)
	fake := tu.OpenAI(t, tu.OpenAIConfig{})
	rs, err := threads.NewRedis(env.Client, threads.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	cache, err := contextcache.New(contextcache.SourceFunc(newSource().load), contextcache.Config{})
	if err != nil {
		t.Fatal(err)
	}
	client, err := chat.NewClient(chat.NewOpenAI(fake.URL, "sk-test", 4), chat.Config{})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	defer close(release)
	svc, err := chat.NewService(chat.ServiceConfig{Threads: holdingStore{rs, release}, Transcripts: cache, Completer: client,
		Model: "gpt-4o-mini", TurnTimeout: -1})
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
