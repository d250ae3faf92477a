package chat

import (
	"context"
	"errors"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// tracerName names the Client's spans' instrumentation scope.
const tracerName = "github.com/chatscale/chatscale/chat"

// Span names and attribute keys (see the package doc's Tracing section).
const (
	spanBudget  = "chat.budget"
	spanAttempt = "chat.attempt"

	attrWaitMs  = attribute.Key("chat.budget.wait_ms")
	attrBudget  = attribute.Key("chat.budget.outcome")
	attrAttempt = attribute.Key("chat.attempt.number")
	attrStatus  = attribute.Key("http.response.status_code")
	attrClass   = attribute.Key("chat.attempt.class")
	attrSent    = attribute.Key("chat.attempt.sent")
)

// startSpan starts a child of ctx's span, from that span's
// TracerProvider, when ctx's span is recording; otherwise it returns ctx
// and nil, having done nothing else.
func startSpan(ctx context.Context, name string) (context.Context, trace.Span) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return ctx, nil
	}
	return parent.TracerProvider().Tracer(tracerName).Start(ctx, name)
}

// endBudgetSpan ends a chat.budget span (nil: nothing) after a wait of
// wait that ended with err.
func endBudgetSpan(span trace.Span, wait time.Duration, err error) {
	if span == nil {
		return
	}
	outcome := budgetOutcome(err)
	span.SetAttributes(attrWaitMs.Int64(wait.Milliseconds()), attrBudget.String(outcome))
	if err != nil {
		span.SetStatus(codes.Error, outcome)
	}
	span.End()
}

// budgetOutcome names how a budget step ended, for chat.budget.outcome:
// "ok", "user_rate_limited" (the learner's quota), the Reason of an
// *UnavailableError ("rate_limited", "limiter_unavailable"), "too_large",
// "canceled" (ctx ended) or "error".
func budgetOutcome(err error) string {
	var (
		u  *UnavailableError
		rl *RateLimitError
		tl *TooLargeError
	)
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &rl):
		return "user_rate_limited"
	case errors.As(err, &u):
		return string(u.Reason)
	case errors.As(err, &tl):
		return "too_large"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	}
	return "error"
}

// endAttemptSpan ends a chat.attempt span (nil: nothing) with the
// attempt's number, status, class and whether it left the process.
func endAttemptSpan(span trace.Span, n int, res attemptResult) {
	if span == nil {
		return
	}
	attrs := [...]attribute.KeyValue{
		attrAttempt.Int(n), attrClass.String(res.cls.String()), attrSent.Bool(res.upstream), attrStatus.Int(res.status),
	}
	kv := attrs[:]
	if res.status == 0 {
		kv = kv[:3]
	}
	span.SetAttributes(kv...)
	if res.err != nil {
		desc := failureReason(res.cls, res.status, res.err)
		if desc == "" {
			desc = res.cls.String()
			if res.status != 0 {
				desc = "status " + strconv.Itoa(res.status)
			}
		}
		span.SetStatus(codes.Error, desc)
	}
	span.End()
}
