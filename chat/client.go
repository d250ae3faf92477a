package chat

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale/internal/timeutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// Completer is the part of go-openai's *openai.Client that chatscale
// uses. *openai.Client, *Client and test fakes satisfy it, so wrappers
// compose.
type Completer interface {
	// CreateChatCompletion sends one Chat Completions request.
	CreateChatCompletion(ctx context.Context, req openai.ChatCompletionRequest) (openai.ChatCompletionResponse, error)
	// CreateChatCompletionStream sends one streamed Chat Completions
	// request. Callers must Close the stream.
	CreateChatCompletionStream(ctx context.Context, req openai.ChatCompletionRequest) (*openai.ChatCompletionStream, error)
}

var (
	_ Completer = (*openai.Client)(nil)
	_ Completer = (*Client)(nil)
)

// DefaultFallbackText is the reply given while the upstream cannot be used.
const DefaultFallbackText = "I'm experiencing high load. Please try again in a moment."

// Config tunes a Client. The zero Config is usable: no budgets, the
// defaults below, no Redis (the breaker is per process), no metrics.
type Config struct {
	// Requests is the request budget: each upstream attempt spends 1
	// from RequestKey. Nil means no request budget. Use a ratelimit.Redis
	// to share the budget between instances.
	Requests ratelimit.Limiter
	// RequestKey is the key of the request budget. Empty means
	// "openai:requests".
	RequestKey string
	// Tokens is the token budget: each attempt reserves the prompt
	// estimate plus the reply's maximum (MaxCompletionTokens, MaxTokens,
	// or DefaultMaxTokens), the way the upstream charges, and settles
	// against the reported usage after a successful unary call. Nil means
	// no token budget.
	Tokens ratelimit.Limiter
	// TokenKey is the key of the token budget. Empty means "openai:tokens".
	TokenKey string
	// DefaultMaxTokens is the reply size reserved for a request that sets
	// neither MaxCompletionTokens nor MaxTokens. Zero means 1024; negative
	// is an error.
	DefaultMaxTokens int
	// EstimatePromptTokens estimates a request's prompt tokens. Nil means
	// one token per 4 bytes of content plus 4 per message.
	EstimatePromptTokens func(openai.ChatCompletionRequest) int

	// MaxInFlight bounds the upstream calls (and open streams) of this
	// Client. Zero means 256; negative means no bound.
	MaxInFlight int
	// BulkheadWait is how long a call waits for a free slot before
	// falling back. Zero means 1 s; negative means not at all.
	BulkheadWait time.Duration

	// AttemptTimeout bounds one upstream attempt (for a stream: until
	// its first byte). Zero means 30 s; negative is an error.
	AttemptTimeout time.Duration
	// MaxAttempts is the number of attempts per call, the first included.
	// Zero means 3; 1 means no retries; negative is an error.
	MaxAttempts int
	// BaseDelay and MaxDelay shape the full-jitter exponential backoff:
	// the n-th retry waits a random time in [0, min(MaxDelay,
	// BaseDelay·2^(n-1))], added on top of the upstream's Retry-After
	// when it sent one. A Retry-After longer than MaxDelay ends the
	// retries. Zero means 250 ms and 20 s; negative is an error.
	BaseDelay, MaxDelay time.Duration
	// RetryRatio is the share of first attempts that may be retried over
	// RetryWindow; only first attempts that reached the upstream count
	// (calls refused by the breaker, the budget or the bulkhead do not).
	// Zero means 0.2; negative disables the retry budget (retries are
	// then bounded by MaxAttempts only).
	RetryRatio float64
	// RetryFloor is the number of retries per second allowed on top of
	// RetryRatio, so that low traffic can still retry. Zero means 1;
	// negative means none.
	RetryFloor float64
	// RetryWindow is the retry budget's sliding window. Zero means 10 s;
	// negative is an error.
	RetryWindow time.Duration

	// BreakerRatio is the failure ratio that trips the breaker. Zero
	// means 0.5; a value outside [0, 1] is an error.
	BreakerRatio float64
	// BreakerMinRequests is the number of counted attempts within
	// BreakerWindow before the ratio is considered. Zero means 10;
	// negative means the breaker never trips.
	BreakerMinRequests int
	// BreakerWindow is the rolling window of the breaker's counts. Zero
	// means 10 s; negative is an error.
	BreakerWindow time.Duration
	// OpenFor is how long a tripped breaker stays open before one
	// half-open probe. Zero means 60 s; negative or under 1 ms is an
	// error.
	OpenFor time.Duration

	// Redis, when set, shares breaker trips and adaptive pauses between
	// every Client with the same KeyPrefix and Name. Nil means per
	// process. The Client does not close it.
	Redis RedisClient
	// KeyPrefix prefixes the Redis keys. Empty means "chatscale:chat".
	KeyPrefix string
	// Name names the upstream: the breaker, the Redis hash tag and the
	// metrics' "client" label. Empty means "openai". It must not contain
	// '{' or '}'.
	Name string
	// RefreshEvery is how often the shared state is read from Redis.
	// Zero means 100 ms; negative is an error.
	RefreshEvery time.Duration
	// RedisTimeout bounds each Redis call of the breaker. Zero means
	// 500 ms; negative is an error.
	RedisTimeout time.Duration

	// LowRemainingRequests and LowRemainingTokens: when the upstream's
	// x-ratelimit-remaining-requests (or -tokens) header is at or below
	// this, every instance pauses before spending budget until the
	// matching x-ratelimit-reset-* time. Zero means pause only when
	// nothing remains; negative disables.
	LowRemainingRequests, LowRemainingTokens int
	// MaxPause caps one adaptive pause. Zero means 60 s; negative is an
	// error.
	MaxPause time.Duration

	// FallbackText is the reply while the upstream cannot be used. Empty
	// means DefaultFallbackText.
	FallbackText string
	// DisableFallback makes calls return an *UnavailableError instead of
	// a fallback reply.
	DisableFallback bool

	// Registerer receives the Client's Prometheus collectors. Nil means
	// no metrics.
	Registerer prometheus.Registerer
	// Logger logs trips, probes and store errors. Nil means discard.
	Logger *slog.Logger
	// Now returns the current time: breaker deadlines, pauses, the retry
	// budget's window, and the checks against ctx's deadline use it, so
	// it must follow the wall clock. Nil means time.Now.
	Now func() time.Time
}

func (c Config) withDefaults() (Config, error) {
	def := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	if c.RequestKey == "" {
		c.RequestKey = "openai:requests"
	}
	if c.TokenKey == "" {
		c.TokenKey = "openai:tokens"
	}
	if c.DefaultMaxTokens == 0 {
		c.DefaultMaxTokens = 1024
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 256
	}
	def(&c.BulkheadWait, time.Second)
	def(&c.AttemptTimeout, 30*time.Second)
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 3
	}
	def(&c.BaseDelay, 250*time.Millisecond)
	def(&c.MaxDelay, 20*time.Second)
	if c.RetryRatio == 0 {
		c.RetryRatio = 0.2
	}
	if c.RetryFloor == 0 {
		c.RetryFloor = 1
	}
	if c.RetryFloor < 0 {
		c.RetryFloor = 0
	}
	def(&c.RetryWindow, 10*time.Second)
	if c.BreakerRatio == 0 {
		c.BreakerRatio = 0.5
	}
	if c.BreakerMinRequests == 0 {
		c.BreakerMinRequests = 10
	}
	def(&c.BreakerWindow, 10*time.Second)
	def(&c.OpenFor, 60*time.Second)
	if c.KeyPrefix == "" {
		c.KeyPrefix = "chatscale:chat"
	}
	if c.Name == "" {
		c.Name = "openai"
	}
	def(&c.RefreshEvery, 100*time.Millisecond)
	def(&c.RedisTimeout, 500*time.Millisecond)
	def(&c.MaxPause, time.Minute)
	if c.FallbackText == "" {
		c.FallbackText = DefaultFallbackText
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	switch {
	case c.DefaultMaxTokens < 0:
		return c, fmt.Errorf("%w: DefaultMaxTokens %d < 0", ErrInvalidConfig, c.DefaultMaxTokens)
	case c.MaxAttempts < 0:
		return c, fmt.Errorf("%w: MaxAttempts %d < 0", ErrInvalidConfig, c.MaxAttempts)
	case c.AttemptTimeout < 0, c.BaseDelay < 0, c.MaxDelay < 0, c.RetryWindow < 0,
		c.BreakerWindow < 0, c.OpenFor < 0, c.RefreshEvery < 0, c.RedisTimeout < 0, c.MaxPause < 0:
		return c, fmt.Errorf("%w: negative duration", ErrInvalidConfig)
	case c.BreakerRatio < 0 || c.BreakerRatio > 1:
		return c, fmt.Errorf("%w: BreakerRatio %v outside (0, 1]", ErrInvalidConfig, c.BreakerRatio)
	case c.OpenFor < time.Millisecond:
		return c, fmt.Errorf("%w: OpenFor %s under 1ms", ErrInvalidConfig, c.OpenFor)
	case c.RetryWindow < budgetBuckets*time.Nanosecond || c.BreakerWindow < 10*time.Nanosecond:
		return c, fmt.Errorf("%w: window too short", ErrInvalidConfig)
	case strings.ContainsAny(c.Name, "{}"):
		return c, fmt.Errorf("%w: Name %q holds a brace", ErrInvalidConfig, c.Name)
	}
	return c, nil
}

// Client is a Completer that calls an upstream Completer (a go-openai
// client) within request and token budgets, behind a bulkhead and a
// circuit breaker shared through Redis, with a per-attempt timeout,
// retries within a retry budget, and a fallback reply. See the package
// doc for the order of these. A Client is safe for concurrent use and
// starts no goroutines.
type Client struct {
	inner   Completer
	cfg     Config
	logger  *slog.Logger
	sleep   func(context.Context, time.Duration) error
	jitter  func(n int64) int64 // uniform in [0, n)
	bulk    chan struct{}
	budget  *retryBudget
	br      *breaker
	metrics *metrics
	fb      *openai.Client // builds fallback streams
}

// NewClient returns a Client that sends through inner (typically
// NewOpenAI's client, or an *openai.Client whose HTTPClient is
// HTTPClient). It returns an error wrapping ErrInvalidConfig for
// impossible settings, or the Registerer's error.
func NewClient(inner Completer, cfg Config) (*Client, error) {
	if inner == nil {
		return nil, fmt.Errorf("%w: nil Completer", ErrInvalidConfig)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Client{
		inner:  inner,
		cfg:    cfg,
		logger: cfg.Logger,
		sleep:  timeutil.Sleep,
		jitter: func(n int64) int64 { return mrand.Int64N(n) },
		budget: newRetryBudget(cfg.RetryRatio, cfg.RetryFloor, cfg.RetryWindow),
	}
	if cfg.MaxInFlight > 0 {
		c.bulk = make(chan struct{}, cfg.MaxInFlight)
	}
	var store tripStore = &memTrips{}
	if cfg.Redis != nil {
		store = &redisTrips{rdb: cfg.Redis, stateK: stateKey(cfg.KeyPrefix, cfg.Name), leaseK: leaseKey(cfg.KeyPrefix, cfg.Name)}
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	c.br = newBreaker(c, store, cfg.Redis != nil, hex.EncodeToString(id[:]))
	if c.metrics, err = newMetrics(cfg.Registerer, cfg.Name, c); err != nil {
		return nil, err
	}
	fbc := openai.DefaultConfig("")
	fbc.BaseURL = "http://chatscale.fallback.invalid/v1"
	fbc.HTTPClient = fallbackDoer{}
	c.fb = openai.NewClientWithConfig(fbc)
	return c, nil
}

func (c *Client) now() time.Time { return c.cfg.Now() }
func (c *Client) nowMs() int64   { return c.cfg.Now().UnixMilli() }

func (c *Client) storeError(op string, err error) {
	c.metrics.storeError()
	c.logger.Warn("chat: breaker store", "op", op, "name", c.cfg.Name, "err", err)
}

// CreateChatCompletion sends req upstream with the Client's protections.
// When the upstream cannot be used (breaker open, bulkhead full, budget
// not available in time, retries spent, insufficient quota) it returns
// the fallback reply, marked so that IsDegraded reports true, or, with
// DisableFallback, an *UnavailableError. Client errors of the upstream
// (400, 401, 403, 404, 422) are returned as go-openai reported them, and
// a call whose ctx ends returns ctx's error; neither is retried.
func (c *Client) CreateChatCompletion(ctx context.Context, req openai.ChatCompletionRequest) (openai.ChatCompletionResponse, error) {
	var resp openai.ChatCompletionResponse
	err := c.run(ctx, req, func(reserve int) attemptResult {
		r, res := c.attemptUnary(ctx, req, reserve)
		if res.err == nil {
			resp = r
		}
		return res
	})
	if err == nil {
		return resp, nil
	}
	var u *UnavailableError
	if errors.As(err, &u) && !c.cfg.DisableFallback {
		return c.fallbackResponse(req, u), nil
	}
	return openai.ChatCompletionResponse{}, err
}

// CreateChatCompletionStream opens a stream with the same protections as
// CreateChatCompletion. Attempts are retried only until the first byte of
// the reply arrived (with Transport in the upstream's http.Client; with
// another transport, until the response headers): once the stream is
// returned, a failure reaches the caller through Recv. The fallback is a
// one-chunk stream for which IsDegradedStream reports true. Callers must
// Close the stream; that frees its bulkhead slot.
func (c *Client) CreateChatCompletionStream(ctx context.Context, req openai.ChatCompletionRequest) (*openai.ChatCompletionStream, error) {
	var s *openai.ChatCompletionStream
	err := c.run(ctx, req, func(reserve int) attemptResult {
		st, res := c.attemptStream(ctx, req, reserve)
		if res.err == nil {
			s = st
		}
		return res
	})
	if err == nil {
		return s, nil
	}
	var u *UnavailableError
	if errors.As(err, &u) && !c.cfg.DisableFallback {
		if fs, ferr := c.fallbackStream(ctx, req, u); ferr == nil {
			return fs, nil
		}
	}
	return nil, err
}

// attemptResult is one attempt's outcome.
type attemptResult struct {
	err        error
	cls        class
	upstream   bool // the attempt reached the upstream call
	status     int
	retryAfter time.Duration // zero unless err != nil
	took       time.Duration
	end        time.Time // when the attempt ended (Config.Now)
}

// run is the retry loop around attempts.
func (c *Client) run(ctx context.Context, req openai.ChatCompletionRequest, try func(reserve int) attemptResult) error {
	reserve := c.reservation(req)
	var (
		attempts int
		last     attemptResult
	)
	spent := func(reason Reason) *UnavailableError {
		return &UnavailableError{Reason: reason, StatusCode: last.status, RetryAfter: last.retryAfter, Attempts: attempts, Err: last.err}
	}
	for n := 1; ; n++ {
		res := try(reserve)
		if res.upstream {
			attempts++
			c.metrics.attempt(res.cls)
			if n == 1 {
				// Only first attempts that reached the upstream fund
				// retries: calls refused by an open breaker, the budget
				// or the bulkhead must not inflate the retry budget.
				c.budget.first(res.end)
			}
		}
		if res.err == nil {
			c.metrics.call(outOK)
			return nil
		}
		var u *UnavailableError
		switch {
		case !res.upstream && errors.As(res.err, &u):
			// Refused before the upstream: breaker, budget, bulkhead.
			if u.Attempts == 0 {
				u.Attempts = attempts
			}
			if u.StatusCode == 0 {
				u.StatusCode = last.status
			}
			if u.Err == nil {
				u.Err = last.err
			}
			return c.unavailable(u)
		case !res.upstream && ctx.Err() == nil:
			c.metrics.call(outError) // e.g. a token reservation over the budget's burst
			return res.err
		case !res.upstream || res.cls == classExcluded:
			c.metrics.call(outCanceled)
			return res.err
		case res.cls == classOK:
			c.metrics.call(outError)
			return res.err
		}
		last = res
		if res.cls == classFatal {
			return c.unavailable(spent(ReasonQuota))
		}
		if n >= c.cfg.MaxAttempts {
			return c.unavailable(spent(ReasonRetriesSpent))
		}
		if res.retryAfter > c.cfg.MaxDelay {
			return c.unavailable(spent(ReasonRateLimited))
		}
		delay := c.delay(n, res.retryAfter)
		// The retry must be able to finish: its wait plus an attempt as
		// long as the one that just failed.
		if dl, ok := ctx.Deadline(); ok && res.end.Add(delay+res.took).After(dl) {
			return c.unavailable(spent(ReasonRetriesSpent))
		}
		if until := c.br.peek().until; until != 0 && res.end.UnixMilli() < until {
			u := spent(ReasonBreakerOpen)
			u.RetryAfter = time.Duration(until-res.end.UnixMilli()) * time.Millisecond
			return c.unavailable(u)
		}
		if !c.budget.retry(res.end) {
			c.metrics.retryDenied()
			return c.unavailable(spent(ReasonRetriesSpent))
		}
		c.metrics.retry()
		if err := c.sleep(ctx, delay); err != nil {
			c.metrics.call(outCanceled)
			return err
		}
	}
}

func (c *Client) unavailable(u *UnavailableError) error {
	if c.cfg.DisableFallback {
		c.metrics.call(outUnavailable)
	} else {
		c.metrics.call(outFallback)
		c.metrics.fallback(u.Reason)
	}
	return u
}

// delay is the wait before retry n (1-based): full jitter, on top of the
// upstream's Retry-After when there is one.
func (c *Client) delay(n int, retryAfter time.Duration) time.Duration {
	ceil := c.cfg.MaxDelay
	if n-1 < 62 && c.cfg.BaseDelay <= c.cfg.MaxDelay>>(n-1) { // no overflow
		ceil = c.cfg.BaseDelay << (n - 1)
	}
	var j time.Duration
	if ceil > 0 {
		j = time.Duration(c.jitter(int64(ceil) + 1))
	}
	return retryAfter + j
}

// reservation is the token cost reserved for one attempt of req.
func (c *Client) reservation(req openai.ChatCompletionRequest) int {
	if c.cfg.Tokens == nil {
		return 0
	}
	var prompt int
	if c.cfg.EstimatePromptTokens != nil {
		prompt = c.cfg.EstimatePromptTokens(req)
	} else {
		for _, m := range req.Messages {
			n := len(m.Content)
			for _, p := range m.MultiContent {
				n += len(p.Text)
			}
			prompt += 4 + (n+3)/4
		}
	}
	reply := req.MaxCompletionTokens
	if reply == 0 {
		//lint:ignore SA1019 OpenAI-compatible servers (vLLM, Ollama) still read max_tokens.
		reply = req.MaxTokens
	}
	if reply == 0 {
		reply = c.cfg.DefaultMaxTokens
	}
	return max(prompt+reply, 1)
}

// enter passes an attempt through the breaker, the budget and the
// bulkhead, in that order. It returns when the attempt may start (the
// time after any wait for budget).
func (c *Client) enter(ctx context.Context, reserve int) (permit, time.Time, error) {
	now := c.now()
	p, err := c.br.allow(ctx, now.UnixMilli())
	if err != nil {
		return p, now, err
	}
	if now, err = c.waitBudget(ctx, reserve, now); err != nil {
		c.br.finish(ctx, p, classExcluded, "")
		return permit{}, now, err
	}
	if err := c.acquire(ctx); err != nil {
		c.refund(ctx, reserve)
		c.br.finish(ctx, p, classExcluded, "")
		return permit{}, now, err
	}
	return p, now, nil
}

// waitBudget waits out an adaptive pause, then spends 1 request and
// reserve tokens, all or nothing. start is the current time; it returns
// the time after the wait.
func (c *Client) waitBudget(ctx context.Context, reserve int, start time.Time) (time.Time, error) {
	pause := c.br.peek().pause
	if pause <= start.UnixMilli() && c.cfg.Requests == nil && c.cfg.Tokens == nil {
		return start, nil
	}
	err := c.spendBudget(ctx, reserve, start, pause)
	end := c.now()
	c.metrics.limiterWait(end.Sub(start))
	return end, err
}

func (c *Client) spendBudget(ctx context.Context, reserve int, start time.Time, pause int64) error {
	if pause > start.UnixMilli() {
		d := time.Duration(pause-start.UnixMilli()) * time.Millisecond
		if dl, ok := ctx.Deadline(); ok && start.Add(d).After(dl) {
			return &UnavailableError{Reason: ReasonRateLimited, RetryAfter: d}
		}
		if err := c.sleep(ctx, d); err != nil {
			return err
		}
	}
	var buf [2]ratelimit.Cost
	costs := buf[:0]
	if c.cfg.Requests != nil {
		costs = append(costs, ratelimit.Cost{Limiter: c.cfg.Requests, Key: c.cfg.RequestKey, N: 1})
	}
	if c.cfg.Tokens != nil {
		costs = append(costs, ratelimit.Cost{Limiter: c.cfg.Tokens, Key: c.cfg.TokenKey, N: reserve})
	}
	if len(costs) == 0 {
		return nil
	}
	err := ratelimit.WaitAll(ctx, costs...)
	var le *ratelimit.LimitedError
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return err
	case errors.As(err, &le):
		return &UnavailableError{Reason: ReasonRateLimited, RetryAfter: le.RetryAfter, Err: err}
	case errors.Is(err, ratelimit.ErrLimited):
		return &UnavailableError{Reason: ReasonRateLimited, Err: err}
	case errors.Is(err, ratelimit.ErrUnavailable):
		return &UnavailableError{Reason: ReasonLimiterDown, Err: err}
	default:
		return fmt.Errorf("chat: budget: %w", err)
	}
}

// refund gives back what waitBudget spent, when no upstream call followed.
func (c *Client) refund(ctx context.Context, reserve int) {
	c.adjust(ctx, c.cfg.Requests, c.cfg.RequestKey, -1)
	c.adjust(ctx, c.cfg.Tokens, c.cfg.TokenKey, -reserve)
}

// adjust settles delta on lim (nil: nothing), even when ctx has ended, in
// at most RedisTimeout. A *ratelimit.Local does no I/O and ignores ctx,
// so it gets no timer.
func (c *Client) adjust(ctx context.Context, lim ratelimit.Limiter, key string, delta int) {
	if lim == nil || delta == 0 {
		return
	}
	var err error
	if _, local := lim.(*ratelimit.Local); local {
		err = lim.Adjust(ctx, key, delta)
	} else {
		sctx, cancel := c.br.storeCtx(ctx)
		err = lim.Adjust(sctx, key, delta)
		cancel()
	}
	if err != nil {
		c.logger.Warn("chat: settling budget", "name", c.cfg.Name, "key", key, "delta", delta, "err", err)
	}
}

// acquire takes a bulkhead slot, waiting at most BulkheadWait.
func (c *Client) acquire(ctx context.Context) error {
	if c.bulk == nil {
		return nil
	}
	select {
	case c.bulk <- struct{}{}:
		return nil
	default:
	}
	full := &UnavailableError{Reason: ReasonBulkheadFull}
	if c.cfg.BulkheadWait < 0 {
		c.metrics.bulkheadFull()
		return full
	}
	t := time.NewTimer(c.cfg.BulkheadWait)
	defer t.Stop()
	select {
	case c.bulk <- struct{}{}:
		return nil
	case <-t.C:
		c.metrics.bulkheadFull()
		return full
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *Client) release() {
	if c.bulk != nil {
		<-c.bulk
	}
}

func (c *Client) attemptUnary(ctx context.Context, req openai.ChatCompletionRequest, reserve int) (openai.ChatCompletionResponse, attemptResult) {
	p, start, err := c.enter(ctx, reserve)
	if err != nil {
		return openai.ChatCompletionResponse{}, attemptResult{err: err, cls: classExcluded}
	}
	actx, cancel := context.WithTimeoutCause(ctx, c.cfg.AttemptTimeout, errAttemptTimeout)
	a := &attemptInfo{}
	resp, err := c.inner.CreateChatCompletion(withAttempt(actx, a), req)
	cls, status := classify(ctx, actx, err)
	cancel()
	c.release()
	seenStatus, h, _ := a.seen()
	if h == nil {
		h = resp.Header() // go-openai sets it on errors too
	}
	if status == 0 {
		status = seenStatus
	}
	var usage *openai.Usage
	if err == nil {
		usage = &resp.Usage
	}
	return resp, c.leave(ctx, p, reserve, cls, status, h, usage, err, start)
}

func (c *Client) attemptStream(ctx context.Context, req openai.ChatCompletionRequest, reserve int) (*openai.ChatCompletionStream, attemptResult) {
	p, start, err := c.enter(ctx, reserve)
	if err != nil {
		return nil, attemptResult{err: err, cls: classExcluded}
	}
	sctx, cancel := context.WithCancelCause(ctx)
	// The timeout covers the wait for the first byte only; the stream
	// then lives as long as ctx, until the caller closes it.
	timer := time.AfterFunc(c.cfg.AttemptTimeout, func() { cancel(errAttemptTimeout) })
	var once sync.Once
	a := &attemptInfo{stream: true}
	a.end = func() { once.Do(func() { cancel(context.Canceled); c.release() }) }
	s, err := c.inner.CreateChatCompletionStream(withAttempt(sctx, a), req)
	if !timer.Stop() && err == nil {
		_ = s.Close()
		s, err = nil, context.Cause(sctx)
	}
	cls, status := classify(ctx, sctx, err)
	seenStatus, h, wrapped := a.seen()
	switch {
	case err != nil, s == nil:
		a.end()
	case !wrapped:
		// Without Transport nothing tells us when the stream ends: free
		// the slot now; the attempt's context ends with ctx.
		once.Do(c.release)
	default:
		// The caller's ctx ending frees the slot too, even if the
		// stream is never read or closed again.
		context.AfterFunc(sctx, a.end)
	}
	if h == nil && s != nil {
		h = s.Header()
	}
	if status == 0 {
		status = seenStatus
	}
	return s, c.leave(ctx, p, reserve, cls, status, h, nil, err, start)
}

// leave settles an attempt: adaptive pause, token usage, breaker.
func (c *Client) leave(ctx context.Context, p permit, reserve int, cls class, status int, h http.Header, usage *openai.Usage, err error, start time.Time) attemptResult {
	end := c.now()
	c.observe(ctx, h, end)
	if usage != nil && usage.TotalTokens > 0 {
		c.adjust(ctx, c.cfg.Tokens, c.cfg.TokenKey, usage.TotalTokens-reserve)
	}
	c.br.finish(ctx, p, cls, failureReason(cls, status, err))
	res := attemptResult{err: err, cls: cls, upstream: true, status: status, took: end.Sub(start), end: end}
	if err != nil {
		res.retryAfter = retryAfter(h, end)
	}
	return res
}

func failureReason(cls class, status int, err error) string {
	switch {
	case cls != classRetry && cls != classFatal:
		return ""
	case status != 0:
		return "status " + strconv.Itoa(status)
	case errors.Is(err, errAttemptTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	default:
		return "network error"
	}
}

// observe pauses every instance until the upstream's reset time when its
// x-ratelimit-remaining-* headers say the budget is (nearly) spent.
func (c *Client) observe(ctx context.Context, h http.Header, now time.Time) {
	if h == nil {
		return
	}
	var wait time.Duration
	check := func(low int, remaining, reset string) {
		v := h.Get(remaining)
		if low < 0 || v == "" {
			return
		}
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n <= low {
			wait = max(wait, parseReset(h.Get(reset)))
		}
	}
	check(c.cfg.LowRemainingRequests, "X-Ratelimit-Remaining-Requests", "X-Ratelimit-Reset-Requests")
	check(c.cfg.LowRemainingTokens, "X-Ratelimit-Remaining-Tokens", "X-Ratelimit-Reset-Tokens")
	if wait <= 0 {
		return
	}
	wait = min(wait, c.cfg.MaxPause)
	c.metrics.pause()
	c.br.pause(ctx, now.Add(wait).UnixMilli())
}

// parseReset reads an x-ratelimit-reset-* value: a Go-style duration
// ("1s", "6m0s", "20ms") or a number of seconds.
func parseReset(v string) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if d, err := time.ParseDuration(v); err == nil {
		return max(d, 0)
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil && s > 0 {
		return time.Duration(s * float64(time.Second))
	}
	return 0
}

// Stats is a snapshot of a Client's counters.
type Stats struct {
	// Calls by outcome: answered by the upstream, answered by the
	// fallback, refused with an *UnavailableError, failed with an
	// upstream client error, ended by the caller's ctx.
	OK, Fallbacks, Unavailable, Errors, Canceled uint64
	// Attempts is the number of upstream attempts; Retries of them were
	// retries. RetriesDenied counts retries the retry budget refused.
	Attempts, Retries, RetriesDenied uint64
	// Trips counts breaker trips published by this Client; Probes the
	// half-open probes it sent.
	Trips, Probes uint64
	// BulkheadFull counts calls refused by the bulkhead.
	BulkheadFull uint64
	// Pauses counts adaptive pauses this Client started.
	Pauses uint64
	// StoreErrors counts failed Redis calls of the breaker.
	StoreErrors uint64
	// InFlight is the number of bulkhead slots in use.
	InFlight int
	// LimiterWait is the total time spent waiting for budget.
	LimiterWait time.Duration
	// Breaker is "closed", "open" or "half-open" as this Client sees it.
	Breaker string
}

// Stats returns a snapshot of the Client's counters. It does no I/O.
func (c *Client) Stats() Stats {
	m := c.metrics
	s := Stats{
		OK: m.n.calls[outOK].Load(), Fallbacks: m.n.calls[outFallback].Load(),
		Unavailable: m.n.calls[outUnavailable].Load(), Errors: m.n.calls[outError].Load(),
		Canceled: m.n.calls[outCanceled].Load(),
		Attempts: m.n.attempts.Load(), Retries: m.n.retries.Load(), RetriesDenied: m.n.retriesDenied.Load(),
		Trips: m.n.trips.Load(), Probes: m.n.probes.Load(), BulkheadFull: m.n.bulkheadFull.Load(),
		Pauses: m.n.pauses.Load(), StoreErrors: m.n.storeErrors.Load(),
		LimiterWait: time.Duration(m.n.waitNanos.Load()),
		Breaker:     c.br.state().String(),
	}
	if c.bulk != nil {
		s.InFlight = len(c.bulk)
	}
	return s
}

// counters back Stats.
type counters struct {
	calls                               [numOutcomes]atomic.Uint64
	attempts, retries, retriesDenied    atomic.Uint64
	trips, probes, bulkheadFull, pauses atomic.Uint64
	storeErrors                         atomic.Uint64
	waitNanos                           atomic.Int64
}
