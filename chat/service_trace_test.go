package chat_test

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/ratelimit"
)

func TestServiceSpans(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	h := newHarness(t, harnessOpts{
		service: chat.ServiceConfig{TracerProvider: tp},
		client:  chat.Config{Requests: mustLocal(t, ratelimit.PerMinute(1000)), Tokens: mustLocal(t, ratelimit.PerMinute(1_000_000))},
	})
	h.ask("ada", video1, "Hi")

	spans := rec.Ended()
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byName[s.Name()] = s
	}
	turn, ok := byName["chat.turn"]
	if !ok {
		t.Fatalf("no chat.turn span among %d", len(spans))
	}
	for _, name := range []string{"chat.transcript", "chat.thread", "chat.upstream", "chat.append"} {
		s, ok := byName[name]
		if !ok {
			t.Errorf("no %s span", name)
			continue
		}
		if s.Parent().SpanID() != turn.SpanContext().SpanID() {
			t.Errorf("%s is not a child of chat.turn", name)
		}
	}
	// The Client's own spans hang under the upstream call.
	up := byName["chat.upstream"]
	for _, name := range []string{"chat.budget", "chat.attempt"} {
		s, ok := byName[name]
		if !ok {
			t.Errorf("no %s span", name)
			continue
		}
		if up != nil && s.Parent().SpanID() != up.SpanContext().SpanID() {
			t.Errorf("%s is not a child of chat.upstream", name)
		}
	}
	for _, kv := range turn.Attributes() {
		if kv.Key == "chat.status" && kv.Value.AsString() != "ok" {
			t.Errorf("chat.status = %s", kv.Value.AsString())
		}
	}
}

// Without a TracerProvider the Service records nothing, even under a
// host's recording span.
func TestServiceNoTracerNoSpans(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	h := newHarness(t, harnessOpts{memory: true})
	ctx, parent := tp.Tracer("host").Start(context.Background(), "host.request")
	if _, err := h.svc.Ask(ctx, chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "Hi"}); err != nil {
		t.Fatal(err)
	}
	parent.End()
	if spans := rec.Ended(); len(spans) != 1 || spans[0].Name() != "host.request" {
		names := make([]string, len(spans))
		for i, s := range spans {
			names[i] = s.Name()
		}
		t.Errorf("spans %v, want only the host's", names)
	}
}
