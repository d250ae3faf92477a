package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/chatscale/chatscale/chat"
)

// routes builds the router.
func (a *App) routes() http.Handler {
	mux := http.NewServeMux()

	// Operations: no authentication.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))

	// The chat page and what it needs before it knows the learner.
	a.pageRoutes(mux)

	// The learner's routes: the learner is who the Authenticator says.
	mux.Handle("POST /v1/chat", a.learner(a.chat))
	mux.Handle("POST /v1/chat/stream", a.learner(a.stream))
	mux.Handle("GET /v1/history", a.learner(a.history))
	mux.Handle("DELETE /v1/me", a.learner(a.forget))

	// The job routes: chat/queue's client and in-process worker, or the
	// program's handlers (Options.Jobs).
	a.jobRoutes(mux)

	return a.admit(a.logRequests(mux))
}

// admit answers 503 once the App drains, except the liveness and metrics
// routes, and counts the requests in flight for Drain.
func (a *App) admit(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/metrics" {
			next.ServeHTTP(w, r)
			return
		}
		if !a.gate.enter() {
			w.Header().Set("Connection", "close")
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, apiError{Code: "shutting_down", Message: "the server is shutting down; retry on another instance"})
			return
		}
		defer a.gate.leave()
		next.ServeHTTP(w, r)
	})
}

// logRequests logs one line per request: method, route pattern, status,
// size and duration; never the body, the query, a token or the learner.
func (a *App) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		level := slog.LevelInfo
		if r.URL.Path == "/healthz" || r.URL.Path == "/metrics" || r.URL.Path == "/readyz" {
			level = slog.LevelDebug
		}
		a.log.LogAttrs(r.Context(), level, "http",
			slog.String("method", r.Method), slog.String("route", r.Pattern),
			slog.Int("status", rec.status), slog.Int64("bytes", rec.bytes),
			slog.Duration("took", time.Since(start)))
	})
}

// recorder remembers a response's status and size. Unwrap lets
// http.ResponseController reach the connection (Flush, deadlines).
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// learnerHandler is a handler that knows the learner.
type learnerHandler func(w http.ResponseWriter, r *http.Request, learner string)

// learner authenticates the request and hands the learner to h; it also
// puts the learner in the request's context (LearnerFrom).
func (a *App) learner(h learnerHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := a.auth.Authenticate(w, r)
		if err != nil || id == "" {
			if a.authTag == "bearer" {
				w.Header().Set("WWW-Authenticate", `Bearer realm="chatscale"`)
			}
			writeError(w, http.StatusUnauthorized, apiError{Code: "unauthenticated", Message: "missing or invalid credentials"})
			return
		}
		h(w, r.WithContext(withLearner(r.Context(), id)), id)
	})
}

// chatRequest is the body of POST /v1/chat and /v1/chat/stream. There is
// no user field: the learner comes from authentication.
type chatRequest struct {
	CourseID        string   `json:"course_id"`
	VideoURL        string   `json:"video_url"`
	Message         string   `json:"message"`
	PositionSeconds *float64 `json:"position_seconds,omitempty"`
}

// usage is a turn's token usage as the upstream reported it.
type usage struct {
	PromptTokens       int `json:"prompt_tokens"`
	CachedPromptTokens int `json:"cached_prompt_tokens"`
	CompletionTokens   int `json:"completion_tokens"`
}

// turnResult is the outcome of a turn: the body of POST /v1/chat, and the
// final "done" event of a stream (without the reply, which came in the
// deltas).
type turnResult struct {
	Reply        string        `json:"reply,omitempty"`
	ThreadID     string        `json:"thread_id"`
	Degraded     bool          `json:"degraded"`
	Reasons      []chat.Reason `json:"reasons,omitempty"`
	Created      bool          `json:"created"`
	VideoChanged bool          `json:"video_changed"`
	Stored       bool          `json:"stored"`
	Usage        usage         `json:"usage"`
}

func result(resp chat.Response, withReply bool) turnResult {
	t := turnResult{
		ThreadID: resp.ThreadID, Degraded: resp.Degraded, Reasons: resp.Reasons,
		Created: resp.Created, VideoChanged: resp.VideoChanged, Stored: resp.Stored,
		Usage: usage{resp.Usage.PromptTokens, resp.Usage.CachedPromptTokens, resp.Usage.CompletionTokens},
	}
	if withReply {
		t.Reply = resp.Reply
	}
	return t
}

// turnRequest reads and checks the body of a chat request. On failure it
// has answered.
func turnRequest(w http.ResponseWriter, r *http.Request, learner string) (chat.Request, bool) {
	var body chatRequest
	if !decodeJSON(w, r, &body) {
		return chat.Request{}, false
	}
	return body.request(w, learner)
}

// request is the learner's turn the body asks for. A position that is
// not one is answered 400 (the Service checks the rest).
func (body chatRequest) request(w http.ResponseWriter, learner string) (chat.Request, bool) {
	req := chat.Request{UserID: learner, CourseID: body.CourseID, VideoURL: body.VideoURL, Message: body.Message}
	if p := body.PositionSeconds; p != nil {
		if math.IsNaN(*p) || math.IsInf(*p, 0) || *p > 1e6 {
			writeError(w, http.StatusBadRequest, apiError{Code: "invalid_request", Field: "position_seconds", Message: "position_seconds: not a playback position"})
			return chat.Request{}, false
		}
		req.Position, req.HasPosition = time.Duration(*p*float64(time.Second)), true
	}
	return req, true
}

// chat serves POST /v1/chat: one turn, JSON in and out.
func (a *App) chat(w http.ResponseWriter, r *http.Request, learner string) {
	req, ok := turnRequest(w, r, learner)
	if !ok {
		return
	}
	resp, err := a.svc.Ask(r.Context(), req)
	if err != nil {
		a.writeTurnError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, result(resp, true))
}

// stream serves POST /v1/chat/stream: one turn as Server-Sent Events, an
// "delta" event per piece of the reply ({"text": ...}), then a "done"
// event (a turnResult without the reply), or an "error" event when the
// turn fails after the reply began. A turn refused before its first
// piece is answered with an HTTP status and a JSON body, as POST /v1/chat.
func (a *App) stream(w http.ResponseWriter, r *http.Request, learner string) {
	req, ok := turnRequest(w, r, learner)
	if !ok {
		return
	}
	rc := http.NewResponseController(w)
	started := false
	begin := func() {
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
		started = true
	}
	send := func(event string, v any) error {
		_ = rc.SetWriteDeadline(time.Now().Add(WriteTimeout))
		if err := writeEvent(w, event, v); err != nil {
			return errClientGone
		}
		if err := rc.Flush(); err != nil {
			return errClientGone
		}
		return nil
	}
	resp, err := a.svc.Stream(r.Context(), req, func(delta string) error {
		if !started {
			begin()
		}
		return send("delta", map[string]string{"text": delta})
	})
	switch {
	case err != nil && !started:
		a.writeTurnError(w, r, err)
	case err != nil:
		status, body := a.errorBody(r, err)
		if status != 0 {
			_ = send("error", body)
		}
	default:
		if !started {
			begin()
		}
		_ = send("done", result(resp, false))
	}
}

// errClientGone is what a stream's onDelta returns when the client can no
// longer be written to: the Service stops the upstream call, stores
// nothing, and counts the turn as cancelled.
var errClientGone = fmt.Errorf("the client went away: %w", context.Canceled)

func writeEvent(w io.Writer, event string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
	return err
}

// historyMessage is one message of GET /v1/history.
type historyMessage struct {
	Role    string    `json:"role"`
	Content string    `json:"content"`
	Time    time.Time `json:"time"`
}

// history serves GET /v1/history?course_id=…[&limit=n]: the learner's
// thread for the course, oldest first.
func (a *App) history(w http.ResponseWriter, r *http.Request, learner string) {
	q := r.URL.Query()
	limit := 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, apiError{Code: "invalid_request", Field: "limit", Message: "limit: not a whole number of at least 0"})
			return
		}
		limit = n
	}
	course := q.Get("course_id")
	msgs, err := a.svc.History(r.Context(), learner, course, limit)
	if err != nil {
		a.writeTurnError(w, r, err)
		return
	}
	out := make([]historyMessage, len(msgs))
	for i, m := range msgs {
		out[i] = historyMessage{Role: string(m.Role), Content: m.Content, Time: m.Time}
	}
	writeJSON(w, http.StatusOK, map[string]any{"course_id": course, "messages": out})
}

// forget serves DELETE /v1/me: every thread of the learner is deleted
// (the right to erasure).
func (a *App) forget(w http.ResponseWriter, r *http.Request, learner string) {
	n, err := a.svc.Forget(r.Context(), learner)
	if err != nil {
		a.writeTurnError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"deleted_threads": n})
}

// readyz serves GET /readyz: 200 when Redis (and MongoDB, when
// configured) answer, else 503 naming the one that does not.
func (a *App) readyz(w http.ResponseWriter, r *http.Request) {
	checks, ok := a.Ready(r.Context())
	if !ok {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "checks": checks})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "checks": checks})
}
