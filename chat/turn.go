package chat

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sashabaranov/go-openai"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/ratelimit"
	"github.com/chatscale/chatscale/threads"
)

// Limits on a Request besides the configurable ones.
const (
	// MaxIDBytes bounds Request.UserID and Request.CourseID, in bytes.
	MaxIDBytes = threads.MaxIDBytes
	// MaxVideoURLBytes bounds Request.VideoURL, in bytes.
	MaxVideoURLBytes = threads.MaxVideoURLBytes
	// MaxTurnIDBytes bounds Request.TurnID, in bytes.
	MaxTurnIDBytes = threads.MaxMessageIDBytes - 2
)

// Request is one learner turn.
type Request struct {
	// UserID is the learner, as the host's authentication says. Required:
	// at most MaxIDBytes bytes of valid UTF-8.
	UserID string
	// CourseID is the course; each (UserID, CourseID) has one thread.
	// Required, like UserID.
	CourseID string
	// VideoURL is the video the learner is watching: its transcript goes
	// into the prompt, and a change from the thread's last video is
	// noted. Required: at most MaxVideoURLBytes bytes of valid UTF-8.
	VideoURL string
	// Message is the learner's question: not empty after trimming
	// spaces, valid UTF-8, at most ServiceConfig.MaxMessageBytes bytes
	// and MaxMessageTokens tokens.
	Message string
	// Position is the learner's playback position, used when
	// HasPosition is set: the transcript excerpt is taken around it when
	// the whole transcript does not fit. Not negative.
	Position    time.Duration
	HasPosition bool
	// TurnID, optional, names the turn so that asking it again (a job
	// retried after its worker died, a host retrying after a timeout)
	// neither stores the exchange twice nor, when the first run's
	// exchange is among the history the turn reads, asks the upstream
	// again: the stored reply is returned with Response.Replayed. The
	// question and the reply are stored with the message IDs TurnID+"/q"
	// and TurnID+"/a" (threads.Message.ID). Unique per thread; empty means
	// a random one. At most MaxTurnIDBytes bytes of valid UTF-8.
	TurnID string
}

// Usage is the token usage the upstream reported for a turn.
type Usage struct {
	// PromptTokens is the prompt's size, CachedPromptTokens the part of
	// it the upstream served from its prompt cache (zero when it does not
	// say), CompletionTokens the reply's.
	PromptTokens, CachedPromptTokens, CompletionTokens int
}

// Response is the outcome of a turn.
type Response struct {
	// ThreadID is the learner's thread for the course; empty when the
	// thread store failed and the turn was answered without it.
	ThreadID string
	// Reply is the tutor's answer, or the fallback text when Degraded
	// with an upstream Reason.
	Reply string
	// Created reports that this turn created the thread.
	Created bool
	// VideoChanged reports that the learner switched videos since the
	// thread's previous turn; PreviousVideo is the one before.
	VideoChanged  bool
	PreviousVideo string
	// Degraded reports that the turn was answered without one of its
	// parts; Reasons says which (several may apply). With an upstream
	// reason (ReasonBreakerOpen, ReasonRateLimited, ...) Reply is the
	// Client's fallback text, not the model's.
	Degraded bool
	Reasons  []Reason
	// Stored reports that the question and the reply were appended to the
	// thread. A fallback reply is never stored, nor its question: the
	// thread only holds complete exchanges with the model.
	Stored bool
	// Usage is what the upstream reported; zero for a fallback reply.
	Usage Usage
	// Member is the member of a Failover chain that answered; empty when
	// the Completer is not a Failover, or for a fallback reply.
	Member string
	// PromptTokens is the Service's own count of the prompt it sent.
	PromptTokens int
	// HistoryMessages is how many messages of the thread went into the
	// prompt.
	HistoryMessages int
	// TranscriptTier is where the transcript came from (zero when there
	// was none); TranscriptStale reports an expired copy served because
	// the source failed; TranscriptMissing reports a turn answered
	// without a transcript; TranscriptCut reports that only an excerpt
	// fit the budget.
	TranscriptTier    contextcache.Tier
	TranscriptStale   bool
	TranscriptMissing bool
	TranscriptCut     bool
	// Cached reports that Reply came from the answer cache (see
	// ServiceConfig.Answers): no upstream call was made, Usage is zero,
	// and SavedUsage is what the call that produced the answer reported.
	Cached     bool
	SavedUsage Usage
	// Replayed reports that the thread already held this turn's exchange
	// (Request.TurnID): Reply is the stored reply, no upstream call was
	// made and nothing was written.
	Replayed bool
}

// validate checks r; nothing is stored or spent for an invalid Request.
// It returns the message's token count.
func (s *Service) validate(r *Request) (int, error) {
	if err := checkID("UserID", r.UserID); err != nil {
		return 0, err
	}
	if err := checkID("CourseID", r.CourseID); err != nil {
		return 0, err
	}
	switch {
	case r.VideoURL == "":
		return 0, invalidField("VideoURL", "empty")
	case len(r.VideoURL) > MaxVideoURLBytes:
		return 0, invalidField("VideoURL", "longer than "+strconv.Itoa(MaxVideoURLBytes)+" bytes")
	case !utf8.ValidString(r.VideoURL):
		return 0, invalidField("VideoURL", "not valid UTF-8")
	case len(r.Message) > s.cfg.MaxMessageBytes:
		return 0, invalidField("Message", "longer than "+strconv.Itoa(s.cfg.MaxMessageBytes)+" bytes")
	case !utf8.ValidString(r.Message):
		return 0, invalidField("Message", "not valid UTF-8")
	case strings.TrimSpace(r.Message) == "":
		return 0, invalidField("Message", "empty")
	case r.HasPosition && r.Position < 0:
		return 0, invalidField("Position", "negative")
	case len(r.TurnID) > MaxTurnIDBytes:
		return 0, invalidField("TurnID", "longer than "+strconv.Itoa(MaxTurnIDBytes)+" bytes")
	case !utf8.ValidString(r.TurnID):
		return 0, invalidField("TurnID", "not valid UTF-8")
	}
	n := s.tok.Count(r.Message)
	if n > s.cfg.MaxMessageTokens {
		return 0, invalidField("Message", strconv.Itoa(n)+" tokens, over "+strconv.Itoa(s.cfg.MaxMessageTokens))
	}
	return n, nil
}

func checkID(field, v string) error {
	switch {
	case v == "":
		return invalidField(field, "empty")
	case len(v) > MaxIDBytes:
		return invalidField(field, "longer than "+strconv.Itoa(MaxIDBytes)+" bytes")
	case !utf8.ValidString(v):
		return invalidField(field, "not valid UTF-8")
	}
	return nil
}

// turn is one turn's state, shared by Ask and Stream.
type turn struct {
	s     *Service
	req   Request
	start time.Time
	span  trace.Span
	resp  Response
	// msgTokens is the message's token count.
	msgTokens int
	doc       contextcache.Document
	haveDoc   bool
	session   threads.Session
	haveTh    bool
	built     built
	// abandoned: Stream's onDelta failed, the caller went away.
	abandoned bool
	ans       answerState
}

// Ask runs one turn and returns the tutor's reply.
//
// The steps, in order:
//  1. Validate the Request (a *ValidationError; nothing stored or spent).
//  2. Get the transcript (an in-process cache hit costs no I/O).
//  3. Open the thread: get or create it, record the video, read the
//     newest messages (one round trip on Redis).
//     When the history read holds the exchange of Request.TurnID (the
//     same turn asked again), its stored reply is the answer
//     (Response.Replayed) and the turn ends there.
//  4. Build the prompt within the budgets: the system prompt and the
//     transcript excerpt first, a prefix that stays byte-identical
//     across a learner's turns on one video (and position chunk), so the
//     upstream's prompt cache can serve it; then the newest history that
//     fits; then a note when the learner switched videos and one with the
//     playback position; then the question. A prompt that cannot fit the
//     context window even without transcript and history is refused with
//     a *ValidationError before anything is stored or spent.
//  5. With the answer cache on for the course and a thread holding no
//     message, look the answer up (see the package documentation,
//     "Answer cache"); a hit skips the next step and is stored like any
//     reply, with Response.Cached.
//  6. Ask the Completer. A *Client spends the request and token budgets
//     and the per-learner quota together (one round trip on Redis when
//     they share a slot, two in parallel otherwise); with another
//     Completer the quota is spent first, one more round trip.
//  7. Append the question and the reply to the thread (one round trip).
//     The *Client settles the token reservation later, coalesced with
//     other turns', never in the turn's path.
//
// On Redis, with the transcript in the in-process cache, a turn thus
// costs three sequential round trips besides the upstream call.
//
// Failures: a thread store that fails gives an *UnavailableError with
// ReasonThreadsDown, or, with AnswerWithoutThread, an answer without
// history that is not stored (Degraded). A missing transcript or one that
// cannot be loaded gives an *UnavailableError with ReasonNoTranscript or
// ReasonTranscriptDown, or, with AnswerWithoutTranscript, an answer
// without it (Degraded); an expired copy served because the source failed
// is used and flagged (Degraded, ReasonStaleTranscript). An upstream that
// cannot answer gives the Client's fallback reply (Degraded with the
// Client's Reason; neither it nor the question is stored) or, with the
// Client's DisableFallback, its *UnavailableError. A learner over quota
// gets a *RateLimitError. When the reply came but could not be stored, it
// is returned with Stored false and Degraded with ReasonThreadsDown. A
// ctx that ends returns ctx's error. After Close, ErrClosed.
func (s *Service) Ask(ctx context.Context, req Request) (Response, error) {
	return s.run(ctx, req, nil)
}

// Stream runs one turn like Ask, handing each piece of the reply to
// onDelta as it arrives. The full reply is appended to the thread at the
// end. When onDelta returns an error, or ctx ends, the upstream call is
// stopped, nothing is stored, and that error (or ctx's) is returned; the
// turn counts as canceled in the metrics. A fallback reply is delivered as one delta. onDelta is called from the
// calling goroutine.
func (s *Service) Stream(ctx context.Context, req Request, onDelta func(string) error) (Response, error) {
	if onDelta == nil {
		return Response{}, invalidField("onDelta", "nil")
	}
	return s.run(ctx, req, onDelta)
}

func (s *Service) run(ctx context.Context, req Request, onDelta func(string) error) (Response, error) {
	if !s.enter() {
		return Response{}, ErrClosed
	}
	defer s.turns.Done()
	t := turn{s: s, req: req, start: s.cfg.Now()}
	if s.cfg.TurnTimeout > 0 {
		if dl, ok := ctx.Deadline(); !ok || dl.Sub(t.start) > s.cfg.TurnTimeout {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, s.cfg.TurnTimeout)
			defer cancel()
		}
	}
	ctx, t.span = s.tracer.Start(ctx, "chat.turn", trace.WithSpanKind(trace.SpanKindInternal))
	err := t.do(ctx, onDelta)
	t.finish(ctx, err)
	if err != nil {
		return Response{}, err
	}
	return t.resp, nil
}

func (t *turn) do(ctx context.Context, onDelta func(string) error) error {
	s := t.s
	var err error
	if t.msgTokens, err = s.validate(&t.req); err != nil {
		return err
	}
	if err := t.transcript(ctx); err != nil {
		return err
	}
	// The prompt's fixed part must fit before anything is written.
	if err := t.plan(); err != nil {
		return err
	}
	if err := t.open(ctx); err != nil {
		return err
	}
	if t.replay(onDelta) {
		return nil
	}
	t.build()
	cached, err := t.answer(ctx, onDelta)
	if err != nil {
		return err
	}
	if !cached {
		if onDelta == nil {
			err = t.ask(ctx)
		} else {
			err = t.stream(ctx, onDelta)
		}
		t.answered(ctx, err)
		if err != nil {
			return err
		}
	}
	t.store(ctx)
	return nil
}

// replay answers a turn whose exchange the thread already holds (the
// same TurnID, asked again) with the stored reply.
func (t *turn) replay(onDelta func(string) error) bool {
	if t.req.TurnID == "" || !t.haveTh {
		return false
	}
	q, a := t.req.TurnID+"/q", t.req.TurnID+"/a"
	asked := false
	for _, m := range t.session.History {
		switch {
		case m.ID == q:
			asked = true
		case asked && m.ID == a:
			t.resp.Reply, t.resp.Stored, t.resp.Replayed = m.Content, true, true
			if onDelta != nil && onDelta(m.Content) != nil {
				t.abandoned = true
			}
			return true
		}
	}
	return false
}

func (t *turn) degrade(r Reason) {
	t.resp.Degraded = true
	t.resp.Reasons = append(t.resp.Reasons, r)
}

// transcript gets the video's transcript.
func (t *turn) transcript(ctx context.Context) error {
	s := t.s
	if s.cfg.TranscriptTokens < 0 {
		return nil
	}
	cctx, span := s.child(ctx, "chat.transcript")
	res, err := s.cfg.Transcripts.Get(cctx, t.req.CourseID, t.req.VideoURL)
	if err != nil && ctx.Err() != nil {
		endSpan(span, ctx.Err())
		return ctx.Err()
	}
	endSpan(span, err)
	switch {
	case err == nil:
		t.doc, t.haveDoc = res.Document, true
		t.resp.TranscriptTier = res.Tier
		if res.Stale {
			t.resp.TranscriptStale = true
			t.degrade(ReasonStaleTranscript)
			s.metrics.transcript(tierStale)
		} else {
			s.metrics.transcript(tierOf(res.Tier))
		}
		return nil
	case errors.Is(err, chatscale.ErrInvalidInput):
		return &ValidationError{Field: inputField(err), Reason: err.Error()}
	}
	reason, tier := ReasonTranscriptDown, tierUnavailable
	if errors.Is(err, contextcache.ErrNotFound) {
		reason, tier = ReasonNoTranscript, tierMissing
	}
	s.metrics.transcript(tier)
	if !s.cfg.AnswerWithoutTranscript {
		return &UnavailableError{Reason: reason, Err: err}
	}
	t.resp.TranscriptMissing = true
	t.degrade(reason)
	return nil
}

// inputField returns the Field of a *chatscale.InputError in err.
func inputField(err error) string {
	var ie *chatscale.InputError
	if errors.As(err, &ie) {
		return ie.Field
	}
	return "Request"
}

// open opens the learner's thread.
func (t *turn) open(ctx context.Context) error {
	s := t.s
	limit := s.cfg.HistoryMessages
	if s.cfg.HistoryTokens < 0 {
		limit = -1
	}
	cctx, span := s.child(ctx, "chat.thread")
	sess, err := s.cfg.Threads.Open(cctx, threads.OpenRequest{
		UserID: t.req.UserID, CourseID: t.req.CourseID, VideoURL: t.req.VideoURL, HistoryLimit: limit,
	})
	if err != nil && ctx.Err() != nil {
		endSpan(span, ctx.Err())
		return ctx.Err()
	}
	endSpan(span, err)
	switch {
	case err == nil:
		t.session, t.haveTh = sess, true
		t.resp.ThreadID = sess.Thread.ID
		t.resp.Created = sess.Created
		t.resp.VideoChanged = sess.VideoSwitched
		t.resp.PreviousVideo = sess.PreviousVideo
		return nil
	case errors.Is(err, chatscale.ErrInvalidInput):
		return &ValidationError{Field: inputField(err), Reason: err.Error()}
	case !s.cfg.AnswerWithoutThread:
		return &UnavailableError{Reason: ReasonThreadsDown, Err: err}
	}
	s.log.LogAttrs(ctx, slog.LevelWarn, "chat: thread store failed; answering without history",
		slog.String("course_id", t.req.CourseID), slog.String("err", err.Error()))
	t.degrade(ReasonThreadsDown)
	return nil
}

// ask calls the Completer for a unary reply.
func (t *turn) ask(ctx context.Context) error {
	s := t.s
	cctx, span := s.child(ctx, "chat.upstream")
	cctx, err := t.spendQuota(cctx)
	if err != nil {
		endSpan(span, err)
		return err
	}
	resp, err := s.cfg.Completer.CreateChatCompletion(cctx, t.request())
	if err == nil && len(resp.Choices) == 0 {
		err = &UnavailableError{Reason: ReasonRetriesSpent, Err: errors.New("chat: upstream reply without choices")}
	}
	endSpan(span, err)
	if err != nil {
		return t.upstreamError(ctx, err)
	}
	t.resp.Reply = resp.Choices[0].Message.Content
	t.resp.Member = AnsweredBy(resp.Header())
	if IsDegraded(resp) {
		t.degrade(DegradedReason(resp.Header()))
		return nil
	}
	t.usage(resp.Usage)
	return nil
}

// stream calls the Completer for a streamed reply.
func (t *turn) stream(ctx context.Context, onDelta func(string) error) error {
	s := t.s
	// The stream is cancelled when the caller goes away or onDelta fails.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cctx, span := s.child(ctx, "chat.upstream")
	cctx, err := t.spendQuota(cctx)
	if err != nil {
		endSpan(span, err)
		return err
	}
	req := t.request()
	req.Stream = true
	// The usage comes in a last chunk when asked for.
	req.StreamOptions = &openai.StreamOptions{IncludeUsage: true}
	st, err := s.cfg.Completer.CreateChatCompletionStream(cctx, req)
	if err != nil {
		endSpan(span, err)
		return t.upstreamError(ctx, err)
	}
	defer st.Close()
	degraded := IsDegradedStream(st)
	t.resp.Member = AnsweredBy(st.Header())
	var b strings.Builder
	for {
		chunk, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			endSpan(span, err)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return &UnavailableError{Reason: ReasonStreamFailed, Err: err}
		}
		if chunk.Usage != nil {
			t.usage(*chunk.Usage)
		}
		for _, c := range chunk.Choices {
			if c.Delta.Content == "" {
				continue
			}
			b.WriteString(c.Delta.Content)
			if err := onDelta(c.Delta.Content); err != nil {
				cancel()
				endSpan(span, err)
				t.abandoned = true
				return err
			}
		}
	}
	endSpan(span, nil)
	t.resp.Reply = b.String()
	if degraded {
		t.resp.Usage = Usage{}
		t.degrade(DegradedReason(st.Header()))
	}
	return nil
}

// upstreamError maps a Completer error.
func (t *turn) upstreamError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var tl *TooLargeError
	if errors.As(err, &tl) {
		return &ValidationError{Field: "Message", Reason: tl.Error()}
	}
	return err
}

// spendQuota spends the per-learner quota: a *Client spends it with the
// shared budgets; for another Completer it is spent here.
func (t *turn) spendQuota(ctx context.Context) (context.Context, error) {
	s := t.s
	if s.cfg.UserRequests == nil && s.cfg.UserTokens == nil {
		return ctx, nil
	}
	q := t.quotaCosts()
	if s.quota {
		return withQuota(ctx, q.requests, q.tokens), nil
	}
	d, err := ratelimit.AllowAll(ctx, q.requests, q.tokens)
	switch {
	case err == nil && d.Allowed:
		return ctx, nil
	case err == nil:
		return ctx, &RateLimitError{Key: t.req.UserID, RetryAfter: d.RetryAfter}
	case ctx.Err() != nil:
		return ctx, ctx.Err()
	case errors.Is(err, chatscale.ErrInvalidInput):
		return ctx, &RateLimitError{Key: t.req.UserID, Err: err}
	default:
		return ctx, &UnavailableError{Reason: ReasonLimiterDown, Err: err}
	}
}

// quotaCosts returns the per-learner costs of this turn.
func (t *turn) quotaCosts() userQuota {
	s := t.s
	q := userQuota{
		requests: ratelimit.Cost{Limiter: s.cfg.UserRequests, Key: t.req.UserID, N: 1},
		tokens:   ratelimit.Cost{Limiter: s.cfg.UserTokens, Key: t.req.UserID, N: t.built.tokens + s.cfg.MaxReplyTokens},
	}
	return q
}

func (t *turn) usage(u openai.Usage) {
	t.resp.Usage = Usage{PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens}
	if u.PromptTokensDetails != nil {
		t.resp.Usage.CachedPromptTokens = u.PromptTokensDetails.CachedTokens
	}
}

// store appends the exchange, unless the reply is the fallback or there
// is no thread.
func (t *turn) store(ctx context.Context) {
	s := t.s
	if !t.haveTh || t.resp.Reply == "" || t.upstreamDegraded() {
		return
	}
	now := s.cfg.Now()
	cctx, span := s.child(ctx, "chat.append")
	// The reply is paid for: store it even if the caller has gone.
	actx, cancel := context.WithTimeout(context.WithoutCancel(cctx), appendTimeout)
	id := t.req.TurnID
	if id == "" {
		id = newTurnID()
	}
	err := s.cfg.Threads.Append(actx, t.session.Thread.ID,
		threads.Message{Role: threads.RoleUser, Content: t.req.Message, Time: t.start, ID: id + "/q"},
		threads.Message{Role: threads.RoleAssistant, Content: t.resp.Reply, Time: now, ID: id + "/a"})
	cancel()
	endSpan(span, err)
	if errors.Is(err, threads.ErrNotReplicated) {
		// Stored on the master, but not on as many replicas as the store
		// was told to wait for.
		s.log.LogAttrs(ctx, slog.LevelWarn, "chat: the exchange is stored but not replicated",
			slog.String("thread_id", t.session.Thread.ID), slog.String("err", err.Error()))
		t.resp.Stored = true
		t.degrade(ReasonNotReplicated)
		return
	}
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelWarn, "chat: storing the exchange failed",
			slog.String("thread_id", t.session.Thread.ID), slog.String("err", err.Error()))
		t.degrade(ReasonThreadsDown)
		return
	}
	t.resp.Stored = true
}

// newTurnID returns a random turn ID: 128 bits in hex.
func newTurnID() string {
	var b [32]byte
	h := strconv.AppendUint(b[:0], rand.Uint64(), 16)
	h = append(h, '-')
	h = strconv.AppendUint(h, rand.Uint64(), 16)
	return string(h)
}

// appendTimeout bounds the append of a reply whose caller has gone.
const appendTimeout = 5 * time.Second

// upstreamDegraded reports whether the reply is a fallback.
func (t *turn) upstreamDegraded() bool {
	for _, r := range t.resp.Reasons {
		switch r {
		case ReasonThreadsDown, ReasonTranscriptDown, ReasonNoTranscript, ReasonStaleTranscript, ReasonNotReplicated:
		default:
			return true
		}
	}
	return false
}

// finish records the turn's metrics, log line and span status.
func (t *turn) finish(ctx context.Context, err error) {
	s := t.s
	took := s.cfg.Now().Sub(t.start)
	st := statusOfTurn(err, t.resp.Degraded)
	if t.abandoned {
		st = stCanceled
	}
	s.metrics.turn(st, took, &t.resp)
	if s.log.Enabled(ctx, slog.LevelInfo) {
		attrs := make([]slog.Attr, 0, 12)
		attrs = append(attrs,
			slog.String("status", statusNames[st]),
			slog.String("course_id", t.req.CourseID),
			slog.String("thread_id", t.resp.ThreadID),
			slog.Duration("took", took),
			slog.Int("prompt_tokens", t.resp.Usage.PromptTokens),
			slog.Int("cached_prompt_tokens", t.resp.Usage.CachedPromptTokens),
			slog.Int("completion_tokens", t.resp.Usage.CompletionTokens),
			slog.Bool("video_changed", t.resp.VideoChanged),
			slog.Bool("stored", t.resp.Stored),
			slog.Bool("cached", t.resp.Cached),
		)
		if len(t.resp.Reasons) > 0 {
			rs := make([]string, len(t.resp.Reasons))
			for i, r := range t.resp.Reasons {
				rs[i] = string(r)
			}
			attrs = append(attrs, slog.Any("degraded", rs))
		}
		if err != nil {
			attrs = append(attrs, slog.String("err", errorKind(err)))
		}
		s.log.LogAttrs(ctx, slog.LevelInfo, "chat: turn", attrs...)
	}
	if t.span.IsRecording() {
		t.span.SetAttributes(
			attribute.String("chat.status", statusNames[st]),
			attribute.Int("chat.prompt_tokens", t.resp.Usage.PromptTokens),
			attribute.Int("chat.completion_tokens", t.resp.Usage.CompletionTokens),
			attribute.Bool("chat.degraded", t.resp.Degraded),
		)
		if err != nil {
			t.span.SetStatus(codes.Error, errorKind(err))
		}
	}
	t.span.End()
}

// errorKind names an error without its text, which may quote input.
func errorKind(err error) string {
	var (
		ve *ValidationError
		ue *UnavailableError
	)
	switch {
	case errors.As(err, &ve):
		return "invalid " + ve.Field
	case errors.Is(err, ErrRateLimited):
		return "rate_limited"
	case errors.As(err, &ue):
		return "unavailable: " + string(ue.Reason)
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline exceeded"
	case errors.Is(err, ErrClosed):
		return "closed"
	}
	return "error"
}

// child starts a child span of the turn's when tracing is on.
func (s *Service) child(ctx context.Context, name string) (context.Context, trace.Span) {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return ctx, trace.SpanFromContext(ctx)
	}
	return s.tracer.Start(ctx, name)
}

// endSpan ends a child span (a no-op for the parent's non-recording one).
func endSpan(span trace.Span, err error) {
	if !span.IsRecording() {
		return
	}
	if err != nil {
		span.SetStatus(codes.Error, errorKind(err))
	}
	span.End()
}

// userQuota is a turn's per-learner costs.
type userQuota struct {
	requests, tokens ratelimit.Cost
}
