package chat

import (
	"context"
	"errors"
	"fmt"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/ratelimit"
)

// quotaKey is the context key of a call's per-learner quota.
type quotaKey struct{}

// quota is the per-learner part of one call's budget step: spent once per
// call, on the first attempt that reaches the budget step, with the
// shared budgets (see spendBudget).
type quota struct {
	requests ratelimit.Cost // the learner's turns: N is usually 1
	tokens   ratelimit.Cost // the learner's tokens: N is settled to the usage, as Config.Tokens
	io       bool           // a limiter does I/O: asked concurrently with the shared budgets
}

// withQuota returns a context that makes a Client call spend requests
// and tokens, the learner's costs, in its budget step: once per call,
// with ratelimit.AllowAll (never waiting), concurrently with the shared
// budgets' wait. A Cost with a nil Limiter is skipped; with both nil, ctx
// is returned as it is. tokens is settled to the usage the upstream
// reports, like the shared token budget. See the package doc's
// Accounting section.
func withQuota(ctx context.Context, requests, tokens ratelimit.Cost) context.Context {
	if requests.Limiter == nil && tokens.Limiter == nil {
		return ctx
	}
	q := &quota{requests: requests, tokens: tokens}
	for _, c := range [...]ratelimit.Cost{requests, tokens} {
		if _, local := c.Limiter.(*ratelimit.Local); c.Limiter != nil && !local {
			q.io = true
		}
	}
	return context.WithValue(ctx, quotaKey{}, q)
}

// quotaOf returns the quota ctx carries, or nil.
func quotaOf(ctx context.Context) *quota {
	q, _ := ctx.Value(quotaKey{}).(*quota)
	return q
}

// withoutQuota hides ctx's quota from a Completer the Client calls (a
// nested Client must not spend it again).
func withoutQuota(ctx context.Context) context.Context {
	return context.WithValue(ctx, quotaKey{}, (*quota)(nil))
}

// key is the learner's key, for a *RateLimitError.
func (q *quota) key() string {
	if q.requests.Limiter != nil {
		return q.requests.Key
	}
	return q.tokens.Key
}

// charge asks the learner's quota without waiting. spent reports whether
// it was spent (it then has to be given back if no upstream attempt
// follows); err is what the call ends with when it was not: a
// *RateLimitError when the quota is short (or the cost can never fit
// it), an *UnavailableError with ReasonLimiterDown when a fail-closed
// limiter's store failed, ctx's error when ctx ended.
func (c *Client) charge(ctx context.Context, q *quota) (spent bool, err error) {
	d, err := ratelimit.AllowAll(ctx, q.requests, q.tokens)
	switch {
	case err == nil && d.Allowed:
		return true, nil
	case err == nil:
		return false, &RateLimitError{Key: q.key(), RetryAfter: d.RetryAfter,
			Err: &ratelimit.LimitedError{Key: q.key(), RetryAfter: d.RetryAfter}}
	case ctx.Err() != nil:
		return false, ctx.Err()
	case errors.Is(err, ratelimit.ErrUnavailable):
		return false, &UnavailableError{Reason: ReasonLimiterDown, Err: err}
	case errors.Is(err, chatscale.ErrInvalidInput):
		// The learner's cost can never fit the quota's burst.
		return false, &RateLimitError{Key: q.key(), Err: err}
	default:
		return false, fmt.Errorf("chat: quota: %w", err)
	}
}

// giveBack returns the whole quota: the call spent it and then made no
// upstream attempt.
func (c *Client) giveBack(ctx context.Context, q *quota) {
	c.adjust(ctx, q.requests.Limiter, q.requests.Key, -q.requests.N)
	c.adjust(ctx, q.tokens.Limiter, q.tokens.Key, -q.tokens.N)
}

// quotaAnswer is charge's result, from the goroutine that asked.
type quotaAnswer struct {
	spent bool
	err   error
}
