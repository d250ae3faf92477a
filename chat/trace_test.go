package chat

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sashabaranov/go-openai"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// recProvider is a TracerProvider that records the spans it starts.
type recProvider struct {
	embedded.TracerProvider
	mu    sync.Mutex
	spans []*recSpan
}

func (p *recProvider) Tracer(string, ...trace.TracerOption) trace.Tracer { return recTracer{p: p} }

// started returns the spans started so far, named name ("" for all).
func (p *recProvider) started(name string) []*recSpan {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*recSpan
	for _, s := range p.spans {
		if name == "" || s.name == name {
			out = append(out, s)
		}
	}
	return out
}

type recTracer struct {
	embedded.Tracer
	p *recProvider
}

func (t recTracer) Start(ctx context.Context, name string, _ ...trace.SpanStartOption) (context.Context, trace.Span) {
	t.p.mu.Lock()
	defer t.p.mu.Unlock()
	var sid trace.SpanID
	binary.BigEndian.PutUint64(sid[:], uint64(len(t.p.spans)+1))
	parent := trace.SpanContextFromContext(ctx)
	tid := parent.TraceID()
	if !tid.IsValid() {
		tid = trace.TraceID{1}
	}
	s := &recSpan{p: t.p, name: name, parent: parent.SpanID(), attrs: map[attribute.Key]attribute.Value{},
		sc: trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})}
	t.p.spans = append(t.p.spans, s)
	return trace.ContextWithSpan(ctx, s), s
}

type recSpan struct {
	embedded.Span
	p      *recProvider
	name   string
	parent trace.SpanID
	sc     trace.SpanContext

	mu    sync.Mutex
	attrs map[attribute.Key]attribute.Value
	code  codes.Code
	desc  string
	ended bool
}

func (s *recSpan) End(...trace.SpanEndOption) {
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
}
func (s *recSpan) AddEvent(string, ...trace.EventOption)   {}
func (s *recSpan) AddLink(trace.Link)                      {}
func (s *recSpan) IsRecording() bool                       { s.mu.Lock(); defer s.mu.Unlock(); return !s.ended }
func (s *recSpan) RecordError(error, ...trace.EventOption) {}
func (s *recSpan) SpanContext() trace.SpanContext          { return s.sc }
func (s *recSpan) SetName(name string)                     { s.mu.Lock(); s.name = name; s.mu.Unlock() }
func (s *recSpan) TracerProvider() trace.TracerProvider    { return s.p }
func (s *recSpan) SetStatus(code codes.Code, desc string) {
	s.mu.Lock()
	s.code, s.desc = code, desc
	s.mu.Unlock()
}
func (s *recSpan) attr(k attribute.Key) (attribute.Value, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.attrs[k]
	return v, ok
}
func (s *recSpan) SetAttributes(kv ...attribute.KeyValue) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range kv {
		s.attrs[a.Key] = a.Value
	}
}

// spanCtx records what ctx's span is when the inner Completer is called.
type spanCtx struct {
	Completer
	mu    sync.Mutex
	spans []trace.SpanID
}

func (s *spanCtx) CreateChatCompletion(ctx context.Context, req openai.ChatCompletionRequest) (openai.ChatCompletionResponse, error) {
	s.mu.Lock()
	s.spans = append(s.spans, trace.SpanContextFromContext(ctx).SpanID())
	s.mu.Unlock()
	return s.Completer.CreateChatCompletion(ctx, req)
}

// With a recording span in ctx, the Client opens chat.budget around each
// wait for budget and chat.attempt around each upstream attempt, children
// of that span, from its TracerProvider; the upstream call runs in the
// attempt's span.
func TestSpansOfACall(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	reqs, toks := budgets(t, clk, 100000)
	inner := &spanCtx{Completer: NewOpenAI(fake.URL, "sk-test", 4)}
	c, err := NewClient(inner, Config{Requests: reqs, Tokens: toks, MaxAttempts: 2, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.sleep = func(ctx context.Context, _ time.Duration) error { return ctx.Err() }
	tp := &recProvider{}
	ctx, root := tp.Tracer("test").Start(context.Background(), "turn")
	fake.Script(testutil.FakeStep{Status: 503})
	if _, err := c.CreateChatCompletion(ctx, request("traced")); err != nil {
		t.Fatal(err)
	}
	root.End()

	rootID := root.SpanContext().SpanID()
	budget, attempts := tp.started(spanBudget), tp.started(spanAttempt)
	if len(budget) != 2 || len(attempts) != 2 || len(tp.started("")) != 5 {
		t.Fatalf("%d budget spans, %d attempt spans, %d in all; want 2, 2, 5", len(budget), len(attempts), len(tp.started("")))
	}
	for _, s := range append(budget, attempts...) {
		if s.parent != rootID || !s.ended {
			t.Errorf("%s: parent %v, ended %v; want a child of the turn's span, ended", s.name, s.parent, s.ended)
		}
	}
	for _, s := range budget {
		if v, ok := s.attr(attrBudget); !ok || v.AsString() != "ok" || s.code != codes.Unset {
			t.Errorf("budget span: outcome %v, status %v", v.AsString(), s.code)
		}
		if v, ok := s.attr(attrWaitMs); !ok || v.Type() != attribute.INT64 {
			t.Errorf("budget span: no wait_ms")
		}
	}
	for i, want := range []struct {
		status int64
		class  string
		code   codes.Code
	}{{503, "retryable", codes.Error}, {200, "ok", codes.Unset}} {
		s := attempts[i]
		n, _ := s.attr(attrAttempt)
		st, _ := s.attr(attrStatus)
		cls, _ := s.attr(attrClass)
		sent, _ := s.attr(attrSent)
		if n.AsInt64() != int64(i+1) || st.AsInt64() != want.status || cls.AsString() != want.class || !sent.AsBool() || s.code != want.code {
			t.Errorf("attempt span %d: number %d, status %d, class %q, sent %v, code %v; want %d, %d, %q, true, %v",
				i, n.AsInt64(), st.AsInt64(), cls.AsString(), sent.AsBool(), s.code, i+1, want.status, want.class, want.code)
		}
		if inner.spans[i] != s.sc.SpanID() {
			t.Errorf("attempt %d ran in span %v, want its attempt span %v", i+1, inner.spans[i], s.sc.SpanID())
		}
	}
}

// A learner over quota: a chat.budget span with outcome
// user_rate_limited and an error status, and no attempt span.
func TestSpanOfAQuotaRefusal(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	reqs, _ := budgets(t, clk, 100000)
	quota, err := ratelimit.NewLocal(ratelimit.PerHour(1), ratelimit.Config{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = quota.Allow(context.Background(), "u1", 1)
	c := newTestClient(t, fake, Config{Requests: reqs, Now: clk.Now}, false)
	tp := &recProvider{}
	ctx, root := tp.Tracer("test").Start(context.Background(), "turn")
	ctx = withQuota(ctx, ratelimit.Cost{Limiter: quota, Key: "u1", N: 1}, ratelimit.Cost{})
	_, err = c.CreateChatCompletion(ctx, request("over quota"))
	root.End()
	if !errors.Is(err, ErrRateLimited) {
		t.Fatalf("err %v", err)
	}
	budget := tp.started(spanBudget)
	if len(budget) != 1 || len(tp.started(spanAttempt)) != 0 {
		t.Fatalf("%d budget spans, %d attempt spans; want 1, 0", len(budget), len(tp.started(spanAttempt)))
	}
	if v, _ := budget[0].attr(attrBudget); v.AsString() != "user_rate_limited" || budget[0].code != codes.Error {
		t.Fatalf("budget span: outcome %q, status %v", v.AsString(), budget[0].code)
	}
}

// Without a recording span in ctx (none, a remote parent's, or one that
// has ended), the Client starts no span.
func TestNoSpansWithoutRecordingParent(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	reqs, toks := budgets(t, clk, 100000)
	c := newTestClient(t, fake, Config{Requests: reqs, Tokens: toks, Now: clk.Now}, false)
	remote := trace.ContextWithRemoteSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{2}, SpanID: trace.SpanID{3}, TraceFlags: trace.FlagsSampled, Remote: true,
	}))
	tp := &recProvider{}
	ended, root := tp.Tracer("test").Start(context.Background(), "turn")
	root.End()
	for _, ctx := range []context.Context{context.Background(), remote, ended} {
		if _, err := c.CreateChatCompletion(ctx, request("untraced")); err != nil {
			t.Fatal(err)
		}
		if _, span := startSpan(ctx, spanAttempt); span != nil {
			t.Fatal("a span was started under a non-recording parent")
		}
	}
	if n := len(tp.started("")); n != 1 {
		t.Fatalf("%d spans started, want only the ended parent", n)
	}
}
