package queue_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/chat/queue"
	tu "github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// A job runs the turn and its Status holds the Response, the same a
// direct Ask would have given; Wait returns it once done.
func TestEnqueueRunsTurnToDone(t *testing.T) {
	r := newRig(t, rigOpts{})
	r.worker(r.service(svcOpts{}), nil)

	before := time.Now()
	id := r.enqueue(request("ada", "What is a goroutine?"))
	if !strings.HasPrefix(id, "default.") {
		t.Errorf("job ID %q does not start with its priority", id)
	}
	st := r.wait(id)
	if st.State != queue.StateDone || st.Err != nil || st.Attempts != 1 || st.MaxAttempts != queue.DefaultMaxAttempts {
		t.Fatalf("status = %s; want done at the first of %d attempts", describe(st), queue.DefaultMaxAttempts)
	}
	ev := r.fake.Events()
	if len(ev) != 1 {
		t.Fatalf("upstream got %d requests, want 1", len(ev))
	}
	resp := st.Response
	if resp.Reply != tu.Reply(ev[0].Request) {
		t.Errorf("Reply = %q, want the upstream's %q", resp.Reply, tu.Reply(ev[0].Request))
	}
	if resp.ThreadID == "" || !resp.Created || !resp.Stored || resp.Degraded || resp.Usage.CompletionTokens == 0 || resp.PromptTokens == 0 {
		t.Errorf("Response = %+v", resp)
	}
	if st.UserID != "ada" {
		t.Errorf("Status.UserID = %q, want the job's learner ada", st.UserID)
	}
	if st.ID != id || st.Priority != "default" || st.EnqueuedAt.Before(before.Add(-time.Millisecond)) || st.EndedAt.Before(st.EnqueuedAt) {
		t.Errorf("status = %+v", st)
	}
	// The exchange is in the learner's thread, as after Ask.
	svc := r.service(svcOpts{})
	hist, err := svc.History(context.Background(), "ada", course, 0)
	if err != nil || len(hist) != 2 || hist[0].Content != "What is a goroutine?" || hist[1].Content != resp.Reply {
		t.Errorf("thread = %+v, %v; want the question and the reply", hist, err)
	}
	// Status after the end reads the same.
	if again := r.status(id); again.State != queue.StateDone || again.Response.Reply != resp.Reply {
		t.Errorf("second Status = %s", describe(again))
	}
}

func TestStatusOfUnknownAndBadIDs(t *testing.T) {
	r := newRig(t, rigOpts{})
	r.enqueue(request("ada", "Make the queue known")) // so that the queue exists
	if _, err := r.client.Status(context.Background(), "default.0123456789abcdef"); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("Status(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := r.client.Status(context.Background(), "high.0123456789abcdef"); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("Status(unknown in a queue never used) = %v, want ErrNotFound", err)
	}
	for _, bad := range []string{"", "nodot", ".x", "default.", "de{fault}.x", "default.a b"} {
		_, err := r.client.Status(context.Background(), bad)
		var ie *chatscale.InputError
		if !errors.As(err, &ie) || ie.Field != "jobID" {
			t.Errorf("Status(%q) = %v, want a *chatscale.InputError for jobID", bad, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.client.Status(ctx, "default.0123456789abcdef"); !errors.Is(err, context.Canceled) {
		t.Errorf("Status with an ended ctx = %v, want context.Canceled", err)
	}
}

// Wait returns ctx's error and the last status when ctx ends first.
func TestWaitEndsWithCtx(t *testing.T) {
	r := newRig(t, rigOpts{})
	id := r.enqueue(request("ada", "Nobody works on this"))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	st, err := r.client.Wait(ctx, id)
	if !errors.Is(err, context.DeadlineExceeded) || st.State != queue.StatePending || st.ID != id {
		t.Fatalf("Wait = %s, %v; want the pending status and context.DeadlineExceeded", describe(st), err)
	}
}

// 200 jobs enqueued from two clients and run by two workers (two
// instances, each with its own Service) run exactly once each.
func TestTwoClientsTwoWorkersEachJobOnce(t *testing.T) {
	r := newRig(t, rigOpts{})
	_, reg1 := r.worker(r.service(svcOpts{}), nil)
	_, reg2 := r.worker(r.service(svcOpts{}), nil)
	other, err := queue.NewClient(r.env.NewClient(), r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	ids := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		c := r.client
		if i%2 == 1 {
			c = other
		}
		wg.Go(func() {
			id, err := c.Enqueue(context.Background(), request(fmt.Sprintf("learner-%03d", i), fmt.Sprintf("question %03d", i)))
			ids[i] = id
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, id := range ids {
		c := r.client
		if i%2 == 0 {
			c = other // read by the client that did not write it
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		st, err := c.Wait(ctx, id)
		cancel()
		if err != nil || st.State != queue.StateDone || st.Attempts != 1 {
			t.Fatalf("job %d: %s, %v", i, describe(st), err)
		}
		if want := fmt.Sprintf("reply to %q", fmt.Sprintf("question %03d", i)); !strings.HasPrefix(st.Response.Reply, want) {
			t.Fatalf("job %d's reply %q is not the reply to its own question", i, st.Response.Reply)
		}
	}
	if got := r.fake.Requests(); got != n {
		t.Errorf("upstream got %d requests, want %d: one per job", got, n)
	}
	seen := map[string]int{}
	for _, m := range r.messages() {
		seen[m]++
	}
	for m, k := range seen {
		if k != 1 {
			t.Errorf("%q asked %d times", m, k)
		}
	}
	ok1, ok2 := runs(t, reg1, "ok"), runs(t, reg2, "ok")
	if ok1+ok2 != n || ok1 == 0 || ok2 == 0 {
		t.Errorf("worker 1 ran %d, worker 2 ran %d; want %d in all, some on each", ok1, ok2, n)
	}
}

// A double submit with one idempotency key is one job and one upstream
// call, also when the two submits race; the key with another request is
// refused.
func TestIdempotencyKeyMakesOneJob(t *testing.T) {
	r := newRig(t, rigOpts{})
	req := request("ada", "What is a goroutine?")
	ids := make([]string, 4)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			id, err := r.client.Enqueue(context.Background(), req, queue.IdempotencyKey("submit-42"))
			if err != nil {
				t.Error(err)
			}
			ids[i] = id
		})
	}
	wg.Wait()
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Fatalf("ids %v: a double submit made several jobs", ids)
		}
	}
	r.worker(r.service(svcOpts{}), nil)
	if st := r.wait(ids[0]); st.State != queue.StateDone {
		t.Fatalf("status = %s", describe(st))
	}
	// Once done, the key still names the job (for Config.Retention).
	if id := r.enqueue(req, queue.IdempotencyKey("submit-42")); id != ids[0] {
		t.Errorf("submit after the end = %s, want %s", id, ids[0])
	}
	if got := r.fake.Requests(); got != 1 {
		t.Errorf("upstream got %d requests, want 1", got)
	}
	_, err := r.client.Enqueue(context.Background(), request("ada", "Another question"), queue.IdempotencyKey("submit-42"))
	var ie *chatscale.InputError
	if !errors.As(err, &ie) || ie.Field != "IdempotencyKey" {
		t.Errorf("the key with another request: %v, want a *chatscale.InputError for IdempotencyKey", err)
	}
	labels := func(result string) map[string]string { return map[string]string{"queue": "default", "result": result} }
	if v, _ := counter(t, r.reg, "ai_chat_queue_enqueued_total", labels("new")); v != 1 {
		t.Errorf("enqueued new = %v, want 1", v)
	}
	if v, _ := counter(t, r.reg, "ai_chat_queue_enqueued_total", labels("duplicate")); v != 4 {
		t.Errorf("enqueued duplicate = %v, want 4", v)
	}
}

// Enqueue refuses what can never run, with the chat package's error for
// the request and a *chatscale.InputError for an option, and writes no
// job.
func TestEnqueueRefusesBadInput(t *testing.T) {
	r := newRig(t, rigOpts{})
	for _, tc := range []struct {
		name  string
		req   chat.Request
		field string
	}{
		{"no user", chat.Request{CourseID: course, VideoURL: video, Message: "hi"}, "UserID"},
		{"no video", chat.Request{UserID: "u", CourseID: course, Message: "hi"}, "VideoURL"},
		{"blank message", request("u", "  \n"), "Message"},
		{"long message", request("u", strings.Repeat("a", chat.DefaultMaxMessageBytes+1)), "Message"},
		{"bad utf-8", request("u", "\xff"), "Message"},
		{"negative position", chat.Request{UserID: "u", CourseID: course, VideoURL: video, Message: "hi", Position: -1, HasPosition: true}, "Position"},
	} {
		_, err := r.client.Enqueue(context.Background(), tc.req)
		var ve *chat.ValidationError
		if !errors.Is(err, chat.ErrInvalidRequest) || !errors.As(err, &ve) || ve.Field != tc.field {
			t.Errorf("%s: %v, want a *chat.ValidationError for %s", tc.name, err, tc.field)
		}
	}
	for _, tc := range []struct {
		opt   queue.Option
		field string
	}{
		{queue.Priority("urgent"), "Priority"},
		{queue.MaxAttempts(0), "MaxAttempts"},
		{queue.Timeout(0), "Timeout"},
		{queue.IdempotencyKey(""), "IdempotencyKey"},
		{queue.IdempotencyKey(strings.Repeat("k", queue.MaxKeyBytes+1)), "IdempotencyKey"},
	} {
		_, err := r.client.Enqueue(context.Background(), request("u", "hi"), tc.opt)
		var ie *chatscale.InputError
		if !errors.Is(err, chatscale.ErrInvalidInput) || !errors.As(err, &ie) || ie.Field != tc.field {
			t.Errorf("option for %s: %v, want a *chatscale.InputError", tc.field, err)
		}
	}
	if v, _ := counter(t, r.reg, "ai_chat_queue_enqueued_total", map[string]string{"queue": "default", "result": "new"}); v != 0 {
		t.Errorf("%v jobs written", v)
	}
}

// A request the Service refuses as invalid (here: longer than the
// Service's own bound, which Enqueue does not know) fails at its first
// attempt, without retry and without an upstream call.
func TestInvalidRequestFailsWithoutRetry(t *testing.T) {
	r := newRig(t, rigOpts{})
	_, reg := r.worker(r.service(svcOpts{service: chat.ServiceConfig{MaxMessageBytes: 16}}), nil)
	id := r.enqueue(request("ada", "A question longer than sixteen bytes"), queue.MaxAttempts(5))
	st := r.wait(id)
	if st.State != queue.StateFailed || st.Attempts != 1 {
		t.Fatalf("status = %s; want failed at the first attempt", describe(st))
	}
	var ve *chat.ValidationError
	if !errors.Is(st.Err, chat.ErrInvalidRequest) || !errors.Is(st.Err, chatscale.ErrInvalidInput) || !errors.As(st.Err, &ve) || ve.Field != "Message" {
		t.Errorf("Err = %v, want one matching chat.ErrInvalidRequest with a *chat.ValidationError for Message", st.Err)
	}
	if je := jobErr(t, st); je.Kind != queue.KindInvalid || je.Attempt != 1 {
		t.Errorf("JobError = %+v", je)
	}
	if got := r.fake.Requests(); got != 0 {
		t.Errorf("upstream got %d requests, want none", got)
	}
	if runs(t, reg, "invalid") != 1 || runs(t, reg, "ok") != 0 {
		t.Errorf("runs: invalid %d ok %d; want one invalid run", runs(t, reg, "invalid"), runs(t, reg, "ok"))
	}
}

// A turn refused by the learner's quota is re-queued for the quota's
// RetryAfter without spending an attempt: with MaxAttempts(1), both jobs
// of one learner end done, one of them after waiting for the quota.
func TestRateLimitedRequeuedWithoutSpendingAttempt(t *testing.T) {
	r := newRig(t, rigOpts{})
	quota, err := ratelimit.NewLocal(ratelimit.Limit{Rate: 1, Period: 2 * time.Second, Burst: 1}, ratelimit.Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, reg := r.worker(r.service(svcOpts{service: chat.ServiceConfig{UserRequests: quota}}), nil)
	start := time.Now()
	a := r.enqueue(request("ada", "First question"), queue.MaxAttempts(1))
	b := r.enqueue(request("ada", "Second question"), queue.MaxAttempts(1))
	sa, sb := r.wait(a), r.wait(b)
	for _, st := range []queue.Status{sa, sb} {
		if st.State != queue.StateDone || st.Attempts != 1 {
			t.Fatalf("status = %s; want done at the only attempt allowed", describe(st))
		}
	}
	if n := runs(t, reg, "rate_limited"); n < 1 {
		t.Errorf("rate_limited runs = %d, want at least 1", n)
	}
	if got := r.fake.Requests(); got != 2 {
		t.Errorf("upstream got %d requests, want 2", got)
	}
	// The second turn waited for the quota: 2 s after the first.
	late := sa.EndedAt
	if sb.EndedAt.After(late) {
		late = sb.EndedAt
	}
	if late.Sub(start) < 1900*time.Millisecond {
		t.Errorf("both turns ended within %v: the quota of 1 per 2 s was not waited for", late.Sub(start))
	}
}

// A retryable failure (the upstream answered 503) is retried and the
// second attempt answers.
func TestRetryableFailureSucceedsOnSecondAttempt(t *testing.T) {
	r := newRig(t, rigOpts{})
	_, reg := r.worker(r.service(svcOpts{client: chat.Config{DisableFallback: true, MaxAttempts: 1}}), nil)
	r.fake.Script(tu.FakeStep{Status: http.StatusServiceUnavailable})
	id := r.enqueue(request("ada", "What is a goroutine?"))
	st := r.wait(id)
	if st.State != queue.StateDone || st.Attempts != 2 || st.Response.Reply == "" {
		t.Fatalf("status = %s; want done at the second attempt", describe(st))
	}
	if r.fake.Requests() != 2 || runs(t, reg, "unavailable") != 1 || runs(t, reg, "ok") != 1 {
		t.Errorf("upstream %d, runs unavailable %d ok %d; want 2, 1, 1", r.fake.Requests(), runs(t, reg, "unavailable"), runs(t, reg, "ok"))
	}
}

// An upstream that stays unavailable (fallback disabled) is retried with
// exponential backoff until the attempts are spent; the job then fails
// with the upstream's error.
func TestUnavailableRetriedWithBackoffThenFails(t *testing.T) {
	r := newRig(t, rigOpts{queue: queue.Config{RetryBase: 800 * time.Millisecond}})
	_, reg := r.worker(r.service(svcOpts{client: chat.Config{DisableFallback: true, MaxAttempts: 1}}), nil)
	r.fake.Always(&tu.FakeStep{Status: http.StatusServiceUnavailable})
	id := r.enqueue(request("ada", "What is a goroutine?"), queue.MaxAttempts(3))
	st := r.wait(id)
	if st.State != queue.StateFailed || st.Attempts != 3 {
		t.Fatalf("status = %s; want failed after 3 attempts", describe(st))
	}
	var ue *chat.UnavailableError
	if !errors.Is(st.Err, chat.ErrUnavailable) || !errors.As(st.Err, &ue) || ue.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("Err = %v, want a *chat.UnavailableError with status 503", st.Err)
	}
	if je := jobErr(t, st); je.Kind != queue.KindUnavailable || je.Attempt != 3 {
		t.Errorf("JobError = %+v", je)
	}
	ev := r.fake.Events()
	if len(ev) != 3 {
		t.Fatalf("upstream got %d requests, want 3", len(ev))
	}
	// Retry n waits at least half of RetryBase·2^(n-1): 400 ms, then 800 ms.
	if gap := ev[1].Arrived.Sub(ev[0].Arrived); gap < 400*time.Millisecond {
		t.Errorf("first retry after %v, want at least 400ms", gap)
	}
	if gap := ev[2].Arrived.Sub(ev[1].Arrived); gap < 800*time.Millisecond {
		t.Errorf("second retry after %v, want at least 800ms", gap)
	}
	if runs(t, reg, "unavailable") != 3 {
		t.Errorf("unavailable runs = %d, want 3", runs(t, reg, "unavailable"))
	}
	if v, _ := counter(t, reg, "ai_chat_queue_jobs_total", map[string]string{"queue": "default", "status": "failed"}); v != 1 {
		t.Errorf("failed jobs = %v, want 1", v)
	}
}

// A payload that cannot be read (not JSON, an unknown version, another
// task type, an impossible envelope) is archived at once with
// ErrMalformed, and the worker goes on with the next job.
func TestMalformedPayloadArchivedWorkerAlive(t *testing.T) {
	r := newRig(t, rigOpts{})
	_, reg := r.worker(r.service(svcOpts{}), nil)
	raw := asynq.NewClientFromRedisClient(r.env.Client)
	cases := []struct {
		name, typ, body, want string
	}{
		{"not json", queue.TaskType, "not json", "not a JSON object"},
		{"no version", queue.TaskType, `{"req":{}}`, "no version"},
		{"unknown version", queue.TaskType, `{"v":2,"req":{"user_id":"u"}}`, "version 2 unknown"},
		{"no attempts", queue.TaskType, `{"v":1,"req":{"user_id":"u"},"enqueued_at_ms":1,"timeout_ms":1000}`, "max_attempts 0"},
		{"other type", "email:send", `{"v":1}`, "task type"},
	}
	ids := make([]string, len(cases))
	for i, tc := range cases {
		id := fmt.Sprintf("raw%d", i)
		if _, err := raw.Enqueue(asynq.NewTask(tc.typ, []byte(tc.body)), asynq.Queue(r.cfg.QueueName("default")),
			asynq.TaskID(id), asynq.MaxRetry(5)); err != nil {
			t.Fatal(err)
		}
		ids[i] = "default." + id
	}
	good := r.enqueue(request("ada", "Still there?"))
	for i, tc := range cases {
		st := r.wait(ids[i])
		if st.State != queue.StateFailed || !errors.Is(st.Err, queue.ErrMalformed) || !strings.Contains(st.Err.Error(), tc.want) {
			t.Errorf("%s: %s; want failed with ErrMalformed saying %q", tc.name, describe(st), tc.want)
			continue
		}
		if je := jobErr(t, st); je.Kind != queue.KindMalformed || st.Attempts != 1 {
			t.Errorf("%s: JobError %+v after %d attempts; want malformed at the first", tc.name, je, st.Attempts)
		}
	}
	if st := r.wait(good); st.State != queue.StateDone {
		t.Errorf("the job after the malformed ones: %s", describe(st))
	}
	if n := runs(t, reg, "malformed"); n != len(cases) {
		t.Errorf("malformed runs = %d, want %d (none retried)", n, len(cases))
	}
}

// With the worker saturated (one job at a time, busy), a high-priority
// job enqueued after low ones runs before them.
func TestPriorityUnderBacklog(t *testing.T) {
	r := newRig(t, rigOpts{queue: queue.Config{StrictPriority: true}})
	r.worker(r.service(svcOpts{}), func(c *queue.Config) { c.Concurrency = 1 })
	blocker := blockPrefix + "priority"
	first := r.enqueue(chat.Request{UserID: "u0", CourseID: course, VideoURL: blocker, Message: "blocker"}, queue.Priority("low"))
	r.src.waitEntered(t, blocker)
	var ids []string
	for i, p := range []string{"low", "low", "default", "low", "high"} {
		ids = append(ids, r.enqueue(request(fmt.Sprintf("u%d", i+1), p+" "+fmt.Sprint(i+1)), queue.Priority(p)))
	}
	r.src.open()
	for _, id := range append([]string{first}, ids...) {
		if st := r.wait(id); st.State != queue.StateDone {
			t.Fatalf("%s: %s", id, describe(st))
		}
	}
	want := "blocker,high 5,default 3,low 1,low 2,low 4"
	if got := strings.Join(r.messages(), ","); got != want {
		t.Errorf("upstream order %s, want %s", got, want)
	}
}

// Close lets the running job finish: the turn completes and the job is
// done, not handed back.
func TestCloseLetsRunningJobFinish(t *testing.T) {
	r := newRig(t, rigOpts{})
	w, _ := r.worker(r.service(svcOpts{}), nil)
	v := blockPrefix + "finish"
	id := r.enqueue(chat.Request{UserID: "ada", CourseID: course, VideoURL: v, Message: "Slow question"})
	r.src.waitEntered(t, v)
	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		closed <- w.Close(ctx)
	}()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a job was running", err)
	default:
	}
	r.src.open()
	if err := <-closed; err != nil {
		t.Fatalf("Close = %v", err)
	}
	if st := r.status(id); st.State != queue.StateDone || st.Attempts != 1 {
		t.Errorf("status after Close = %s; want done", describe(st))
	}
	if err := w.Start(context.Background()); !errors.Is(err, queue.ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
}

// Close whose ctx ends hands the running job back: it goes back to its
// queue, the attempt not counted, and another worker runs it.
func TestCloseHandsBackRunningJob(t *testing.T) {
	r := newRig(t, rigOpts{})
	w1, _ := r.worker(r.service(svcOpts{}), nil)
	v := blockPrefix + "handback"
	id := r.enqueue(chat.Request{UserID: "ada", CourseID: course, VideoURL: v, Message: "Slow question"}, queue.MaxAttempts(1))
	r.src.waitEntered(t, v)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := w1.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v, want context.DeadlineExceeded", err)
	}
	if st := r.status(id); st.State != queue.StatePending || st.Attempts != 0 {
		t.Fatalf("status after Close = %s; want pending, no attempt counted", describe(st))
	}
	r.src.open()
	r.worker(r.service(svcOpts{}), nil)
	if st := r.wait(id); st.State != queue.StateDone || st.Attempts != 1 {
		t.Errorf("status = %s; want done by the second worker, at the only attempt", describe(st))
	}
}

// A Worker's goroutines (asynq's included) are gone after Close.
func TestWorkerCloseLeavesNoGoroutine(t *testing.T) {
	r := newRig(t, rigOpts{})
	svc := r.service(svcOpts{})
	if _, err := svc.Ask(context.Background(), request("warm", "up")); err != nil {
		t.Fatal(err)
	}
	ignore := []goleak.Option{
		goleak.IgnoreCurrent(),
		// Keep-alive connections of the fake upstream and of its client.
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		// miniredis's side of the connections of the pool.
		goleak.IgnoreAnyFunction("github.com/alicebob/miniredis/v2/server.(*Server).servePeer"),
		goleak.IgnoreAnyFunction("github.com/alicebob/miniredis/v2/server.(*Server).servePeer.func2"),
	}
	cfg := r.cfg
	cfg.Registerer = prometheus.NewRegistry()
	w, err := queue.NewWorker(r.env.Client, svc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if st := r.wait(r.enqueue(request("ada", fmt.Sprint("question ", i)))); st.State != queue.StateDone {
			t.Fatal(describe(st))
		}
	}
	if _, err := cfg.Registerer.(*prometheus.Registry).Gather(); err != nil { // starts a depth reading
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(ctx); err != nil {
		t.Errorf("second Close = %v", err)
	}
	goleak.VerifyNone(t, ignore...)
}

// The metrics are registered under ai_chat_queue_ and count what
// happened; Close unregisters them.
func TestMetrics(t *testing.T) {
	r := newRig(t, rigOpts{queue: queue.Config{DepthEvery: time.Millisecond}})
	svc := r.service(svcOpts{})
	cfg := r.cfg
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	cfg.ConstLabels = prometheus.Labels{"instance": "a"}
	w, err := queue.NewWorker(r.env.Client, svc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(context.Background())
	// Before any job: the queues are not known to asynq yet and count zero.
	if v, ok := counter(t, reg, "ai_chat_queue_depth", map[string]string{"queue": "high", "state": "pending"}); !ok || v != 0 {
		t.Errorf("depth of an unused queue = %v, %v", v, ok)
	}
	id := r.enqueue(request("ada", "What is a goroutine?"))
	pending := func() bool {
		v, _ := counter(t, reg, "ai_chat_queue_depth", map[string]string{"queue": "default", "state": "pending"})
		return v == 1
	}
	if !tu.Eventually(10*time.Second, pending) {
		t.Error("depth{default,pending} never read 1 with a job waiting")
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.wait(id)
	completed := func() bool {
		v, _ := counter(t, reg, "ai_chat_queue_depth", map[string]string{"queue": "default", "state": "completed"})
		p, _ := counter(t, reg, "ai_chat_queue_depth", map[string]string{"queue": "default", "state": "pending"})
		return v == 1 && p == 0
	}
	if !tu.Eventually(10*time.Second, completed) {
		t.Error("depth{default,completed} never read 1 after the job")
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"ai_chat_queue_runs_total", map[string]string{"queue": "default", "result": "ok"}, 1},
		{"ai_chat_queue_runs_total", map[string]string{"queue": "high", "result": "ok"}, 0},
		{"ai_chat_queue_jobs_total", map[string]string{"queue": "default", "status": "done"}, 1},
		{"ai_chat_queue_job_duration_seconds", map[string]string{"queue": "default", "status": "done"}, 1},
		{"ai_chat_queue_oldest_pending_seconds", map[string]string{"queue": "default"}, 0},
	} {
		if v, ok := counter(t, reg, c.name, c.labels); !ok || v != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}
	if v, _ := counter(t, r.reg, "ai_chat_queue_enqueued_total", map[string]string{"queue": "default", "result": "new"}); v != 1 {
		t.Errorf("enqueued = %v, want 1", v)
	}
	// A second worker on the same registry needs its own ConstLabels.
	if _, err := queue.NewWorker(r.env.Client, svc, cfg); err == nil {
		t.Error("a second Worker registered the same series")
	}
	cfg2 := cfg
	cfg2.ConstLabels = prometheus.Labels{"instance": "b"}
	w2, err := queue.NewWorker(r.env.Client, svc, cfg2)
	if err != nil {
		t.Fatalf("a second Worker with its own ConstLabels: %v", err)
	}
	_ = w2.Close(context.Background())
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 0 {
		t.Errorf("%d metric families left after Close", len(mfs))
	}
}

func TestConfigErrors(t *testing.T) {
	env := tu.MiniredisEnv(t)
	for _, tc := range []struct {
		name, field string
		new         func() error
	}{
		{"client nil rdb", "rdb", func() error { _, err := queue.NewClient(nil, queue.Config{}); return err }},
		{"worker nil rdb", "rdb", func() error { _, err := queue.NewWorker(nil, stubAsker{}, queue.Config{}); return err }},
		{"worker nil svc", "svc", func() error { _, err := queue.NewWorker(env.Client, nil, queue.Config{}); return err }},
		{"prefix", "Config.Prefix", func() error { _, err := queue.NewClient(env.Client, queue.Config{Prefix: "a{b}"}); return err }},
		{"queue name", "Config.Queues", func() error {
			_, err := queue.NewClient(env.Client, queue.Config{Queues: map[string]int{"a.b": 1}})
			return err
		}},
		{"queue weight", "Config.Queues", func() error {
			_, err := queue.NewWorker(env.Client, stubAsker{}, queue.Config{Queues: map[string]int{"default": 0}})
			return err
		}},
		{"no queues", "Config.Queues", func() error {
			_, err := queue.NewClient(env.Client, queue.Config{Queues: map[string]int{}})
			return err
		}},
		{"default priority", "Config.DefaultPriority", func() error {
			_, err := queue.NewClient(env.Client, queue.Config{Queues: map[string]int{"a": 1}})
			return err
		}},
		{"attempts", "Config.MaxAttempts", func() error { _, err := queue.NewClient(env.Client, queue.Config{MaxAttempts: -1}); return err }},
		{"concurrency", "Config.Concurrency", func() error {
			_, err := queue.NewWorker(env.Client, stubAsker{}, queue.Config{Concurrency: -1})
			return err
		}},
		{"timeout", "Config.Timeout", func() error { _, err := queue.NewClient(env.Client, queue.Config{Timeout: -time.Second}); return err }},
		{"labels", "Config.ConstLabels", func() error {
			_, err := queue.NewWorker(env.Client, stubAsker{}, queue.Config{ConstLabels: prometheus.Labels{"queue": "x"}})
			return err
		}},
	} {
		err := tc.new()
		var ce *chatscale.ConfigError
		if !errors.Is(err, chatscale.ErrInvalidConfig) || !errors.As(err, &ce) || ce.Field != tc.field || ce.Package != "chat/queue" {
			t.Errorf("%s: %v, want a *chatscale.ConfigError for %s", tc.name, err, tc.field)
		}
	}
}

type stubAsker struct{}

func (stubAsker) Ask(context.Context, chat.Request) (chat.Response, error) {
	return chat.Response{Reply: "stub"}, nil
}

// Start reports a Redis that does not answer.
func TestStartWithoutRedis(t *testing.T) {
	env := tu.MiniredisEnv(t)
	w, err := queue.NewWorker(env.Client, stubAsker{}, queue.Config{Prefix: env.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	env.Mini.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.Start(ctx); !errors.Is(err, queue.ErrUnavailable) {
		t.Errorf("Start = %v, want ErrUnavailable", err)
	}
	if err := w.Close(ctx); err != nil {
		t.Errorf("Close of a Worker never started = %v", err)
	}
}
