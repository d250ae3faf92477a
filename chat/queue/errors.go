package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/chat"
)

// Sentinel errors. Callers test for them with errors.Is.
var (
	// ErrNotFound means no job has the ID: it never existed, or it
	// finished longer than its retention ago.
	ErrNotFound = errors.New("chat/queue: job not found")
	// ErrUnavailable means Redis did not answer; the call may succeed
	// later. The error unwraps to Redis's.
	ErrUnavailable = errors.New("chat/queue: redis unavailable")
	// ErrClosed is returned by a Worker's Start after Close.
	ErrClosed = errors.New("chat/queue: worker closed")
	// ErrMalformed means a job's payload (or its stored result) could not
	// be read: not JSON, a version this package does not know, a task
	// type that is not a turn, or a request no Service could accept. A
	// Worker archives such a job at once, without retry; its Status is
	// StateFailed with a *JobError of KindMalformed.
	ErrMalformed = errors.New("chat/queue: malformed job")
)

// unavailable wraps a Redis error.
func unavailable(err error) error {
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// inputError is the *chatscale.InputError of an Enqueue option or a job
// ID.
func inputError(field, reason string) error {
	return &chatscale.InputError{Package: pkg, Field: field, Reason: reason}
}

// Kind says how an attempt of a job ended without a reply.
type Kind string

// The kinds of a *JobError.
const (
	// KindInvalid: the Service refused the request as one that can never
	// succeed (chat.ErrInvalidRequest, or chat.ErrTooLarge). Not retried.
	KindInvalid Kind = "invalid"
	// KindMalformed: the payload could not be read (ErrMalformed). Not
	// retried.
	KindMalformed Kind = "malformed"
	// KindRateLimited: the learner's quota refused the turn
	// (chat.ErrRateLimited). The job is re-queued for the quota's
	// RetryAfter; the attempt does not count.
	KindRateLimited Kind = "rate_limited"
	// KindUnavailable: the upstream could not be used
	// (chat.ErrUnavailable). When the shared budget or the Client's
	// bulkhead refused (chat.ReasonRateLimited, chat.ReasonBulkheadFull),
	// the job is re-queued and the attempt does not count; otherwise it
	// is retried with backoff, at least after the error's RetryAfter.
	KindUnavailable Kind = "unavailable"
	// KindTimeout: the attempt ran out of its Timeout. Retried.
	KindTimeout Kind = "timeout"
	// KindLeaseExpired: the worker running the attempt stopped (it was
	// killed or lost Redis) and asynq's recoverer took the job back after
	// its lease. Retried.
	KindLeaseExpired Kind = "lease_expired"
	// KindError: any other failure. Retried.
	KindError Kind = "error"
)

// JobError is how a job failed (Status.Err of a StateFailed job) or why
// its last attempt gave no reply (Status.Err of a job still running or
// waiting for a retry). It is rebuilt from what the Worker stored, so
// errors.Is and errors.As see through it to an error of package chat:
// Unwrap returns a *chat.ValidationError or *chat.TooLargeError
// (KindInvalid: errors.Is(err, chat.ErrInvalidRequest) or chat.ErrTooLarge),
// a *chat.RateLimitError (KindRateLimited), a *chat.UnavailableError
// (KindUnavailable), ErrMalformed (KindMalformed) or
// context.DeadlineExceeded (KindTimeout). The chat errors carry what
// their fields said, without their own Err.
type JobError struct {
	// Kind classifies the failure.
	Kind Kind
	// Message is the failure's error text.
	Message string
	// Attempt is the attempt that ended this way, from 1.
	Attempt int
	// RetryAfter is the delay the failure asked for (a quota's, the
	// upstream's, the breaker's); zero when none.
	RetryAfter time.Duration

	cause error
}

// Error returns "chat/queue: job <kind>: <message>".
func (e *JobError) Error() string {
	return "chat/queue: job " + string(e.Kind) + ": " + e.Message
}

// Unwrap returns the rebuilt error of package chat, ErrMalformed,
// context.DeadlineExceeded, or nil.
func (e *JobError) Unwrap() error { return e.cause }

// wireError is a JobError as a Worker stores it.
type wireError struct {
	Kind         Kind             `json:"kind"`
	Message      string           `json:"message"`
	Attempt      int              `json:"attempt,omitempty"`
	RetryAfterMS int64            `json:"retry_after_ms,omitempty"`
	Validation   *wireValidation  `json:"validation,omitempty"`
	TooLarge     *wireTooLarge    `json:"too_large,omitempty"`
	Unavailable  *wireUnavailable `json:"unavailable,omitempty"`
}

type wireValidation struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

type wireTooLarge struct {
	Tokens int `json:"tokens"`
	Burst  int `json:"burst"`
}

type wireUnavailable struct {
	Reason     chat.Reason `json:"reason"`
	StatusCode int         `json:"status_code,omitempty"`
	Attempts   int         `json:"attempts,omitempty"`
}

// describe records err, the outcome of one attempt, with its kind.
func describe(kind Kind, err error, attempt int) *wireError {
	w := &wireError{Kind: kind, Message: err.Error(), Attempt: attempt}
	var (
		ve *chat.ValidationError
		te *chat.TooLargeError
		re *chat.RateLimitError
		ue *chat.UnavailableError
	)
	switch {
	case errors.As(err, &ve):
		w.Validation = &wireValidation{Field: ve.Field, Reason: ve.Reason}
	case errors.As(err, &te):
		w.TooLarge = &wireTooLarge{Tokens: te.Tokens, Burst: te.Burst}
	case errors.As(err, &re):
		w.RetryAfterMS = re.RetryAfter.Milliseconds()
	case errors.As(err, &ue):
		w.RetryAfterMS = ue.RetryAfter.Milliseconds()
		w.Unavailable = &wireUnavailable{Reason: ue.Reason, StatusCode: ue.StatusCode, Attempts: ue.Attempts}
	}
	return w
}

// jobError rebuilds the JobError that w describes.
func (w *wireError) jobError() *JobError {
	e := &JobError{Kind: w.Kind, Message: w.Message, Attempt: w.Attempt, RetryAfter: time.Duration(w.RetryAfterMS) * time.Millisecond}
	switch w.Kind {
	case KindInvalid:
		switch {
		case w.Validation != nil:
			e.cause = &chat.ValidationError{Field: w.Validation.Field, Reason: w.Validation.Reason}
		case w.TooLarge != nil:
			e.cause = &chat.TooLargeError{Tokens: w.TooLarge.Tokens, Burst: w.TooLarge.Burst,
				Err: &chatscale.InputError{Package: "chat", Field: "Messages", Reason: "too large for the token budget"}}
		default:
			e.cause = &chat.ValidationError{Reason: w.Message}
		}
	case KindRateLimited:
		e.cause = &chat.RateLimitError{RetryAfter: e.RetryAfter}
	case KindUnavailable:
		ue := &chat.UnavailableError{RetryAfter: e.RetryAfter}
		if w.Unavailable != nil {
			ue.Reason, ue.StatusCode, ue.Attempts = w.Unavailable.Reason, w.Unavailable.StatusCode, w.Unavailable.Attempts
		}
		e.cause = ue
	case KindMalformed:
		e.cause = ErrMalformed
	case KindTimeout:
		e.cause = context.DeadlineExceeded
	}
	return e
}
