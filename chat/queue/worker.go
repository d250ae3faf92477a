package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/chat"
)

// Asker runs one turn. *chat.Service satisfies it.
type Asker interface {
	Ask(ctx context.Context, req chat.Request) (chat.Response, error)
}

var _ Asker = (*chat.Service)(nil)

// Worker runs the jobs of its queues with an Asker, usually a
// *chat.Service: Config.Concurrency at once, taken from the queues by
// weight (see Config.Queues and Config.StrictPriority).
//
// Each attempt runs Ask with the job's Timeout; its outcome decides what
// happens to the job:
//   - a reply (degraded or not) is stored with the job, which is done;
//   - an error that cannot succeed (chat.ErrInvalidRequest,
//     chat.ErrTooLarge) or a payload that cannot be read (ErrMalformed)
//     fails the job at once, without retry (asynq archives it);
//   - the learner's quota (chat.ErrRateLimited), the shared budget or
//     the Client's bulkhead (a *chat.UnavailableError with
//     chat.ReasonRateLimited or chat.ReasonBulkheadFull), or a Service
//     that is closing, re-queue the job for the error's RetryAfter
//     without counting the attempt: the budgets decide how fast jobs
//     run, never how many of them fail;
//   - any other error (the upstream unavailable, the Timeout, ...) is
//     retried with exponential backoff and jitter (Config.RetryBase,
//     Config.RetryMax, at least the error's RetryAfter) until the job's
//     MaxAttempts are spent; the job then fails.
//
// A job whose worker dies (or loses Redis) mid-attempt is taken back by
// asynq's recoverer once its lease has gone unrenewed for a minute (30 s
// of lease plus 30 s of allowance for clock skew; any Worker's recoverer
// runs at Start and every minute) and retried: the attempt counts. A job
// thus runs at least once and may run twice: a reply received just
// before its worker died is asked again. Status reports the attempts.
//
// # Metrics
//
// With Config.Registerer, a Worker registers, under Config.Namespace
// (default "ai_chat") and with Config.ConstLabels:
//
//	ai_chat_queue_runs_total{queue,result}                 attempts by priority and outcome: ok, degraded, invalid, malformed,
//	                                                       rate_limited, held_off, unavailable, timeout, error, exhausted, aborted
//	ai_chat_queue_jobs_total{queue,status}                 jobs that ended on this worker: done, failed
//	ai_chat_queue_job_duration_seconds{queue,status}       histogram from Enqueue to the job's end
//	ai_chat_queue_depth{queue,state}                       jobs in the queue by asynq state: pending, active, scheduled, retry,
//	                                                       archived, completed
//	ai_chat_queue_oldest_pending_seconds{queue}            age of the oldest pending job
//
// rate_limited is the learner's quota, held_off the shared budget, the
// bulkhead or a closing Service (re-queues that do not count as
// attempts); exhausted an attempt found past its job's MaxAttempts after
// a lease expired; aborted an attempt handed back at Close or cut by
// asynq. The depth gauges are the queue's, the same on every instance
// (aggregate them with max, not sum). They cost no job anything: a scrape
// returns the last reading at once and, when it is older than
// Config.DepthEvery, starts one background read through asynq's
// Inspector (a few round trips per queue); the first scrape waits for the
// first reading.
type Worker struct {
	cfg      Config
	rdb      redis.UniversalClient
	svc      Asker
	srv      *asynq.Server
	in       *asynq.Inspector
	metrics  *workerMetrics
	byQueue  map[string]string // asynq queue name → priority
	running  tracker
	stopping chan struct{} // closed when Close begins

	mu      sync.Mutex
	started bool
	closed  bool
	stopped chan struct{}
}

// NewWorker returns a Worker running the jobs of cfg.Queues on rdb with
// svc. rdb and svc stay the caller's: Close closes neither. It does no I/O
// and starts no goroutine; Start does. A nil argument or an impossible
// Config is a *chatscale.ConfigError.
func NewWorker(rdb redis.UniversalClient, svc Asker, cfg Config) (*Worker, error) {
	if rdb == nil {
		return nil, configError("rdb", "nil")
	}
	if svc == nil {
		return nil, configError("svc", "nil")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	w := &Worker{
		cfg: cfg, rdb: rdb, svc: svc,
		in:       asynq.NewInspectorFromRedisClient(rdb),
		byQueue:  make(map[string]string, len(cfg.Queues)),
		stopping: make(chan struct{}),
		stopped:  make(chan struct{}),
	}
	queues := make(map[string]int, len(cfg.Queues))
	for p, weight := range cfg.Queues {
		queues[cfg.QueueName(p)] = weight
		w.byQueue[cfg.QueueName(p)] = p
	}
	w.srv = asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:              cfg.Concurrency,
		Queues:                   queues,
		StrictPriority:           cfg.StrictPriority,
		TaskCheckInterval:        cfg.PollInterval,
		DelayedTaskCheckInterval: cfg.RetryCheckInterval,
		RetryDelayFunc:           w.retryDelay,
		IsFailure:                isFailure,
		// Close waits for the running jobs itself, until its ctx ends,
		// before it calls Shutdown: whatever still runs then is handed
		// back at once.
		ShutdownTimeout: time.Nanosecond,
		Logger:          asynqLogger{cfg.Logger},
		LogLevel:        asynq.InfoLevel,
		HealthCheckFunc: func(err error) {
			if err != nil {
				cfg.Logger.Warn("chat/queue: redis does not answer", "err", err.Error())
			}
		},
	})
	if w.metrics, err = newWorkerMetrics(w); err != nil {
		return nil, err
	}
	return w, nil
}

// Start checks that Redis answers and starts the Worker: it takes jobs
// until Close. Redis not answering gives an error wrapping ErrUnavailable
// (ctx's error when ctx ended first). Start after Start does nothing;
// after Close it returns ErrClosed.
func (w *Worker) Start(ctx context.Context) error {
	if err := w.rdb.Ping(ctx).Err(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return unavailable(err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.closed:
		return ErrClosed
	case w.started:
		return nil
	}
	if err := w.srv.Start(asynq.HandlerFunc(w.process)); err != nil {
		return fmt.Errorf("chat/queue: starting the worker: %w", err)
	}
	w.started = true
	return nil
}

// Close stops taking jobs, waits for the running ones until ctx ends,
// and hands back those still running then: asynq puts them back in their
// queues at once, the attempt not counted, for any Worker to take (their
// Ask sees its ctx cancelled). It then stops asynq's goroutines and
// unregisters the metrics. It returns ctx's error when running jobs were
// handed back. Close is idempotent (a later call waits for the first, or
// for its own ctx); it closes neither rdb nor the Asker.
func (w *Worker) Close(ctx context.Context) error {
	w.mu.Lock()
	first := !w.closed
	w.closed = true
	started := w.started
	w.mu.Unlock()
	if !first {
		select {
		case <-w.stopped:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	close(w.stopping)
	var err error
	if started {
		w.srv.Stop()
		select {
		case <-w.running.idle():
		default:
			select {
			case <-w.running.idle():
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		w.srv.Shutdown()
		// The jobs handed back see their ctx cancelled; wait for their
		// Ask to return, at most abandonWait.
		t := time.NewTimer(abandonWait)
		select {
		case <-w.running.idle():
		case <-t.C:
			w.cfg.Logger.Warn("chat/queue: jobs handed back at Close still running", "after", abandonWait)
		}
		t.Stop()
	}
	w.metrics.close()
	close(w.stopped)
	return err
}

// abandonWait bounds Close's wait for the Ask calls of the jobs it handed
// back, which return as soon as they see their ctx cancelled.
const abandonWait = 10 * time.Second

// tracker counts the running attempts.
type tracker struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed when n drops to 0
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (t *tracker) add() {
	t.mu.Lock()
	if t.n == 0 {
		t.zero = make(chan struct{})
	}
	t.n++
	t.mu.Unlock()
}

func (t *tracker) done() {
	t.mu.Lock()
	t.n--
	if t.n == 0 {
		close(t.zero)
	}
	t.mu.Unlock()
}

// idle returns a channel closed when no attempt runs.
func (t *tracker) idle() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		return closedChan
	}
	return t.zero
}

// attemptError is what process returns to asynq for an attempt that gave
// no reply: asynq records its text, RetryDelayFunc and IsFailure read it.
type attemptError struct {
	kind       Kind
	err        error
	heldOff    bool // re-queue without counting the attempt
	retryAfter time.Duration
	final      bool // archive: wraps asynq.SkipRetry
}

func (e *attemptError) Error() string {
	return "chat/queue: job " + string(e.kind) + ": " + e.err.Error()
}

func (e *attemptError) Unwrap() []error {
	if e.final {
		return []error{e.err, asynq.SkipRetry}
	}
	return []error{e.err}
}

// isFailure is asynq's IsFailure: a re-queue that does not count is not a
// failure, so asynq leaves the job's retry count alone.
func isFailure(err error) bool {
	var ae *attemptError
	return !errors.As(err, &ae) || !ae.heldOff
}

// retryDelay is asynq's RetryDelayFunc: n is the number of counted
// failures before this one.
func (w *Worker) retryDelay(n int, err error, _ *asynq.Task) time.Duration {
	var ae *attemptError
	isAE := errors.As(err, &ae)
	var d time.Duration
	switch {
	case isAE && ae.heldOff && ae.retryAfter > 0:
		d = ae.retryAfter
		if ae.kind != KindRateLimited {
			// Jobs refused by a shared budget were told about the same
			// delay: spread their return over half of it again.
			d += rand.N(d/2 + 1)
		}
	case isAE && ae.heldOff:
		d = jittered(w.cfg.RetryBase)
	default:
		d = backoff(n, w.cfg.RetryBase, w.cfg.RetryMax)
		if isAE && ae.retryAfter > d {
			d = ae.retryAfter
		}
	}
	return roundUp(time.Now(), d)
}

// backoff is the delay before retry n+1: a random time in [d/2, d) with
// d = min(max, base·2^n).
func backoff(n int, base, maxDelay time.Duration) time.Duration {
	d := base
	for i := 0; i < n && d < maxDelay; i++ {
		d *= 2
	}
	return jittered(min(d, maxDelay))
}

// jittered returns a random time in [d/2, d).
func jittered(d time.Duration) time.Duration {
	if d < 2 {
		return d
	}
	return d/2 + rand.N(d/2)
}

// roundUp lengthens d so that now+d falls on a whole second: asynq keeps
// the retry time as Unix seconds, truncated, and would otherwise move the
// job back up to a second early.
func roundUp(now time.Time, d time.Duration) time.Duration {
	at := now.Add(d)
	sec := at.Truncate(time.Second)
	if sec.Before(at) {
		sec = sec.Add(time.Second)
	}
	return sec.Sub(now)
}

// process is the asynq handler: one attempt of a job.
func (w *Worker) process(ctx context.Context, t *asynq.Task) error {
	w.running.add()
	defer w.running.done()
	qname, _ := asynq.GetQueueName(ctx)
	priority, ok := w.byQueue[qname]
	if !ok {
		priority = qname
	}
	retried, _ := asynq.GetRetryCount(ctx)
	j := &job{w: w, t: t, priority: priority, attempt: retried + 1}
	select {
	case <-w.stopping:
		if ctx.Err() != nil {
			j.w.metrics.run(priority, runAborted)
			return ctx.Err()
		}
	default:
	}
	if t.Type() != TaskType {
		return j.fail(ctx, KindMalformed, fmt.Errorf("%w: task type %q is not %q", ErrMalformed, t.Type(), TaskType))
	}
	p, err := decodePayload(t.Payload())
	if err != nil {
		return j.fail(ctx, KindMalformed, err)
	}
	j.p = p
	if retried >= p.MaxAttempts {
		return j.exhausted(ctx, retried)
	}
	req := p.Request.request()
	if req.TurnID == "" {
		// Every attempt of the job is one turn: an attempt that runs again
		// after a worker died stores the exchange once, and returns the
		// stored reply when the first attempt got as far as storing it.
		req.TurnID = "job:" + j.id()
	}
	if err := checkRequest(req, w.cfg.MaxMessageBytes); err != nil {
		return j.fail(ctx, KindInvalid, err)
	}
	actx, cancel := context.WithTimeout(ctx, p.timeout())
	resp, err := w.svc.Ask(actx, req)
	timedOut := errors.Is(actx.Err(), context.DeadlineExceeded)
	cancel()
	if ctx.Err() != nil {
		// asynq ended the attempt (Close handed the job back, or its
		// deadline or lease passed) and has already decided the job's fate.
		w.metrics.run(priority, runAborted)
		return ctx.Err()
	}
	if err != nil {
		return j.fail(ctx, classify(err, timedOut), err)
	}
	return j.done(ctx, resp)
}

// classify returns the kind of an Ask error.
func classify(err error, timedOut bool) Kind {
	var ue *chat.UnavailableError
	switch {
	case errors.Is(err, chatscale.ErrInvalidInput), errors.Is(err, chat.ErrInvalidRequest):
		return KindInvalid
	case errors.Is(err, chat.ErrRateLimited):
		return KindRateLimited
	case errors.As(err, &ue), errors.Is(err, chat.ErrUnavailable), errors.Is(err, chat.ErrClosed):
		return KindUnavailable
	case timedOut, errors.Is(err, context.DeadlineExceeded):
		// The attempt's Timeout, or the Service's own TurnTimeout: asynq's
		// deadline, later, was checked before.
		return KindTimeout
	}
	return KindError
}

// heldOff reports whether an Ask error re-queues the job without
// counting the attempt.
func heldOff(kind Kind, err error) bool {
	var ue *chat.UnavailableError
	switch {
	case kind == KindRateLimited, errors.Is(err, chat.ErrClosed):
		return true
	case errors.As(err, &ue):
		return ue.Reason == chat.ReasonRateLimited || ue.Reason == chat.ReasonBulkheadFull
	}
	return false
}

// job is one attempt of a job in process.
type job struct {
	w        *Worker
	t        *asynq.Task
	p        *payload // nil when malformed
	priority string
	attempt  int
}

func (j *job) id() string { return j.priority + "." + j.t.ResultWriter().TaskID() }

// store writes r as the job's result.
func (j *job) store(r *result) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = j.t.ResultWriter().Write(b)
	return err
}

func (j *job) done(ctx context.Context, resp chat.Response) error {
	w := j.w
	now := w.cfg.Now()
	if err := j.store(&result{V: Version, Attempt: j.attempt, AtMS: now.UnixMilli(), Response: toWireResponse(resp)}); err != nil {
		// The reply cannot be recorded: the job is retried like a
		// failed attempt (the turn runs again).
		w.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "chat/queue: storing a reply failed",
			slog.String("job_id", j.id()), slog.String("err", err.Error()))
		return j.fail(ctx, KindError, fmt.Errorf("storing the reply: %w", err))
	}
	res := runOK
	if resp.Degraded {
		res = runDegraded
	}
	w.metrics.run(j.priority, res)
	w.metrics.ended(j.priority, statusDone, now.Sub(j.p.enqueuedAt()))
	return nil
}

// fail ends an attempt that gave no reply: it stores why and tells asynq
// whether to re-queue the job, retry it or archive it.
func (j *job) fail(ctx context.Context, kind Kind, err error) error {
	w := j.w
	ae := &attemptError{kind: kind, err: err}
	ae.heldOff = j.p != nil && heldOff(kind, err)
	var (
		re *chat.RateLimitError
		ue *chat.UnavailableError
	)
	switch {
	case errors.As(err, &re):
		ae.retryAfter = re.RetryAfter
	case errors.As(err, &ue):
		ae.retryAfter = ue.RetryAfter
	}
	ae.final = kind == KindInvalid || kind == KindMalformed || j.p == nil || (!ae.heldOff && j.attempt >= j.p.MaxAttempts)
	now := w.cfg.Now()
	if serr := j.store(&result{V: Version, Attempt: j.attempt, AtMS: now.UnixMilli(), Error: describe(kind, err, j.attempt)}); serr != nil {
		w.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "chat/queue: storing an attempt's error failed",
			slog.String("job_id", j.id()), slog.String("err", serr.Error()))
	}
	w.metrics.run(j.priority, runResultOf(kind, ae.heldOff))
	if ae.final {
		var took time.Duration
		if j.p != nil {
			took = now.Sub(j.p.enqueuedAt())
		}
		w.metrics.ended(j.priority, statusFailed, took)
		level := slog.LevelInfo
		if kind == KindMalformed {
			level = slog.LevelWarn
		}
		w.cfg.Logger.LogAttrs(ctx, level, "chat/queue: job failed",
			slog.String("job_id", j.id()), slog.String("kind", string(kind)), slog.Int("attempt", j.attempt))
	}
	return ae
}

// exhausted archives a job asynq handed out once more after its attempts
// were spent: an attempt cut by an expired lease or by asynq's deadline
// counts without passing through fail. The job fails with that last
// error, which asynq recorded.
func (j *job) exhausted(ctx context.Context, retried int) error {
	w := j.w
	last := &JobError{Kind: KindError, Message: "attempts spent", Attempt: retried}
	qname, _ := asynq.GetQueueName(ctx)
	if info, err := w.in.GetTaskInfo(qname, j.t.ResultWriter().TaskID()); err == nil && info.LastErr != "" {
		last = fromLastErr(info.LastErr, retried)
	}
	now := w.cfg.Now()
	we := &wireError{Kind: last.Kind, Message: last.Message, Attempt: retried}
	if err := j.store(&result{V: Version, Attempt: retried, AtMS: now.UnixMilli(), Error: we}); err != nil {
		w.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "chat/queue: storing an attempt's error failed",
			slog.String("job_id", j.id()), slog.String("err", err.Error()))
	}
	w.metrics.run(j.priority, runExhausted)
	w.metrics.ended(j.priority, statusFailed, now.Sub(j.p.enqueuedAt()))
	return &attemptError{kind: last.Kind, err: last, final: true}
}

// asynqLogger passes asynq's log lines to a slog.Logger.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) log(level slog.Level, args []any) {
	ctx := context.Background()
	if a.l.Enabled(ctx, level) {
		a.l.Log(ctx, level, "chat/queue: asynq: "+strings.TrimSpace(fmt.Sprint(args...)))
	}
}

func (a asynqLogger) Debug(args ...any) { a.log(slog.LevelDebug, args) }
func (a asynqLogger) Info(args ...any)  { a.log(slog.LevelInfo, args) }
func (a asynqLogger) Warn(args ...any)  { a.log(slog.LevelWarn, args) }
func (a asynqLogger) Error(args ...any) { a.log(slog.LevelError, args) }

// Fatal logs at error level: asynq calls it nowhere, and a library must
// not end the process.
func (a asynqLogger) Fatal(args ...any) { a.log(slog.LevelError, args) }
