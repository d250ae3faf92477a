package chat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/chatscale/chatscale/chat/prompt"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/internal/prom"
	"github.com/chatscale/chatscale/ratelimit"
	"github.com/chatscale/chatscale/threads"
)

// Transcripts is where a Service gets a video's transcript.
// *contextcache.Cache satisfies it; tests and hosts can supply their own.
// Get returns an error wrapping contextcache.ErrNotFound when the video
// has no transcript, and one wrapping contextcache.ErrUnavailable when it
// cannot be loaded now; a Result with Stale set is an expired copy served
// because the source failed.
type Transcripts interface {
	Get(ctx context.Context, courseID, videoURL string) (contextcache.Result, error)
}

var _ Transcripts = (*contextcache.Cache)(nil)

// Defaults of ServiceConfig.
const (
	// DefaultContextWindow is the default ServiceConfig.ContextWindow:
	// the context window of gpt-4o-mini, in tokens.
	DefaultContextWindow = 128_000
	// DefaultMaxReplyTokens is the default ServiceConfig.MaxReplyTokens.
	DefaultMaxReplyTokens = 1024
	// DefaultTranscriptTokens is the default ServiceConfig.TranscriptTokens:
	// about 20 minutes of speech.
	DefaultTranscriptTokens = 6000
	// DefaultHistoryTokens is the default ServiceConfig.HistoryTokens.
	DefaultHistoryTokens = 3000
	// DefaultHistoryMessages is the default ServiceConfig.HistoryMessages.
	DefaultHistoryMessages = 20
	// DefaultMaxMessageBytes is the default ServiceConfig.MaxMessageBytes.
	DefaultMaxMessageBytes = 8 << 10
	// DefaultMaxMessageTokens is the default ServiceConfig.MaxMessageTokens.
	DefaultMaxMessageTokens = 2000
	// DefaultTurnTimeout is the default ServiceConfig.TurnTimeout.
	DefaultTurnTimeout = 60 * time.Second
	// DefaultActiveWithin is the default ServiceConfig.ActiveWithin.
	DefaultActiveWithin = 15 * time.Minute
	// DefaultActiveEvery is the default ServiceConfig.ActiveEvery.
	DefaultActiveEvery = 15 * time.Second
)

// DefaultSystemPrompt is the system prompt template used when
// ServiceConfig.SystemPrompt is empty. The transcript follows it in a
// message of its own.
const DefaultSystemPrompt = `You are a patient tutor for the course {{.CourseID}}.` +
	`{{if .Title}} The learner is watching the video "{{.Title}}".{{end}}` +
	` Answer the learner's questions about it clearly and briefly, using the video's transcript, which follows, when it helps.` +
	` If the transcript does not cover a question, say so and answer from general knowledge.`

// PromptData is what the system prompt template receives.
type PromptData struct {
	// CourseID and VideoURL are the turn's.
	CourseID, VideoURL string
	// Title is the video's title from its transcript document; empty when
	// unknown.
	Title string
	// Position is the learner's playback position when HasPosition.
	Position    time.Duration
	HasPosition bool
}

// ServiceConfig configures a Service. Threads, Transcripts, Completer and
// Model are required; every other field has a default.
type ServiceConfig struct {
	// Threads keeps the conversations. Required.
	Threads threads.Store
	// Transcripts gives each video's transcript, usually a
	// *contextcache.Cache. Required.
	Transcripts Transcripts
	// Completer answers, usually a *Client (which brings the shared
	// budgets, the breaker, the retries and the fallback). Required.
	Completer Completer
	// Model is the model name sent upstream. Required.
	Model string

	// SystemPrompt is a text/template executed with a PromptData: the
	// first message of every prompt. Empty means DefaultSystemPrompt. It
	// is rendered once per (course, video, title) and cached; a template
	// that uses Position is rendered every turn, and then the prompt's
	// prefix changes whenever the position does, which defeats the
	// upstream's prompt caching (the Service already tells the model the
	// position in a short note after the history).
	SystemPrompt string
	// Tokenizer counts tokens for the budgets below. Nil means
	// prompt.ForModel(Model): tiktoken for OpenAI models, an estimate for
	// others.
	Tokenizer prompt.Tokenizer

	// ContextWindow is the model's context window in tokens: prompt plus
	// reply never exceed it. Zero means DefaultContextWindow.
	ContextWindow int
	// MaxReplyTokens is the reply's maximum (max_completion_tokens).
	// Zero means DefaultMaxReplyTokens.
	MaxReplyTokens int
	// TranscriptTokens bounds the transcript excerpt. Zero means
	// DefaultTranscriptTokens; negative sends no transcript.
	TranscriptTokens int
	// HistoryTokens bounds the history sent: the newest messages that fit.
	// Zero means DefaultHistoryTokens; negative sends no history.
	HistoryTokens int
	// HistoryMessages is how many of the newest messages are read from
	// the store each turn (the store may keep more). Zero means
	// DefaultHistoryMessages.
	HistoryMessages int
	// Chunk is the granularity of transcript windows around the learner's
	// position (see prompt.Transcript.Window). Zero means
	// prompt.DefaultChunk.
	Chunk time.Duration
	// MaxMessageBytes bounds Request.Message. Zero means
	// DefaultMaxMessageBytes.
	MaxMessageBytes int
	// MaxMessageTokens bounds Request.Message in tokens. Zero means
	// DefaultMaxMessageTokens.
	MaxMessageTokens int
	// TurnTimeout bounds a turn when ctx has no earlier deadline. Zero
	// means DefaultTurnTimeout; negative means no bound besides ctx.
	TurnTimeout time.Duration

	// UserRequests, when set, is a per-learner quota of turns: each turn
	// costs 1 from the key Request.UserID.
	UserRequests ratelimit.Limiter
	// UserTokens, when set, is a per-learner quota of tokens: each turn
	// reserves its prompt plus MaxReplyTokens from the key
	// Request.UserID, settled to the reported usage when the Completer is
	// a *Client. A turn over either quota returns a *RateLimitError.
	UserTokens ratelimit.Limiter

	// AnswerWithoutThread answers a turn whose thread store fails without
	// history (Response.Degraded with ReasonThreadsDown; nothing is
	// stored). False returns an *UnavailableError with ReasonThreadsDown.
	AnswerWithoutThread bool
	// AnswerWithoutTranscript answers a turn whose transcript is missing
	// or cannot be loaded (with no cached copy) without it
	// (Response.Degraded with ReasonNoTranscript or ReasonTranscriptDown).
	// False returns an *UnavailableError with that reason, which unwraps
	// to the Transcripts error (contextcache.ErrNotFound for a missing
	// transcript).
	AnswerWithoutTranscript bool

	// Answers configures the answer cache: a course's learners asking the
	// same first question about a video share one upstream call (see the
	// package documentation, "Answer cache"). The zero value (Courses
	// nil) turns it off.
	Answers AnswersConfig

	// Registerer receives the metrics; nil means none. See Service.
	Registerer prometheus.Registerer
	// Namespace starts the metric names. Empty means "ai_chat".
	Namespace string
	// ConstLabels are added to every series.
	ConstLabels prometheus.Labels
	// ActiveWithin is the window of the active-threads gauge: threads
	// written to within it. Zero means DefaultActiveWithin.
	ActiveWithin time.Duration
	// ActiveEvery is how often the active-threads gauge is refreshed
	// from the store, in the background, when it is scraped. Zero means
	// DefaultActiveEvery.
	ActiveEvery time.Duration

	// TracerProvider, when set, gets a span per turn with children for
	// the transcript, the thread, the upstream call (and, through a
	// *Client, its budget wait and attempts) and the append. Nil means no
	// tracing.
	TracerProvider trace.TracerProvider
	// Logger gets one line per turn (no message text, no secrets) and
	// warnings. Nil means discard.
	Logger *slog.Logger
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

func (c ServiceConfig) withDefaults() (ServiceConfig, error) {
	var err error
	switch {
	case c.Threads == nil:
		return c, configError("ServiceConfig.Threads", "nil")
	case c.Transcripts == nil:
		return c, configError("ServiceConfig.Transcripts", "nil")
	case c.Completer == nil:
		return c, configError("ServiceConfig.Completer", "nil")
	case strings.TrimSpace(c.Model) == "":
		return c, configError("ServiceConfig.Model", "empty")
	}
	defInt := func(p *int, d int) {
		if *p == 0 {
			*p = d
		}
	}
	defInt(&c.ContextWindow, DefaultContextWindow)
	defInt(&c.MaxReplyTokens, DefaultMaxReplyTokens)
	defInt(&c.TranscriptTokens, DefaultTranscriptTokens)
	defInt(&c.HistoryTokens, DefaultHistoryTokens)
	defInt(&c.HistoryMessages, DefaultHistoryMessages)
	defInt(&c.MaxMessageBytes, DefaultMaxMessageBytes)
	defInt(&c.MaxMessageTokens, DefaultMaxMessageTokens)
	if c.Chunk == 0 {
		c.Chunk = prompt.DefaultChunk
	}
	if c.TurnTimeout == 0 {
		c.TurnTimeout = DefaultTurnTimeout
	}
	if c.ActiveWithin == 0 {
		c.ActiveWithin = DefaultActiveWithin
	}
	if c.ActiveEvery == 0 {
		c.ActiveEvery = DefaultActiveEvery
	}
	if c.SystemPrompt == "" {
		c.SystemPrompt = DefaultSystemPrompt
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	for _, f := range [...]struct {
		field string
		v     int
	}{
		{"ServiceConfig.ContextWindow", c.ContextWindow}, {"ServiceConfig.MaxReplyTokens", c.MaxReplyTokens},
		{"ServiceConfig.HistoryMessages", c.HistoryMessages}, {"ServiceConfig.MaxMessageBytes", c.MaxMessageBytes},
		{"ServiceConfig.MaxMessageTokens", c.MaxMessageTokens},
	} {
		if f.v < 0 {
			return c, configError(f.field, fmt.Sprintf("%d: negative", f.v))
		}
	}
	for _, f := range [...]struct {
		field string
		v     time.Duration
	}{
		{"ServiceConfig.Chunk", c.Chunk}, {"ServiceConfig.ActiveWithin", c.ActiveWithin},
		{"ServiceConfig.ActiveEvery", c.ActiveEvery},
	} {
		if f.v < 0 {
			return c, configError(f.field, f.v.String()+": negative")
		}
	}
	if c.MaxReplyTokens >= c.ContextWindow {
		return c, configError("ServiceConfig.MaxReplyTokens",
			fmt.Sprintf("%d: leaves no room for a prompt in ContextWindow %d", c.MaxReplyTokens, c.ContextWindow))
	}
	if c.MaxMessageBytes > threads.MaxContentBytes {
		return c, configError("ServiceConfig.MaxMessageBytes",
			fmt.Sprintf("%d: over what a thread can store (%d)", c.MaxMessageBytes, threads.MaxContentBytes))
	}
	if c.Answers.Courses != nil {
		if c.Answers, err = c.Answers.withDefaults(); err != nil {
			return c, err
		}
	}
	if err := prom.CheckLabels("chat", c.ConstLabels, "status", "tier", "kind", "reason"); err != nil {
		return c, err
	}
	return c, nil
}

// Service runs tutor turns: for a learner's question about the video they
// watch, it opens the learner's thread for the course (noticing a video
// switch), takes the video's transcript, builds a prompt within the token
// budgets, asks the Completer and stores the exchange. See Ask for the
// steps, what each costs and what happens when a part fails.
//
// A Service is safe for concurrent use. It owns none of the parts it is
// given: Close stops the Service, not the store, the cache or the client.
//
// # Metrics
//
// With ServiceConfig.Registerer, a Service registers, under
// ServiceConfig.Namespace (default "ai_chat") and with
// ServiceConfig.ConstLabels:
//
//	ai_chat_requests_total{status}           turns by status: ok, degraded, invalid, rate_limited, unavailable, canceled, error
//	ai_chat_request_duration_seconds         histogram of turn durations (buckets .1 .5 1 2 5 10)
//	ai_chat_active_threads                   threads written to within ActiveWithin (the store's Active count)
//	ai_chat_transcripts_total{tier}          transcripts by where they came from: l1, l2, source, stale, missing, unavailable
//	ai_chat_tokens_total{kind}               tokens the upstream reported: prompt, cached_prompt, completion
//	ai_chat_degraded_total{reason}           degraded turns by Reason (a turn can count under several)
//
// and, with the answer cache on (ServiceConfig.Answers):
//
//	ai_chat_answer_cache_hits_total{tier}          turns answered from the cache: l1 (this process), l2 (Redis)
//	ai_chat_answer_cache_misses_total              turns that looked the cache up and asked the upstream
//	ai_chat_answer_cache_saved_tokens_total{kind}  tokens the hits did not spend: prompt, completion (as the call that made the answer reported them)
//	ai_chat_answer_cache_redis_errors_total        failed Redis calls of the cache (the turns go on without it)
//
// These names carry no component part: they are the turn's, named as the
// rest of the library's metrics refer to them. The active-threads gauge
// costs no request anything: it is read from the store in the background,
// at most every ActiveEvery, when the registry is scraped.
type Service struct {
	cfg     ServiceConfig
	tok     prompt.Tokenizer
	tpl     *template.Template
	usesPos bool
	scripts *prompt.Transcripts
	systems systemCache
	tracer  trace.Tracer
	metrics *serviceMetrics
	log     *slog.Logger
	quota   bool         // the Completer is a *Client: it spends the per-learner quota
	answers *answerCache // nil when ServiceConfig.Answers is off

	mu      sync.Mutex
	closed  bool
	turns   sync.WaitGroup
	stopped chan struct{}
}

// NewService checks cfg and returns a Service. It does no I/O and starts
// no goroutine. A missing required part or an impossible value is a
// *chatscale.ConfigError; a SystemPrompt that does not parse or execute
// is one too.
func NewService(cfg ServiceConfig) (*Service, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	tpl, err := template.New("system").Option("missingkey=error").Parse(cfg.SystemPrompt)
	if err != nil {
		return nil, configError("ServiceConfig.SystemPrompt", err.Error())
	}
	// Render with two positions: a template whose output does not change
	// is rendered once per video.
	render := func(d PromptData) (string, error) {
		var b strings.Builder
		err := tpl.Execute(&b, d)
		return b.String(), err
	}
	a, err := render(PromptData{CourseID: "c", VideoURL: "v", Title: "t", Position: time.Second, HasPosition: true})
	if err != nil {
		return nil, configError("ServiceConfig.SystemPrompt", err.Error())
	}
	b, err := render(PromptData{CourseID: "c", VideoURL: "v", Title: "t", Position: 97 * time.Minute})
	if err != nil {
		return nil, configError("ServiceConfig.SystemPrompt", err.Error())
	}
	tok := cfg.Tokenizer
	if tok == nil {
		tok, err = prompt.ForModel(cfg.Model)
		if err != nil {
			cfg.Logger.Warn("chat: tokenizer unavailable, estimating tokens", "model", cfg.Model, "err", err)
		}
	}
	tok = prompt.Cached(tok, 1<<16)
	s := &Service{
		cfg:     cfg,
		tok:     tok,
		tpl:     tpl,
		usesPos: a != b,
		scripts: prompt.NewTranscripts(tok, cfg.Chunk, 0),
		log:     cfg.Logger,
		stopped: make(chan struct{}),
	}
	_, s.quota = cfg.Completer.(*Client)
	if cfg.TracerProvider != nil {
		s.tracer = cfg.TracerProvider.Tracer("github.com/chatscale/chatscale/chat")
	} else {
		s.tracer = noop.NewTracerProvider().Tracer("")
	}
	if cfg.Answers.Courses != nil {
		if s.answers, err = newAnswerCache(cfg.Answers, cfg.Now, cfg.Logger); err != nil {
			return nil, err
		}
	}
	s.metrics, err = newServiceMetrics(prom.Opts{Registerer: cfg.Registerer, Namespace: cfg.Namespace, ConstLabels: cfg.ConstLabels}, s)
	if err != nil {
		s.answers.close()
		return nil, err
	}
	if s.answers != nil {
		s.answers.onRedisError = s.metrics.answerRedisError
	}
	return s, nil
}

// enter admits a turn unless the Service is closed.
func (s *Service) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.turns.Add(1)
	return true
}

// Close stops admitting turns (they get ErrClosed), waits for the turns in
// flight and the background refresh of the active-threads gauge until ctx
// ends, and unregisters the metrics. It returns ctx's error when the wait
// was cut short. Close is idempotent; it closes none of the parts the
// Service was given.
func (s *Service) Close(ctx context.Context) error {
	s.mu.Lock()
	first := !s.closed
	s.closed = true
	s.mu.Unlock()
	if first {
		go func() {
			s.turns.Wait()
			s.metrics.wait()
			s.answers.close()
			close(s.stopped)
		}()
	}
	select {
	case <-s.stopped:
		if first {
			s.metrics.unregister()
		}
		return nil
	case <-ctx.Done():
		if first {
			s.metrics.unregister()
		}
		return ctx.Err()
	}
}

// invalidField returns the *ValidationError of a Request field.
func invalidField(field, reason string) error {
	return &ValidationError{Field: field, Reason: reason}
}

// HistoryMessage is one message of a learner's thread, as History returns
// it.
type HistoryMessage struct {
	// Role is "user" or "assistant" (or "system").
	Role threads.Role
	// Content is the text.
	Content string
	// Time is when it was written.
	Time time.Time
}

// History returns the newest messages of userID's thread for courseID,
// oldest first: limit > 0 returns at most limit, zero every kept message.
// A learner without a thread gets an empty history. It writes nothing
// when the Store is a threads.Finder (both of the library's are); with
// another Store, the learner's empty thread is created, as their first
// turn would.
// IDs are checked as Ask checks them (a *ValidationError); a store that
// fails gives an *UnavailableError with ReasonThreadsDown.
func (s *Service) History(ctx context.Context, userID, courseID string, limit int) ([]HistoryMessage, error) {
	if err := checkID("UserID", userID); err != nil {
		return nil, err
	}
	if err := checkID("CourseID", courseID); err != nil {
		return nil, err
	}
	if limit < 0 {
		return nil, invalidField("limit", "negative")
	}
	if !s.enter() {
		return nil, ErrClosed
	}
	defer s.turns.Done()
	var (
		th  threads.Thread
		err error
	)
	if f, ok := s.cfg.Threads.(threads.Finder); ok {
		th, err = f.Find(ctx, userID, courseID)
		if errors.Is(err, threads.ErrNotFound) {
			return nil, nil
		}
	} else {
		th, err = s.cfg.Threads.GetOrCreate(ctx, userID, courseID)
	}
	if err != nil {
		return nil, s.storeError(ctx, err)
	}
	msgs, err := s.cfg.Threads.History(ctx, th.ID, limit)
	if errors.Is(err, threads.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, s.storeError(ctx, err)
	}
	out := make([]HistoryMessage, len(msgs))
	for i, m := range msgs {
		out[i] = HistoryMessage{Role: m.Role, Content: m.Content, Time: m.Time}
	}
	return out, nil
}

// Forget deletes every thread of userID (the right to erasure) and
// returns how many it deleted. A learner without threads is not an error.
func (s *Service) Forget(ctx context.Context, userID string) (int, error) {
	if err := checkID("UserID", userID); err != nil {
		return 0, err
	}
	if !s.enter() {
		return 0, ErrClosed
	}
	defer s.turns.Done()
	n, err := s.cfg.Threads.ForgetUser(ctx, userID)
	if err != nil {
		return 0, s.storeError(ctx, err)
	}
	return n, nil
}

// storeError maps a thread store error outside a turn.
func (s *Service) storeError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return &UnavailableError{Reason: ReasonThreadsDown, Err: err}
}
