package app

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/chat/queue"
)

// JobRoutes are the handlers of the asynchronous job routes, for clients
// that submit a question and collect the answer later:
//
//	POST /v1/jobs        Submit: queue a turn (the body of POST /v1/chat)
//	GET  /v1/jobs/{id}   Get: a job's state and, once done, its result
//
// Both run behind authentication: LearnerFrom(r.Context()) is the
// learner, and a handler must refuse a job another learner submitted.
// The drain gate, the request log and the JSON error bodies of the other
// routes apply to them too (writeError's shape: {"code", "error"}).
//
// With Options.Jobs nil (the default), New serves them with chat/queue:
// a queue.Client on the App's Redis enqueues and reads the jobs, and a
// queue.Worker in the process runs them with the App's chat.Service (see
// newJobs). A program that runs its own queue sets Options.Jobs instead;
// New then builds no queue, and a nil handler answers its route 501.
type JobRoutes struct {
	// Submit serves POST /v1/jobs.
	Submit http.Handler
	// Get serves GET /v1/jobs/{id}; r.PathValue("id") is the job's ID.
	Get http.Handler
}

// Limits of the job routes.
const (
	// MaxJobWait bounds the wait of GET /v1/jobs/{id}?wait=…: a longer
	// one is cut to it. It stays well under WriteTimeout.
	MaxJobWait = 30 * time.Second
	// MaxIdempotencyKeyBytes bounds the idempotency_key of POST /v1/jobs.
	MaxIdempotencyKeyBytes = 256
)

// workerRetry is how often a worker that could not start, because Redis
// did not answer, tries again.
const workerRetry = 5 * time.Second

// jobRoutes registers the job routes on mux.
func (a *App) jobRoutes(mux *http.ServeMux) {
	submit, get := notConfigured, notConfigured
	if a.jobs != nil {
		if a.jobs.Submit != nil {
			submit = func(w http.ResponseWriter, r *http.Request, _ string) { a.jobs.Submit.ServeHTTP(w, r) }
		}
		if a.jobs.Get != nil {
			get = func(w http.ResponseWriter, r *http.Request, _ string) { a.jobs.Get.ServeHTTP(w, r) }
		}
	}
	mux.Handle("POST /v1/jobs", a.learner(submit))
	mux.Handle("GET /v1/jobs/{id}", a.learner(get))
}

// notConfigured answers a job route that has no handler.
func notConfigured(w http.ResponseWriter, _ *http.Request, _ string) {
	writeError(w, http.StatusNotImplemented, apiError{Code: "not_implemented",
		Message: "the job queue is not configured on this server; use POST /v1/chat or /v1/chat/stream"})
}

// newJobs builds the default job routes: a queue.Client for the handlers
// and a queue.Worker that runs the jobs with the App's Service, both on
// the App's Redis (the queue needs Redis; the embedded one serves too)
// and with the App's registry (ai_chat_queue_* on /metrics) and log. It
// returns the function that starts the worker. Close stops the worker
// before the Service, so that the jobs it runs can finish.
func (a *App) newJobs() (start func(context.Context) error, err error) {
	cfg := queue.Config{Registerer: a.reg, Logger: a.log}
	client, err := queue.NewClient(a.rdb, cfg)
	if err != nil {
		return nil, err
	}
	a.onClose(func(context.Context) error { return client.Close() })
	worker, err := queue.NewWorker(a.rdb, a.svc, cfg)
	if err != nil {
		return nil, err
	}
	w := &workerRun{w: worker, log: a.log}
	w.ctx, w.stop = context.WithCancel(context.Background())
	a.onClose(w.close)

	h := &jobHandlers{a: a, client: client}
	a.jobs = &JobRoutes{Submit: http.HandlerFunc(h.submit), Get: http.HandlerFunc(h.get)}
	a.log.Info("jobs: chat/queue on the server's Redis, worker in process",
		"concurrency", queue.DefaultConcurrency, "priorities", strings.Join(jobPriorities, ","))
	return w.start, nil
}

// workerRun starts a queue.Worker and, when Redis does not answer at
// startup, keeps trying in the background until it does or the App
// closes: the HTTP routes work meanwhile, and the jobs they enqueue wait
// in Redis.
type workerRun struct {
	w     *queue.Worker
	log   *slog.Logger
	ctx   context.Context // cancelled by close
	stop  context.CancelFunc
	retry sync.WaitGroup // the background retries
}

// start starts the worker, or the background retries when Redis does not
// answer. New calls it once, during the warm-up; another error stops New.
func (r *workerRun) start(ctx context.Context) error {
	err := r.w.Start(ctx)
	if err == nil || (!errors.Is(err, queue.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded)) {
		return err
	}
	r.log.Warn("jobs: the worker cannot start, Redis does not answer; retrying in the background",
		"every", workerRetry, "err", err)
	r.retry.Go(func() {
		t := time.NewTicker(workerRetry)
		defer t.Stop()
		for {
			select {
			case <-r.ctx.Done():
				return
			case <-t.C:
			}
			err := r.w.Start(r.ctx)
			if err == nil {
				r.log.Info("jobs: the worker started")
				return
			}
			if r.ctx.Err() != nil || errors.Is(err, queue.ErrClosed) {
				return
			}
		}
	})
	return nil
}

// close stops the retries and closes the worker: it stops taking jobs,
// waits for the running ones until ctx ends and hands the rest back to
// the queue.
func (r *workerRun) close(ctx context.Context) error {
	r.stop()
	r.retry.Wait()
	return r.w.Close(ctx)
}

// jobPriorities are the priorities POST /v1/jobs accepts: chat/queue's
// default queues, heaviest first.
var jobPriorities = []string{"high", queue.DefaultPriority, "low"}

// jobHandlers serve the job routes with a queue.Client.
type jobHandlers struct {
	a      *App
	client *queue.Client
}

// jobRequest is the body of POST /v1/jobs: the body of POST /v1/chat,
// the job's priority and an idempotency key, both optional. As there, no
// user field: the learner comes from authentication.
type jobRequest struct {
	chatRequest
	Priority       string  `json:"priority,omitempty"`
	IdempotencyKey *string `json:"idempotency_key,omitempty"`
}

// jobAccepted is the answer of POST /v1/jobs.
type jobAccepted struct {
	JobID     string `json:"job_id"`
	StatusURL string `json:"status_url"`
}

// submit serves POST /v1/jobs: it enqueues the learner's turn and answers
// 202 with the job's ID at once. The same idempotency key from the same
// learner (with the same priority) gives the same job, whatever its state.
func (h *jobHandlers) submit(w http.ResponseWriter, r *http.Request) {
	learner, _ := LearnerFrom(r.Context())
	var body jobRequest
	if !decodeJSON(w, r, &body) {
		return
	}
	req, ok := body.request(w, learner)
	if !ok {
		return
	}
	var opts []queue.Option
	if p := body.Priority; p != "" {
		if !slices.Contains(jobPriorities, p) {
			writeError(w, http.StatusBadRequest, apiError{Code: "invalid_request", Field: "priority",
				Message: "priority: one of " + strings.Join(jobPriorities, ", ")})
			return
		}
		opts = append(opts, queue.Priority(p))
	}
	if k := body.IdempotencyKey; k != nil {
		if *k == "" || len(*k) > MaxIdempotencyKeyBytes || !utf8.ValidString(*k) {
			writeError(w, http.StatusBadRequest, apiError{Code: "invalid_request", Field: "idempotency_key",
				Message: "idempotency_key: 1 to " + strconv.Itoa(MaxIdempotencyKeyBytes) + " bytes of UTF-8"})
			return
		}
		opts = append(opts, queue.IdempotencyKey(scopedKey(learner, *k)))
	}
	id, err := h.client.Enqueue(r.Context(), req, opts...)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	status := "/v1/jobs/" + url.PathEscape(id)
	w.Header().Set("Location", status)
	writeJSON(w, http.StatusAccepted, jobAccepted{JobID: id, StatusURL: status})
}

// scopedKey is the queue's idempotency key for a learner's key: a hash
// of both, so that two learners' keys never name one job and the job ID
// does not reveal the learner.
func scopedKey(learner, key string) string {
	h := sha256.New()
	h.Write([]byte("examples/server jobs\x00"))
	h.Write(binary.AppendUvarint(nil, uint64(len(learner))))
	h.Write([]byte(learner))
	h.Write([]byte(key))
	return hex.EncodeToString(h.Sum(nil))
}

// jobStatus is the body of GET /v1/jobs/{id}. A done job carries the
// fields of POST /v1/chat's answer (reply, thread_id, degraded, ...); a
// job whose last attempt gave no reply carries the error.
type jobStatus struct {
	JobID string      `json:"job_id"`
	State queue.State `json:"state"`
	*turnResult
	Error         *jobErrorBody `json:"error,omitempty"`
	Priority      string        `json:"priority"`
	Attempts      int           `json:"attempts"`
	MaxAttempts   int           `json:"max_attempts"`
	EnqueuedAt    *time.Time    `json:"enqueued_at,omitempty"`
	NextAttemptAt *time.Time    `json:"next_attempt_at,omitempty"`
	EndedAt       *time.Time    `json:"ended_at,omitempty"`
}

// jobErrorBody is why a job failed, or why its last attempt gave no
// reply. Message is written for people from the kind and the error's
// fields, never the error's own text (which may name servers).
type jobErrorBody struct {
	Kind              queue.Kind  `json:"kind"`
	Message           string      `json:"message"`
	Field             string      `json:"field,omitempty"`
	Reason            chat.Reason `json:"reason,omitempty"`
	Attempt           int         `json:"attempt,omitempty"`
	RetryAfterSeconds int         `json:"retry_after_seconds,omitempty"`
}

// get serves GET /v1/jobs/{id}[?wait=d]: the job's state, and its result
// once it ended. With wait (a duration such as 5s, or whole seconds; at
// most MaxJobWait) it answers when the job ends, the wait is over, or the
// server starts draining, whichever comes first. Another learner's job is
// answered exactly as a job that does not exist.
func (h *jobHandlers) get(w http.ResponseWriter, r *http.Request) {
	learner, _ := LearnerFrom(r.Context())
	wait, ok := jobWait(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	st, err := h.client.Status(r.Context(), id)
	if err != nil || st.UserID != learner {
		h.writeStatusError(w, r, st, learner, err)
		return
	}
	if wait > 0 && !st.State.Final() {
		wctx, cancel := context.WithTimeout(r.Context(), wait)
		stop := context.AfterFunc(h.a.gate.draining(), cancel)
		ws, err := h.client.Wait(wctx, id)
		stop()
		cancel()
		switch {
		case err == nil:
			st = ws
		case r.Context().Err() != nil:
			return
		case errors.Is(err, wctx.Err()):
			// The wait is over: the last state read, when there is one.
			if ws.ID != "" {
				st = ws
			}
		default:
			h.writeStatusError(w, r, ws, learner, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, jobStatusOf(st))
}

// jobWait reads the wait parameter. On failure it has answered 400.
func jobWait(w http.ResponseWriter, r *http.Request) (time.Duration, bool) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, true
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		n, nerr := strconv.Atoi(v)
		d, err = time.Duration(n)*time.Second, nerr
	}
	if err != nil || d < 0 {
		writeError(w, http.StatusBadRequest, apiError{Code: "invalid_request", Field: "wait",
			Message: "wait: a duration such as 5s or 500ms, or whole seconds, at most " + MaxJobWait.String()})
		return 0, false
	}
	return min(d, MaxJobWait), true
}

// writeStatusError answers a Status or Wait that failed, or a job of
// another learner: the latter, an unknown job and an ID that cannot be
// one get the same 404, so that no learner can tell another's job IDs
// from made-up ones.
func (h *jobHandlers) writeStatusError(w http.ResponseWriter, r *http.Request, st queue.Status, learner string, err error) {
	switch {
	case errors.Is(err, queue.ErrUnavailable):
		h.writeError(w, r, err)
	case err != nil && r.Context().Err() != nil:
		// The client has gone.
	case err == nil, errors.Is(err, queue.ErrNotFound), errors.Is(err, chatscale.ErrInvalidInput), st.UserID != learner:
		writeError(w, http.StatusNotFound, apiError{Code: "not_found", Message: "no such job"})
	default:
		h.a.writeTurnError(w, r, err)
	}
}

// writeError answers an error of the queue.
func (h *jobHandlers) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ie *chatscale.InputError
	switch {
	case errors.Is(err, queue.ErrUnavailable) && r.Context().Err() == nil:
		writeError(w, http.StatusServiceUnavailable, apiError{Code: "unavailable", RetryAfterSeconds: 1,
			Message: "the job queue is unavailable right now; retry later"})
	case errors.As(err, &ie) && ie.Field == "IdempotencyKey":
		// The IETF draft on the Idempotency-Key header answers a key
		// reused for another request 422.
		writeError(w, http.StatusUnprocessableEntity, apiError{Code: "idempotency_key_reused", Field: "idempotency_key",
			Message: "idempotency_key: already used for another request"})
	default:
		h.a.writeTurnError(w, r, err)
	}
}

// jobStatusOf is the body of GET /v1/jobs/{id} for st.
func jobStatusOf(st queue.Status) jobStatus {
	out := jobStatus{JobID: st.ID, State: st.State, Priority: st.Priority, Attempts: st.Attempts, MaxAttempts: st.MaxAttempts}
	at := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		t = t.UTC()
		return &t
	}
	out.EnqueuedAt, out.NextAttemptAt, out.EndedAt = at(st.EnqueuedAt), at(st.NextAttemptAt), at(st.EndedAt)
	if st.State == queue.StateDone {
		t := result(st.Response, true)
		out.turnResult = &t
	}
	var je *queue.JobError
	if st.State != queue.StateDone && errors.As(st.Err, &je) {
		out.Error = jobErrorOf(je)
	}
	return out
}

// jobErrorOf describes a job's error for the learner.
func jobErrorOf(je *queue.JobError) *jobErrorBody {
	e := &jobErrorBody{Kind: je.Kind, Attempt: je.Attempt, RetryAfterSeconds: seconds(je.RetryAfter)}
	var (
		ve *chat.ValidationError
		ue *chat.UnavailableError
	)
	switch je.Kind {
	case queue.KindInvalid:
		e.Message = "the request cannot be answered"
		if errors.As(je, &ve) {
			e.Field = jsonFields[ve.Field]
			if e.Field == "" {
				e.Field = ve.Field
			}
			e.Message = e.Field + ": " + ve.Reason
		} else if errors.Is(je, chat.ErrTooLarge) {
			e.Message = "the question and its context are too large for the token budget"
		}
	case queue.KindRateLimited:
		e.Message = "the learner's quota of turns was spent"
	case queue.KindUnavailable:
		e.Message = "the tutor was unavailable"
		if errors.As(je, &ue) {
			e.Reason = ue.Reason
		}
	case queue.KindTimeout:
		e.Message = "the turn took too long"
	case queue.KindLeaseExpired:
		e.Message = "the worker running the turn stopped"
	case queue.KindMalformed:
		e.Message = "the job could not be read"
	default:
		e.Message = "the turn failed"
	}
	return e
}
