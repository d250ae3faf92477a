package queue

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/internal/timeutil"
)

// State is where a job is in its life.
type State string

// The states of a job.
const (
	// StatePending: waiting in its queue for a worker.
	StatePending State = "pending"
	// StateActive: a worker is running an attempt.
	StateActive State = "active"
	// StateRetrying: an attempt gave no reply (Status.Err says why) and
	// the job waits until Status.NextAttemptAt to go back to its queue.
	StateRetrying State = "retrying"
	// StateDone: an attempt answered; Status.Response is the reply.
	StateDone State = "done"
	// StateFailed: the job ended without a reply; Status.Err says why.
	StateFailed State = "failed"
)

// Final reports whether s is StateDone or StateFailed.
func (s State) Final() bool { return s == StateDone || s == StateFailed }

// Status is a job's state and, once it ended, its outcome.
type Status struct {
	// ID is the job's ID; Priority its priority.
	ID, Priority string
	// UserID is the learner whose turn the job runs (Request.UserID at
	// Enqueue), for a host to check that the caller asking about a job is
	// its owner.
	UserID string
	// State is where the job is.
	State State
	// Response is the reply of a StateDone job.
	Response chat.Response
	// Err is a *JobError: why a StateFailed job failed, or why the last
	// attempt of a job not done gave no reply (nil when none failed).
	Err error
	// Attempts is the number of attempts made so far that count against
	// MaxAttempts (re-queues for a quota or a budget do not count): for
	// StateActive, the running one included.
	Attempts int
	// MaxAttempts is the job's bound on attempts.
	MaxAttempts int
	// EnqueuedAt is when Enqueue wrote the job.
	EnqueuedAt time.Time
	// NextAttemptAt is when a StateRetrying job goes back to its queue
	// (to the second).
	NextAttemptAt time.Time
	// EndedAt is when a StateDone or StateFailed job ended.
	EndedAt time.Time
}

// Option sets a job's options at Enqueue.
type Option func(*jobOptions)

type jobOptions struct {
	priority    string
	maxAttempts int
	timeout     time.Duration
	key         string
	hasKey      bool
}

// Priority puts the job in the queue of the named priority, one of
// Config.Queues. Without it, Config.DefaultPriority.
func Priority(name string) Option { return func(o *jobOptions) { o.priority = name } }

// MaxAttempts bounds the job's attempts, the first included: n >= 1.
// Without it, Config.MaxAttempts.
func MaxAttempts(n int) Option { return func(o *jobOptions) { o.maxAttempts = n } }

// Timeout bounds each attempt of the job: d > 0. Without it,
// Config.Timeout.
func Timeout(d time.Duration) Option { return func(o *jobOptions) { o.timeout = d } }

// IdempotencyKey makes Enqueue of the same key and priority return the
// job already enqueued under it, in whatever state, as long as the job is
// kept (a done job for Config.Retention, a failed one in asynq's
// archive), instead of enqueuing another. The key must be 1 to 256 bytes;
// it is hashed into the job ID. The same key with another request is an
// error.
func IdempotencyKey(key string) Option {
	return func(o *jobOptions) { o.key, o.hasKey = key, true }
}

// MaxKeyBytes bounds an idempotency key.
const MaxKeyBytes = 256

// Client enqueues turns and reads their outcome. It is safe for
// concurrent use; it runs no goroutine.
//
// # Metrics
//
// With Config.Registerer, a Client registers, under Config.Namespace
// (default "ai_chat") and with Config.ConstLabels:
//
//	ai_chat_queue_enqueued_total{queue,result}   Enqueue calls by priority and result: new, duplicate, invalid, error
type Client struct {
	cfg     Config
	aq      *asynq.Client
	in      *asynq.Inspector
	metrics *clientMetrics
}

// NewClient returns a Client enqueuing on rdb, which it does not close. It
// does no I/O. A nil rdb or an impossible Config is a
// *chatscale.ConfigError.
func NewClient(rdb redis.UniversalClient, cfg Config) (*Client, error) {
	if rdb == nil {
		return nil, configError("rdb", "nil")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, aq: asynq.NewClientFromRedisClient(rdb), in: asynq.NewInspectorFromRedisClient(rdb)}
	if c.metrics, err = newClientMetrics(cfg); err != nil {
		return nil, err
	}
	return c, nil
}

// Close unregisters the Client's metrics. The Client keeps working; rdb
// stays open. It is idempotent and returns nil.
func (c *Client) Close() error {
	c.metrics.reg.Unregister()
	return nil
}

// Enqueue writes a job that runs req as a turn and returns its ID, made
// of the priority and a random or key-derived part ("default.3f2a…").
//
// req is checked first as a Service would without its tokenizer (IDs,
// UTF-8, an empty message, Config.MaxMessageBytes, a negative position):
// such a request is a *chat.ValidationError (chat.ErrInvalidRequest) and
// no job is written. A bad Option is a *chatscale.InputError naming it.
// With IdempotencyKey, a job already under the key is returned instead of
// a new one. One round trip to Redis (plus one the first time a Client
// uses a queue, and two when the key is taken); Redis failing gives
// ErrUnavailable, ctx ending ctx's error.
func (c *Client) Enqueue(ctx context.Context, req chat.Request, opts ...Option) (string, error) {
	o := jobOptions{priority: c.cfg.DefaultPriority, maxAttempts: c.cfg.MaxAttempts, timeout: c.cfg.Timeout}
	for _, opt := range opts {
		opt(&o)
	}
	if err := c.checkOptions(&o); err != nil {
		c.metrics.enqueued(o.priority, enqInvalid)
		return "", err
	}
	if err := checkRequest(req, c.cfg.MaxMessageBytes); err != nil {
		c.metrics.enqueued(o.priority, enqInvalid)
		return "", err
	}
	p := &payload{
		V: Version, Request: toWireRequest(req), EnqueuedAtMS: c.cfg.Now().UnixMilli(),
		TimeoutMS: max(o.timeout.Milliseconds(), 1), MaxAttempts: o.maxAttempts,
	}
	body, err := encodePayload(p)
	if err != nil {
		return "", fmt.Errorf("chat/queue: encoding the payload: %w", err)
	}
	id := randomID()
	if o.hasKey {
		id = keyID(o.key)
	}
	jobID := o.priority + "." + id
	queue := c.cfg.QueueName(o.priority)
	task := asynq.NewTask(TaskType, body,
		asynq.Queue(queue),
		asynq.TaskID(id),
		// One more than the attempts: the Worker archives a job whose
		// attempts are spent itself, so that asynq's own bound is left
		// for the re-queues that do not count (see Worker).
		asynq.MaxRetry(o.maxAttempts),
		asynq.Timeout(asynqTimeout(o.timeout)),
		asynq.Retention(max(c.cfg.Retention, time.Second)),
	)
	// A job under the key may be dropped (its retention ended) between
	// the conflict and the read: then enqueue again, once.
	for try := 0; ; try++ {
		_, err = c.aq.EnqueueContext(ctx, task)
		if err == nil {
			c.metrics.enqueued(o.priority, enqNew)
			return jobID, nil
		}
		if !errors.Is(err, asynq.ErrTaskIDConflict) || !o.hasKey {
			break
		}
		same, found, rerr := c.sameRequest(ctx, queue, id, p)
		switch {
		case rerr != nil:
			err = rerr
		case found && same:
			c.metrics.enqueued(o.priority, enqDuplicate)
			return jobID, nil
		case found:
			c.metrics.enqueued(o.priority, enqInvalid)
			return "", inputError("IdempotencyKey", "already used for another request")
		case try == 0:
			continue
		}
		break
	}
	c.metrics.enqueued(o.priority, enqError)
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	if errors.Is(err, ErrUnavailable) {
		return "", err
	}
	return "", unavailable(err)
}

func (c *Client) checkOptions(o *jobOptions) error {
	if _, ok := c.cfg.Queues[o.priority]; !ok {
		return inputError("Priority", fmt.Sprintf("%q: not one of Config.Queues", o.priority))
	}
	if o.maxAttempts < 1 {
		return inputError("MaxAttempts", fmt.Sprintf("%d: less than 1", o.maxAttempts))
	}
	if o.timeout <= 0 {
		return inputError("Timeout", o.timeout.String()+": not positive")
	}
	if o.hasKey && (o.key == "" || len(o.key) > MaxKeyBytes) {
		return inputError("IdempotencyKey", fmt.Sprintf("%d bytes: not 1 to %d", len(o.key), MaxKeyBytes))
	}
	return nil
}

// sameRequest reads the job queue/id and reports whether it exists and
// holds p's request.
func (c *Client) sameRequest(ctx context.Context, queue, id string, p *payload) (same, found bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, false, err
	}
	info, err := c.in.GetTaskInfo(queue, id)
	switch {
	case errors.Is(err, asynq.ErrTaskNotFound), errors.Is(err, asynq.ErrQueueNotFound):
		return false, false, nil
	case err != nil:
		return false, false, unavailable(err)
	}
	old, err := decodePayload(info.Payload)
	if err != nil {
		return false, true, nil
	}
	return old.Request == p.Request, true, nil
}

// asynqTimeout is the timeout asynq holds, in whole seconds: the job's
// own, rounded up, plus a margin so that the Worker's timer, which has
// the job's exact timeout, ends the attempt first and records why.
func asynqTimeout(d time.Duration) time.Duration {
	return (d+time.Second-1)/time.Second*time.Second + timeoutMargin
}

// timeoutMargin is what asynq's deadline of an attempt adds to the job's
// Timeout.
const timeoutMargin = 5 * time.Second

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// keyID is the job ID part of an idempotency key.
func keyID(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "k" + hex.EncodeToString(sum[:16])
}

// parseID splits a job ID into its priority and asynq task ID.
func parseID(jobID string) (priority, id string, err error) {
	priority, id, ok := strings.Cut(jobID, ".")
	if !ok || !validName(priority) || !validName(id) {
		return "", "", inputError("jobID", fmt.Sprintf("%q: not <priority>.<id>", jobID))
	}
	return priority, id, nil
}

// Status returns the job's state and, when it ended, its Response or its
// error (a *JobError in Status.Err). An ID that is not of the form
// Enqueue returns is a *chatscale.InputError; a job that does not exist
// (or no longer: see Config.Retention) ErrNotFound. Two round trips to
// Redis; the Redis calls are bounded by rdb's timeouts, not by ctx, which
// is checked before them.
func (c *Client) Status(ctx context.Context, jobID string) (Status, error) {
	priority, id, err := parseID(jobID)
	if err != nil {
		return Status{}, err
	}
	if err := ctx.Err(); err != nil {
		return Status{}, err
	}
	info, err := c.in.GetTaskInfo(c.cfg.QueueName(priority), id)
	switch {
	case errors.Is(err, asynq.ErrTaskNotFound), errors.Is(err, asynq.ErrQueueNotFound):
		return Status{}, fmt.Errorf("%w: %s", ErrNotFound, jobID)
	case err != nil:
		if ctx.Err() != nil {
			return Status{}, ctx.Err()
		}
		return Status{}, unavailable(err)
	}
	return statusOf(jobID, priority, info)
}

// statusOf builds a Status from asynq's view of the job and what the
// Worker stored with it.
func statusOf(jobID, priority string, info *asynq.TaskInfo) (Status, error) {
	st := Status{ID: jobID, Priority: priority, Attempts: info.Retried}
	if p, err := decodePayload(info.Payload); err == nil {
		st.MaxAttempts = p.MaxAttempts
		st.EnqueuedAt = p.enqueuedAt()
		st.UserID = p.Request.UserID
	}
	var res *result
	if len(info.Result) > 0 {
		r, err := decodeResult(info.Result)
		if err != nil {
			return st, fmt.Errorf("chat/queue: job %s: %w", jobID, err)
		}
		res = r
	}
	lastErr := func() error {
		if res != nil && res.Error != nil {
			return res.Error.jobError()
		}
		if info.LastErr != "" {
			return fromLastErr(info.LastErr, info.Retried)
		}
		return nil
	}
	switch info.State {
	case asynq.TaskStatePending, asynq.TaskStateScheduled, asynq.TaskStateAggregating:
		st.State = StatePending
		st.Err = lastErr()
	case asynq.TaskStateActive:
		st.State = StateActive
		st.Attempts++
		st.Err = lastErr()
	case asynq.TaskStateRetry:
		st.State = StateRetrying
		st.NextAttemptAt = info.NextProcessAt
		st.Err = lastErr()
	case asynq.TaskStateCompleted:
		st.State = StateDone
		if res == nil || res.Response == nil {
			return st, fmt.Errorf("chat/queue: job %s: %w: done without a stored response", jobID, ErrMalformed)
		}
		st.Response = res.Response.response()
		st.Attempts = res.Attempt
		st.EndedAt = time.UnixMilli(res.AtMS)
	case asynq.TaskStateArchived:
		st.State = StateFailed
		st.EndedAt = info.LastFailedAt
		st.Err = lastErr()
		if st.Err == nil {
			st.Err = &JobError{Kind: KindError, Message: "failed"}
		}
		if res != nil && res.Error != nil {
			st.Attempts = res.Attempt
			st.EndedAt = time.UnixMilli(res.AtMS)
		}
	default:
		return st, fmt.Errorf("chat/queue: job %s: unknown asynq state %v", jobID, info.State)
	}
	return st, nil
}

// fromLastErr describes a failure asynq recorded without the Worker's
// account of it: an expired lease or asynq's own deadline.
func fromLastErr(msg string, attempt int) *JobError {
	e := &JobError{Kind: KindError, Message: msg, Attempt: attempt}
	switch msg {
	case asynq.ErrLeaseExpired.Error():
		e.Kind = KindLeaseExpired
	case context.DeadlineExceeded.Error():
		e.Kind, e.cause = KindTimeout, context.DeadlineExceeded
	}
	return e
}

// Wait returns the job's Status once it is StateDone or StateFailed. It
// reads the status every Config.WaitPoll at first, doubling up to
// Config.WaitMaxPoll. When ctx ends first it returns the last Status read
// and ctx's error; an error of Status (ErrNotFound, ErrUnavailable, a bad
// ID) ends it too.
func (c *Client) Wait(ctx context.Context, jobID string) (Status, error) {
	d := c.cfg.WaitPoll
	for {
		st, err := c.Status(ctx, jobID)
		if err != nil || st.State.Final() {
			return st, err
		}
		if err := timeutil.Sleep(ctx, d); err != nil {
			return st, err
		}
		d = min(2*d, c.cfg.WaitMaxPoll)
	}
}
