package chat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sashabaranov/go-openai"
)

// class is how one attempt's outcome counts.
type class int

const (
	// classOK: an answer, or a client error (the upstream is healthy;
	// retrying cannot help). Counts as a breaker success.
	classOK class = iota
	// classRetry: an error that can succeed on retry (429, 408, 409,
	// 5xx, attempt timeout, connection refused or reset). Counts as a
	// breaker failure, except a 429 (rate limited, not failing), which
	// the breaker does not count.
	classRetry
	// classFatal: an upstream failure that retrying cannot fix
	// (insufficient_quota). Counts as a breaker failure.
	classFatal
	// classExcluded: the caller's ctx ended, or the limiter or bulkhead
	// refused. Does not count for the breaker.
	classExcluded
)

var errAttemptTimeout = errors.New("chat: attempt timed out")

// classify sorts an attempt's error. ctx is the caller's context; actx
// the attempt's (which also carries the per-attempt timeout).
func classify(ctx, actx context.Context, err error) (class, int) {
	if err == nil {
		return classOK, 0
	}
	if ctx.Err() != nil {
		return classExcluded, 0
	}
	if status := statusOf(err); status != 0 {
		switch {
		case isQuota(err):
			return classFatal, status
		case status == http.StatusTooManyRequests, status == http.StatusRequestTimeout,
			status == http.StatusConflict, status >= 500:
			return classRetry, status
		default:
			return classOK, status
		}
	}
	if actx != nil && errors.Is(context.Cause(actx), errAttemptTimeout) {
		return classRetry, 0
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// A deadline or cancellation that is not the caller's nor ours
		// (e.g. a nested client's): treat like a timeout.
		return classRetry, 0
	}
	var ne net.Error
	switch {
	case errors.As(err, &ne),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed):
		return classRetry, 0
	}
	return classOK, 0
}

// localErrors are go-openai's (v1.43) exported errors for a request it
// refuses before sending: checks of CreateChatCompletion and
// CreateChatCompletionStream, and of its ReasoningValidator.
var localErrors = [...]error{
	openai.ErrChatCompletionStreamNotSupported,
	openai.ErrChatCompletionInvalidModel,
	openai.ErrContentFieldsMisused,
	openai.ErrReasoningModelMaxTokensDeprecated,
	openai.ErrReasoningModelLimitationsLogprobs,
	openai.ErrReasoningModelLimitationsOther,
	openai.ErrReasoningEffortUnsupported,
	openai.ErrReasoningToolsRequireResponses,
	openai.ErrReasoningSamplingUnsupported,
	openai.ErrO1BetaLimitationsMessageTypes,
	openai.ErrO1BetaLimitationsTools,
}

// refusedLocally reports whether err says the request was refused before
// it was sent, whatever the transport: one of go-openai's exported
// validation errors, or a request body that could not be encoded.
func refusedLocally(err error) bool {
	for _, e := range localErrors {
		if errors.Is(err, e) {
			return true
		}
	}
	var (
		uv *json.UnsupportedValueError
		ut *json.UnsupportedTypeError
		me *json.MarshalerError
	)
	return errors.As(err, &uv) || errors.As(err, &ut) || errors.As(err, &me)
}

// isDialError reports whether err says the connection to the upstream
// could not be made (refused, unreachable, DNS, dial timeout): the
// request was never written.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// statusOf returns the HTTP status carried by a go-openai error, or 0.
func statusOf(err error) int {
	var ae *openai.APIError
	if errors.As(err, &ae) && ae.HTTPStatusCode != 0 {
		return ae.HTTPStatusCode
	}
	var re *openai.RequestError
	if errors.As(err, &re) {
		return re.HTTPStatusCode
	}
	return 0
}

// isQuota reports whether err is OpenAI's insufficient_quota 429: the
// account is out of credit, and no retry will change that.
func isQuota(err error) bool {
	var ae *openai.APIError
	if !errors.As(err, &ae) {
		return false
	}
	code, _ := ae.Code.(string)
	return code == "insufficient_quota" || ae.Type == "insufficient_quota"
}

// retryAfter reads retry-after-ms (milliseconds, may be fractional) or
// Retry-After (seconds, or an HTTP date) from h. Zero when absent.
func retryAfter(h http.Header, now time.Time) time.Duration {
	if h == nil {
		return 0
	}
	if v := h.Get("Retry-After-Ms"); v != "" {
		if ms, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && ms > 0 {
			return time.Duration(ms * float64(time.Millisecond))
		}
	}
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil {
		if s <= 0 {
			return 0
		}
		return time.Duration(s * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// retryBudget allows retries up to ratio × first attempts plus
// floor per second over a sliding window, in the manner of Finagle's
// RetryBudget and gRPC's retry throttling: a full outage is amplified by
// at most 1+ratio. Buckets are indexed by the injected clock.
type retryBudget struct {
	ratio   float64
	reserve float64 // floor × window seconds
	bucket  time.Duration

	mu      sync.Mutex
	buckets []budgetBucket
}

type budgetBucket struct {
	slot          int64
	first, retrys int
}

const budgetBuckets = 10

func newRetryBudget(ratio, floorPerSecond float64, window time.Duration) *retryBudget {
	if ratio < 0 {
		return nil
	}
	return &retryBudget{
		ratio:   ratio,
		reserve: floorPerSecond * window.Seconds(),
		bucket:  window / budgetBuckets,
		buckets: make([]budgetBucket, budgetBuckets),
	}
}

func (b *retryBudget) cur(now time.Time) *budgetBucket {
	slot := now.UnixNano() / int64(b.bucket)
	bk := &b.buckets[int(slot%budgetBuckets+budgetBuckets)%budgetBuckets]
	if bk.slot != slot {
		*bk = budgetBucket{slot: slot}
	}
	return bk
}

// first records a first attempt.
func (b *retryBudget) first(now time.Time) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.cur(now).first++
	b.mu.Unlock()
}

// retry spends one retry if the budget allows it.
func (b *retryBudget) retry(now time.Time) bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.cur(now)
	oldest := cur.slot - budgetBuckets + 1
	var first, retries int
	for _, bk := range b.buckets {
		if bk.slot >= oldest && bk.slot <= cur.slot {
			first += bk.first
			retries += bk.retrys
		}
	}
	if float64(retries+1) > b.ratio*float64(first)+b.reserve {
		return false
	}
	cur.retrys++
	return true
}

// describe names an error class for logs and metrics.
func (c class) String() string {
	switch c {
	case classOK:
		return "ok"
	case classRetry:
		return "retryable"
	case classFatal:
		return "fatal"
	case classExcluded:
		return "excluded"
	}
	return fmt.Sprintf("class(%d)", int(c))
}
