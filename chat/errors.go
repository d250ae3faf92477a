package chat

import (
	"errors"
	"fmt"
	"time"

	"github.com/chatscale/chatscale"
)

// Sentinel errors. Callers test for them with errors.Is. NewClient's
// errors for impossible settings are *chatscale.ConfigError values
// (chatscale.ErrInvalidConfig).
var (
	// ErrUnavailable means the upstream could not be used for this call:
	// the breaker is open, the bulkhead is full, the budget cannot be had
	// in time, the budget's store failed, or the retries are spent. The
	// error is an *UnavailableError. With a fallback configured, callers
	// get the fallback reply instead of this error. It may succeed later.
	ErrUnavailable = errors.New("chat: upstream unavailable")
	// ErrTooLarge means a request's token reservation (its prompt
	// estimate plus its reply's maximum, see Config.Tokens) is larger
	// than the token budget's burst, so it could never be spent. The
	// error is a *TooLargeError; it also matches chatscale.ErrInvalidInput.
	// Retrying the same request cannot succeed, and no fallback answers
	// it: shorten the messages or lower MaxCompletionTokens.
	ErrTooLarge = errors.New("chat: request too large for the token budget")
	// ErrRateLimited means the learner's own quota (Service's
	// Config.UserRequests or Config.UserTokens) cannot take the turn now.
	// The error is a *RateLimitError, whose RetryAfter says when it can.
	// Nothing was spent and nothing was stored.
	ErrRateLimited = errors.New("chat: rate limited")
	// ErrInvalidRequest means a turn's Request can never succeed as it
	// is: an empty or oversized ID, invalid UTF-8, an empty or oversized
	// message. The error is a *ValidationError naming the field; it also
	// matches chatscale.ErrInvalidInput. Nothing was spent or stored.
	ErrInvalidRequest = errors.New("chat: invalid request")
	// ErrClosed is returned by a Service's turns after Close.
	ErrClosed = errors.New("chat: service closed")
)

// RateLimitError is returned when a per-learner quota refuses a turn.
// errors.Is matches ErrRateLimited; Unwrap returns the limiter's error.
type RateLimitError struct {
	// Key is the quota's key (the learner's user ID).
	Key string
	// RetryAfter is how long until the quota can take the turn; zero when
	// unknown.
	RetryAfter time.Duration
	// Err is the limiter's error (a *ratelimit.LimitedError), or nil.
	Err error
}

// Error says which quota refused and when to come back.
func (e *RateLimitError) Error() string {
	s := "chat: rate limited"
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(", retry after %s", e.RetryAfter)
	}
	return s
}

// Is reports whether target is ErrRateLimited.
func (e *RateLimitError) Is(target error) bool { return target == ErrRateLimited }

// Unwrap returns the limiter's error.
func (e *RateLimitError) Unwrap() error { return e.Err }

// ValidationError is returned for a Request that can never succeed.
// errors.Is matches ErrInvalidRequest and chatscale.ErrInvalidInput.
type ValidationError struct {
	// Field is the Request field at fault: UserID, CourseID, VideoURL,
	// Message or Position.
	Field string
	// Reason says what is wrong with it.
	Reason string
}

// Error names the field and the reason.
func (e *ValidationError) Error() string {
	return "chat: invalid request: " + e.Field + ": " + e.Reason
}

// Is reports whether target is ErrInvalidRequest or
// chatscale.ErrInvalidInput.
func (e *ValidationError) Is(target error) bool {
	return target == ErrInvalidRequest || target == chatscale.ErrInvalidInput
}

// TooLargeError is returned for a request whose token reservation can
// never fit the token budget. It is returned before anything is spent: no
// request or token budget, no upstream call, no breaker count, no attempt.
// errors.Is matches ErrTooLarge and chatscale.ErrInvalidInput; Unwrap
// returns a *chatscale.InputError.
type TooLargeError struct {
	// Tokens is the reservation the request needed.
	Tokens int
	// Burst is the token budget's burst, the largest cost it can ever
	// grant; zero when the Limiter does not expose its Limit (the
	// Limiter then refused the cost itself, see Err).
	Burst int
	// Err is the *chatscale.InputError describing the refusal: the
	// Limiter's own when it refused the cost, else one built by chat.
	Err error
}

// Error says how many tokens the request needed and the budget's burst.
func (e *TooLargeError) Error() string {
	s := fmt.Sprintf("chat: request too large: it reserves %d tokens", e.Tokens)
	switch {
	case e.Burst > 0:
		s += fmt.Sprintf(", over the token budget's burst %d", e.Burst)
	case e.Err != nil:
		s += ": " + e.Err.Error()
	}
	return s
}

// Is reports whether target is ErrTooLarge or chatscale.ErrInvalidInput.
func (e *TooLargeError) Is(target error) bool {
	return target == ErrTooLarge || target == chatscale.ErrInvalidInput
}

// Unwrap returns the *chatscale.InputError describing the refusal.
func (e *TooLargeError) Unwrap() error { return e.Err }

// Reason says why a call could not use the upstream.
type Reason string

// The reasons an *UnavailableError (and a degraded reply) can carry.
const (
	// ReasonBreakerOpen: the circuit breaker is open (here or, through
	// Redis, on another instance), or a half-open probe is running
	// elsewhere.
	ReasonBreakerOpen Reason = "breaker_open"
	// ReasonBulkheadFull: MaxInFlight calls were running for longer than
	// BulkheadWait.
	ReasonBulkheadFull Reason = "bulkhead_full"
	// ReasonRateLimited: the request or token budget cannot be had before
	// ctx's deadline, or the upstream asked to wait longer than allowed.
	ReasonRateLimited Reason = "rate_limited"
	// ReasonLimiterDown: the shared budget's store failed and the limiter
	// fails closed (ratelimit.ErrUnavailable).
	ReasonLimiterDown Reason = "limiter_unavailable"
	// ReasonQuota: the upstream answered insufficient_quota.
	ReasonQuota Reason = "quota_exhausted"
	// ReasonRetriesSpent: every allowed attempt failed with a retryable
	// error, or the retry budget or ctx's deadline left no room for
	// another.
	ReasonRetriesSpent Reason = "retries_exhausted"

	// The reasons below are a Service's: a turn answered without one of
	// its parts (Response.Degraded), or refused for want of it.

	// ReasonThreadsDown: the thread store failed; the turn had no history
	// and nothing was stored.
	ReasonThreadsDown Reason = "threads_unavailable"
	// ReasonTranscriptDown: the transcript could not be loaded and no
	// copy was cached.
	ReasonTranscriptDown Reason = "transcript_unavailable"
	// ReasonNoTranscript: the source has no transcript for the video.
	ReasonNoTranscript Reason = "transcript_missing"
	// ReasonStaleTranscript: the source failed and an expired copy of the
	// transcript was used.
	ReasonStaleTranscript Reason = "transcript_stale"
	// ReasonStreamFailed: a streamed reply broke off after it began; the
	// part received is not stored.
	ReasonStreamFailed Reason = "stream_failed"
	// ReasonNotReplicated: the exchange was stored on the Redis master but
	// fewer replicas than threads.Config.WaitReplicas confirmed it in time
	// (threads.ErrNotReplicated), so a failover may lose it. The reply is
	// complete and Response.Stored is set.
	ReasonNotReplicated Reason = "thread_not_replicated"
)

// UnavailableError is returned, when no fallback is configured, for a
// call that could not get an answer from the upstream. It Is
// ErrUnavailable and unwraps to the last underlying error (an
// *openai.APIError, a ratelimit error, ...), if any.
type UnavailableError struct {
	// Reason says why.
	Reason Reason
	// StatusCode is the last HTTP status the upstream answered; zero
	// when no attempt got an answer.
	StatusCode int
	// RetryAfter is how long to wait before trying again: the upstream's
	// Retry-After, the time left until the breaker's half-open probe, or
	// the limiter's estimate. Zero when unknown.
	RetryAfter time.Duration
	// Attempts is the number of upstream attempts the call made.
	Attempts int
	// Err is the last underlying error, or nil.
	Err error
}

// Error describes the failure: the reason, the last status, the attempts,
// the retry delay and the underlying error, when known.
func (e *UnavailableError) Error() string {
	s := fmt.Sprintf("chat: upstream unavailable (%s", e.Reason)
	if e.StatusCode != 0 {
		s += fmt.Sprintf(", status %d", e.StatusCode)
	}
	if e.Attempts > 0 {
		s += fmt.Sprintf(", %d attempts", e.Attempts)
	}
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(", retry after %s", e.RetryAfter)
	}
	s += ")"
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Is reports whether target is ErrUnavailable.
func (e *UnavailableError) Is(target error) bool { return target == ErrUnavailable }

// Unwrap returns the last underlying error.
func (e *UnavailableError) Unwrap() error { return e.Err }
