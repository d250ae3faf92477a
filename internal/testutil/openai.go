package testutil

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sashabaranov/go-openai"
)

// OpenAIConfig tunes a FakeOpenAI. The zero value answers every request at
// once with a deterministic reply and no limits.
type OpenAIConfig struct {
	// Latency delays every answer (before the first byte). Zero means none.
	Latency time.Duration
	// ChunkDelay separates the chunks of a streamed answer. Zero means none.
	ChunkDelay time.Duration
	// RPM and TPM are the fake's own request and token budgets per Window;
	// a request over either is answered 429 with Retry-After,
	// retry-after-ms and x-ratelimit-* headers. Zero means unlimited.
	RPM, TPM int
	// Window is the period of RPM and TPM. Zero means one minute.
	Window time.Duration
	// ErrorRate is the share of requests answered 500 at random (0..1).
	ErrorRate float64
	// HangRate is the share of requests that never answer, until the
	// client goes away or the server is closed (0..1).
	HangRate float64
	// Seed seeds the random choices of ErrorRate and HangRate.
	Seed uint64
}

// FakeStep scripts the answer to one request. The zero FakeStep is a
// normal reply.
type FakeStep struct {
	// Status, when non-zero, answers with this HTTP status and an
	// OpenAI-style error body.
	Status int
	// Code is the error code in the body (e.g. "insufficient_quota");
	// empty means one derived from Status.
	Code string
	// RetryAfter, when positive, is sent as Retry-After (whole seconds,
	// rounded up) and retry-after-ms.
	RetryAfter time.Duration
	// Hang makes the request wait, without answering, until the client
	// goes away or the server is closed.
	Hang bool
	// StallStream, for a streamed request, sends the response headers and
	// then hangs before the first byte of the body.
	StallStream bool
	// CutAfter, for a streamed request, sends that many chunks and then
	// breaks the connection. Zero means no cut.
	CutAfter int
	// StreamError, for a streamed request, sends the response headers and
	// then, before any chunk, an in-stream error event (data: {"error":
	// ...}) and ends the stream, as OpenAI does when a stream fails after
	// it was accepted.
	StreamError bool
}

// FakeEvent records one request the fake received.
type FakeEvent struct {
	// Seq numbers requests from 1 in arrival order.
	Seq int
	// Arrived is when the handler started; Released is when it finished
	// writing (zero while in flight).
	Arrived, Released time.Time
	// Status is the HTTP status answered (0 when the request hung).
	Status int
	// Stream reports whether the request asked for a stream.
	Stream bool
	// Request is the decoded body.
	Request openai.ChatCompletionRequest
}

// FakeOpenAI is an OpenAI Chat Completions server on 127.0.0.1 for tests.
// Its replies reveal what was sent: the content is
// `reply to "<last user message>" (model M, N messages, max_tokens K)`.
// A unary reply carries its usage; a streamed reply carries it, as
// OpenAI's does, only when the request set stream_options.include_usage:
// then every chunk has "usage": null and one last chunk, with no choices,
// has the usage. It is safe for concurrent use.
type FakeOpenAI struct {
	// URL is the base URL to give go-openai (it ends with /v1).
	URL string

	cfg    OpenAIConfig
	srv    *httptest.Server
	closed chan struct{}
	once   sync.Once

	mu          sync.Mutex
	rng         *rand.Rand
	script      []FakeStep
	always      *FakeStep
	events      []*FakeEvent
	accepted    []acceptedReq // within the budget window, for RPM/TPM
	inFlight    int
	maxInFlight int
	arrived     chan struct{} // closed and replaced at each arrival
}

type acceptedReq struct {
	at     time.Time
	tokens int
}

// OpenAI starts a FakeOpenAI for the test and closes it at cleanup.
func OpenAI(t testing.TB, cfg OpenAIConfig) *FakeOpenAI {
	t.Helper()
	f := NewFakeOpenAI(cfg)
	t.Cleanup(f.Close)
	return f
}

// NewFakeOpenAI starts a FakeOpenAI. Callers must Close it.
func NewFakeOpenAI(cfg OpenAIConfig) *FakeOpenAI {
	if cfg.Window <= 0 {
		cfg.Window = time.Minute
	}
	f := &FakeOpenAI{
		cfg:     cfg,
		closed:  make(chan struct{}),
		rng:     rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		arrived: make(chan struct{}),
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	f.URL = f.srv.URL + "/v1"
	return f
}

// Close ends hung requests and stops the server. It is idempotent.
func (f *FakeOpenAI) Close() {
	f.once.Do(func() {
		close(f.closed)
		f.srv.CloseClientConnections()
		f.srv.Close()
	})
}

// Script queues answers for the next requests, in arrival order; requests
// beyond the script get the Always step, or a normal reply.
func (f *FakeOpenAI) Script(steps ...FakeStep) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.script = append(f.script, steps...)
}

// Always sets the answer for every request not covered by Script (nil:
// normal replies), e.g. a 503 for a full outage.
func (f *FakeOpenAI) Always(step *FakeStep) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.always = step
}

// Requests returns how many requests arrived.
func (f *FakeOpenAI) Requests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.events)
}

// MaxInFlight returns the largest number of requests that were being
// handled at the same time.
func (f *FakeOpenAI) MaxInFlight() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.maxInFlight
}

// InFlight returns how many requests are being handled now.
func (f *FakeOpenAI) InFlight() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inFlight
}

// Events returns a copy of the requests received so far, in arrival order.
func (f *FakeOpenAI) Events() []FakeEvent {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]FakeEvent, len(f.events))
	for i, e := range f.events {
		out[i] = *e
	}
	return out
}

// RequestsWithin returns how many requests arrived during the last d.
func (f *FakeOpenAI) RequestsWithin(d time.Duration) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	from := time.Now().Add(-d)
	n := 0
	for _, e := range f.events {
		if !e.Arrived.Before(from) {
			n++
		}
	}
	return n
}

// MaxRequestsPerWindow returns the largest number of requests that arrived
// within any sliding window of length d.
func (f *FakeOpenAI) MaxRequestsPerWindow(d time.Duration) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	best, lo := 0, 0
	for hi, e := range f.events {
		for e.Arrived.Sub(f.events[lo].Arrived) >= d {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}

// WaitRequests blocks until at least n requests have arrived, or ctx ends.
func (f *FakeOpenAI) WaitRequests(ctx context.Context, n int) error {
	for {
		f.mu.Lock()
		got, ch := len(f.events), f.arrived
		f.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("testutil: %d of %d requests arrived: %w", got, n, ctx.Err())
		case <-f.closed:
			return fmt.Errorf("testutil: fake OpenAI closed after %d of %d requests", got, n)
		}
	}
}

func (f *FakeOpenAI) serve(w http.ResponseWriter, r *http.Request) {
	var req openai.ChatCompletionRequest
	decodeErr := json.NewDecoder(r.Body).Decode(&req)

	f.mu.Lock()
	ev := &FakeEvent{Seq: len(f.events) + 1, Arrived: time.Now(), Stream: req.Stream, Request: req}
	f.events = append(f.events, ev)
	close(f.arrived)
	f.arrived = make(chan struct{})
	f.inFlight++
	f.maxInFlight = max(f.maxInFlight, f.inFlight)
	step := f.nextStepLocked()
	f.mu.Unlock()

	status := 0
	defer func() {
		f.mu.Lock()
		f.inFlight--
		ev.Status = status
		ev.Released = time.Now()
		f.mu.Unlock()
	}()

	switch {
	case r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/chat/completions"):
		status = http.StatusNotFound
		writeError(w, status, "not_found", 0)
		return
	case decodeErr != nil:
		status = http.StatusBadRequest
		writeError(w, status, "invalid_request_error", 0)
		return
	}

	if !f.wait(r.Context(), f.cfg.Latency) {
		return
	}
	if step.Hang {
		f.hang(r.Context())
		return
	}
	if step.Status != 0 {
		status = step.Status
		code := step.Code
		if code == "" {
			code = codeFor(status)
		}
		writeError(w, status, code, step.RetryAfter)
		return
	}

	tokens := promptTokens(req) + maxTokens(req)
	h, retry, ok := f.admit(tokens)
	for k, v := range h {
		w.Header()[k] = v
	}
	if !ok {
		status = http.StatusTooManyRequests
		writeError(w, status, "rate_limit_exceeded", retry)
		return
	}

	reply := Reply(req)
	if !req.Stream {
		status = http.StatusOK
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(openai.ChatCompletionResponse{
			ID: fmt.Sprintf("chatcmpl-fake-%d", ev.Seq), Object: "chat.completion",
			Created: ev.Arrived.Unix(), Model: req.Model,
			Choices: []openai.ChatCompletionChoice{{
				Message:      openai.ChatCompletionMessage{Role: openai.ChatMessageRoleAssistant, Content: reply},
				FinishReason: openai.FinishReasonStop,
			}},
			Usage: usage(req, reply),
		})
		return
	}
	status = http.StatusOK
	f.stream(r.Context(), w, ev.Seq, req, reply, step)
}

// nextStepLocked pops the script, or draws from the rates.
func (f *FakeOpenAI) nextStepLocked() FakeStep {
	if len(f.script) > 0 {
		s := f.script[0]
		f.script = f.script[1:]
		return s
	}
	if f.always != nil {
		return *f.always
	}
	if f.cfg.HangRate > 0 && f.rng.Float64() < f.cfg.HangRate {
		return FakeStep{Hang: true}
	}
	if f.cfg.ErrorRate > 0 && f.rng.Float64() < f.cfg.ErrorRate {
		return FakeStep{Status: http.StatusInternalServerError}
	}
	return FakeStep{}
}

// admit applies RPM and TPM over a sliding window and returns the
// x-ratelimit-* headers, the Retry-After of a refusal, and whether the
// request fits.
func (f *FakeOpenAI) admit(tokens int) (http.Header, time.Duration, bool) {
	h := http.Header{}
	if f.cfg.RPM <= 0 && f.cfg.TPM <= 0 {
		return h, 0, true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	from := now.Add(-f.cfg.Window)
	i := 0
	for i < len(f.accepted) && !f.accepted[i].at.After(from) {
		i++
	}
	f.accepted = f.accepted[i:]
	usedTok := 0
	for _, a := range f.accepted {
		usedTok += a.tokens
	}
	reqOK := f.cfg.RPM <= 0 || len(f.accepted)+1 <= f.cfg.RPM
	tokOK := f.cfg.TPM <= 0 || usedTok+tokens <= f.cfg.TPM
	ok := reqOK && tokOK
	if ok {
		f.accepted = append(f.accepted, acceptedReq{at: now, tokens: tokens})
		usedTok += tokens
	}
	// The budget is full again when the oldest accepted request leaves
	// the window.
	var reset time.Duration
	if len(f.accepted) > 0 {
		reset = f.accepted[0].at.Add(f.cfg.Window).Sub(now)
	}
	if f.cfg.RPM > 0 {
		h.Set("X-Ratelimit-Limit-Requests", strconv.Itoa(f.cfg.RPM))
		h.Set("X-Ratelimit-Remaining-Requests", strconv.Itoa(max(0, f.cfg.RPM-len(f.accepted))))
		h.Set("X-Ratelimit-Reset-Requests", reset.String())
	}
	if f.cfg.TPM > 0 {
		h.Set("X-Ratelimit-Limit-Tokens", strconv.Itoa(f.cfg.TPM))
		h.Set("X-Ratelimit-Remaining-Tokens", strconv.Itoa(max(0, f.cfg.TPM-usedTok)))
		h.Set("X-Ratelimit-Reset-Tokens", reset.String())
	}
	return h, max(reset, time.Millisecond), ok
}

func (f *FakeOpenAI) stream(ctx context.Context, w http.ResponseWriter, seq int, req openai.ChatCompletionRequest, reply string, step FakeStep) {
	fl, _ := w.(http.Flusher)
	flush := func() {
		if fl != nil {
			fl.Flush()
		}
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	flush()
	if step.StallStream {
		f.hang(ctx)
		return
	}
	if step.StreamError {
		_, _ = fmt.Fprint(w, `data: {"error":{"message":"fake: stream failed","type":"server_error","code":"server_error"}}`+"\n\n")
		flush()
		return
	}
	withUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	send := func(chunk openai.ChatCompletionStreamResponse) bool {
		var b []byte
		if withUsage {
			// OpenAI sends "usage": null in every chunk but the last.
			b, _ = json.Marshal(struct {
				openai.ChatCompletionStreamResponse
				Usage *openai.Usage `json:"usage"`
			}{chunk, chunk.Usage})
		} else {
			b, _ = json.Marshal(chunk)
		}
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return false
		}
		flush()
		return true
	}
	id := fmt.Sprintf("chatcmpl-fake-%d", seq)
	words := strings.SplitAfter(reply, " ")
	for i, word := range words {
		if step.CutAfter > 0 && i == step.CutAfter {
			panic(http.ErrAbortHandler) // drops the connection mid-stream
		}
		if i > 0 && !f.wait(ctx, f.cfg.ChunkDelay) {
			return
		}
		chunk := openai.ChatCompletionStreamResponse{
			ID: id, Object: "chat.completion.chunk", Model: req.Model,
			Choices: []openai.ChatCompletionStreamChoice{{Delta: openai.ChatCompletionStreamChoiceDelta{Content: word}}},
		}
		if i == len(words)-1 {
			chunk.Choices[0].FinishReason = openai.FinishReasonStop
		}
		if !send(chunk) {
			return
		}
	}
	if withUsage {
		u := usage(req, reply)
		if !send(openai.ChatCompletionStreamResponse{
			ID: id, Object: "chat.completion.chunk", Model: req.Model,
			Choices: []openai.ChatCompletionStreamChoice{}, Usage: &u,
		}) {
			return
		}
	}
	_, _ = fmt.Fprint(w, "data: [DONE]\n\n")
	flush()
}

// wait waits d, and reports false when the client left or the server closed.
func (f *FakeOpenAI) wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-f.closed:
		return false
	}
}

func (f *FakeOpenAI) hang(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-f.closed:
	}
}

// Reply returns the content the fake answers to req.
func Reply(req openai.ChatCompletionRequest) string {
	last := ""
	for _, m := range req.Messages {
		if m.Role == openai.ChatMessageRoleUser {
			last = m.Content
		}
	}
	return fmt.Sprintf("reply to %q (model %s, %d messages, max_tokens %d)",
		last, req.Model, len(req.Messages), maxTokens(req))
}

// maxTokens is the reply cap of req, under either field name.
func maxTokens(req openai.ChatCompletionRequest) int {
	//lint:ignore SA1019 clients of OpenAI-compatible servers still send max_tokens.
	return max(req.MaxTokens, req.MaxCompletionTokens)
}

// promptTokens is the fake's token count: one per 4 bytes of content, plus
// 4 per message.
func promptTokens(req openai.ChatCompletionRequest) int {
	n := 0
	for _, m := range req.Messages {
		n += 4 + (len(m.Content)+3)/4
	}
	return n
}

func usage(req openai.ChatCompletionRequest, reply string) openai.Usage {
	p, c := promptTokens(req), len(strings.Fields(reply))
	return openai.Usage{PromptTokens: p, CompletionTokens: c, TotalTokens: p + c}
}

func codeFor(status int) string {
	switch {
	case status == http.StatusTooManyRequests:
		return "rate_limit_exceeded"
	case status >= 500:
		return "server_error"
	default:
		return "invalid_request_error"
	}
}

func writeError(w http.ResponseWriter, status int, code string, retryAfter time.Duration) {
	if retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(retryAfter.Seconds()))))
		w.Header().Set("Retry-After-Ms", strconv.FormatInt(retryAfter.Milliseconds(), 10))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	typ := "invalid_request_error"
	if status >= 500 {
		typ = "server_error"
	} else if code == "insufficient_quota" {
		typ = "insufficient_quota"
	} else if status == http.StatusTooManyRequests {
		typ = "requests"
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"message": fmt.Sprintf("fake: status %d", status), "type": typ, "code": code,
	}})
}
