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
	"github.com/redis/go-redis/v9"
	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/keyspace"
	"github.com/chatscale/chatscale/internal/prom"
	"github.com/chatscale/chatscale/internal/rediscall"
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
	// from RequestKey, given back when the request never reached the
	// upstream (the package doc's Accounting section lists each case).
	// Nil means no request budget. Use a ratelimit.Redis to share the
	// budget between instances.
	Requests ratelimit.Limiter
	// RequestKey is the key of the request budget. Empty means
	// "openai:requests".
	RequestKey string
	// Tokens is the token budget: each attempt reserves the prompt
	// estimate plus the reply's maximum (MaxCompletionTokens, MaxTokens,
	// or DefaultMaxTokens), the way the upstream charges, settles it
	// against the usage the upstream reports (for a stream, the usage it
	// is asked to include, see DisableStreamUsage) and gives it back when
	// the upstream did not charge it (the package doc's Accounting
	// section lists each case). A request whose reservation exceeds the
	// budget's burst fails with a *TooLargeError. Nil means no token
	// budget.
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
	// DisableStreamUsage stops the Client from asking a stream for its
	// usage. By default, when Tokens is set and a streamed request has no
	// StreamOptions, the Client sends stream_options {"include_usage":
	// true}: the stream then ends with one more chunk, with no Choices
	// and with Usage, against which the reservation is settled. Set it
	// for an OpenAI-compatible server that refuses stream_options; such
	// streams keep their whole reservation.
	DisableStreamUsage bool
	// SettleDelay is how long a settlement (the Adjust that settles a
	// token reservation against the usage, or gives back what an attempt
	// did not use) may wait so that it is made off the caller's path and
	// coalesced with the other calls' settlements of the same budget: one
	// Adjust per budget and key every SettleDelay at most, in a goroutine
	// that runs only while settlements are pending. It applies to the
	// Limiters that do I/O; a *ratelimit.Local settles inline, as does
	// a refund that precedes a retry of the same call (see the package
	// doc's Accounting section, which says how long a budget can be off
	// and why 50 ms). Close makes the pending settlements. Zero means
	// DefaultSettleDelay (50 ms); negative means every settlement is made
	// in the call, as it happens.
	SettleDelay time.Duration

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
	// every Client with the same Prefix and Name: a *redis.Client,
	// *redis.ClusterClient, Sentinel failover client or *redis.Ring. Nil
	// means per process. The Client does not close it.
	Redis redis.UniversalClient
	// Prefix starts every Redis key. Empty means chatscale.DefaultPrefix
	// ("chatscale:"). The Client adds "chat:", so its keys are
	// <Prefix>chat:{<Name>}:breaker and <Prefix>chat:{<Name>}:probe. It
	// must not contain '{' or '}'.
	Prefix string
	// Name names the upstream: the breaker, the Redis hash tag and the
	// metrics' "client" label. Empty means "openai". It must not contain
	// '{' or '}'.
	Name string
	// RefreshEvery is how old the copy of the shared state may get: the
	// first call that finds it older starts a read of Redis in the
	// background and goes on with the copy (see the package doc's Breaker
	// section). Zero means 100 ms; negative is an error.
	RefreshEvery time.Duration
	// RedisTimeout bounds each Redis call of the breaker (a read of the
	// shared state, a trip, a pause, a probe's lease and outcome, and
	// LoadScripts), and each settlement of a Limiter that does I/O. A
	// call that Redis has not answered by then counts as a store error,
	// like an error, whatever the client's own timeouts: the breaker goes
	// on with what this process knows and never fails a call because its
	// Redis did. Zero means 1 s; negative means no bound of the Client's
	// own: calls end with the client's timeouts (see the README's
	// conventions for the go-redis options).
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
	// MaxBudgetWait bounds how long one attempt waits for the shared
	// budgets, an adaptive pause included: an attempt whose budget (or
	// pause) would not come within it is refused at once, without
	// spending anything, with ReasonRateLimited and the time the budget
	// said to come back after (UnavailableError.RetryAfter, or the
	// fallback reply). When demand outgrows the upstream's limits, this
	// turns a queue of callers each waiting up to its own deadline into
	// fast answers. Zero or negative means no bound besides ctx's deadline.
	MaxBudgetWait time.Duration

	// FallbackText is the reply while the upstream cannot be used. Empty
	// means DefaultFallbackText.
	FallbackText string
	// DisableFallback makes calls return an *UnavailableError instead of
	// a fallback reply.
	DisableFallback bool

	// Registerer receives the Client's Prometheus collectors (see the
	// package doc); Close unregisters them. Nil means no metrics.
	Registerer prometheus.Registerer
	// Namespace starts every metric name. Empty means
	// chatscale.DefaultNamespace ("ai_chat"), as in
	// ai_chat_client_calls_total.
	Namespace string
	// ConstLabels are added to every series, next to client=<Name>; they
	// must not hold the labels the Client sets: "client", "outcome",
	// "result" and "reason". Two Clients can share a Registerer when
	// their Names or ConstLabels differ. Nil means none.
	ConstLabels prometheus.Labels
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
	def(&c.SettleDelay, DefaultSettleDelay)
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
	if c.Prefix == "" {
		c.Prefix = chatscale.DefaultPrefix
	}
	if c.Name == "" {
		c.Name = "openai"
	}
	def(&c.RefreshEvery, 100*time.Millisecond)
	def(&c.RedisTimeout, rediscall.DefaultTimeout)
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
	if c.DefaultMaxTokens < 0 {
		return c, configError("Config.DefaultMaxTokens", fmt.Sprintf("%d: negative", c.DefaultMaxTokens))
	}
	if c.MaxAttempts < 0 {
		return c, configError("Config.MaxAttempts", fmt.Sprintf("%d: negative", c.MaxAttempts))
	}
	for _, d := range [...]struct {
		field string
		v     time.Duration
	}{
		{"Config.AttemptTimeout", c.AttemptTimeout}, {"Config.BaseDelay", c.BaseDelay},
		{"Config.MaxDelay", c.MaxDelay}, {"Config.RetryWindow", c.RetryWindow},
		{"Config.BreakerWindow", c.BreakerWindow}, {"Config.OpenFor", c.OpenFor},
		{"Config.RefreshEvery", c.RefreshEvery},
		{"Config.MaxPause", c.MaxPause},
	} {
		if d.v < 0 {
			return c, configError(d.field, d.v.String()+": negative")
		}
	}
	switch {
	case c.BreakerRatio < 0 || c.BreakerRatio > 1:
		return c, configError("Config.BreakerRatio", fmt.Sprintf("%v: outside [0, 1]", c.BreakerRatio))
	case c.OpenFor < time.Millisecond:
		return c, configError("Config.OpenFor", c.OpenFor.String()+": under 1ms")
	case c.RetryWindow < budgetBuckets*time.Nanosecond:
		return c, configError("Config.RetryWindow", c.RetryWindow.String()+": too short")
	case c.BreakerWindow < 10*time.Nanosecond:
		return c, configError("Config.BreakerWindow", c.BreakerWindow.String()+": too short")
	}
	if err := prom.CheckLabels("chat", c.ConstLabels, "client", "outcome", "result", "reason"); err != nil {
		return c, err
	}
	if err := keyspace.Check("chat", "Config.Prefix", c.Prefix); err != nil {
		return c, err
	}
	if err := keyspace.Check("chat", "Config.Name", c.Name); err != nil {
		return c, err
	}
	return c, nil
}

func configError(field, reason string) error {
	return &chatscale.ConfigError{Package: "chat", Field: field, Reason: reason}
}

// Client is a Completer that calls an upstream Completer (a go-openai
// client) within request and token budgets, behind a bulkhead and a
// circuit breaker shared through Redis, with a per-attempt timeout,
// retries within a retry budget, and a fallback reply. See the package
// doc for the order of these. A Client is safe for concurrent use. It
// runs no goroutine at rest: one settles budgets while settlements are
// pending (Config.SettleDelay), one reads the breaker's shared state from
// Redis while that read runs; Close waits for both.
type Client struct {
	inner      Completer
	cfg        Config
	tokenBurst int // the token budget's burst; 0 when unknown
	logger     *slog.Logger
	sleep      func(context.Context, time.Duration) error
	jitter     func(n int64) int64 // uniform in [0, n)
	bulk       chan struct{}
	budget     *retryBudget
	br         *breaker
	settle     *settler
	metrics    *metrics
	fb         *openai.Client // builds fallback streams

	// viaTransport is set once an attempt reached Transport: from then
	// on, an attempt that does not reach it was not sent.
	viaTransport atomic.Bool
}

// NewClient returns a Client that sends through inner (typically
// NewOpenAI's client, or an *openai.Client whose HTTPClient is
// HTTPClient). It does no I/O. It returns a *chatscale.ConfigError
// (chatscale.ErrInvalidConfig) for a nil inner or an impossible Config,
// or the Registerer's error, in which case nothing stays registered.
func NewClient(inner Completer, cfg Config) (*Client, error) {
	if inner == nil {
		return nil, configError("inner", "nil")
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
		settle: newSettler(cfg.SettleDelay, cfg.RedisTimeout, cfg.Logger, cfg.Name),
	}
	if cfg.MaxInFlight > 0 {
		c.bulk = make(chan struct{}, cfg.MaxInFlight)
	}
	if l, ok := cfg.Tokens.(interface{ Limit() ratelimit.Limit }); ok {
		// *ratelimit.Local and *ratelimit.Redis; a Burst of zero means Rate.
		lim := l.Limit()
		c.tokenBurst = lim.Burst
		if c.tokenBurst <= 0 {
			c.tokenBurst = lim.Rate
		}
	}
	var store tripStore = &memTrips{}
	if cfg.Redis != nil {
		store = &redisTrips{rdb: cfg.Redis, bound: rediscall.New(cfg.RedisTimeout), stateK: stateKey(cfg.Prefix, cfg.Name), leaseK: leaseKey(cfg.Prefix, cfg.Name)}
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	c.br = newBreaker(c, store, cfg.Redis != nil, hex.EncodeToString(id[:]))
	opts := prom.Opts{Registerer: cfg.Registerer, Namespace: cfg.Namespace, ConstLabels: cfg.ConstLabels}
	if c.metrics, err = newMetrics(opts, cfg.Name, c); err != nil {
		return nil, err
	}
	fbc := openai.DefaultConfig("")
	fbc.BaseURL = "http://chatscale.fallback.invalid/v1"
	fbc.HTTPClient = fallbackDoer{}
	c.fb = openai.NewClientWithConfig(fbc)
	return c, nil
}

// Close makes the settlements still pending (see Config.SettleDelay) at
// once, within RedisTimeout, waits for them and for a read of the
// breaker's shared state that is running, and unregisters the Client's
// collectors from Config.Registerer, so that another Client with the
// same Name and ConstLabels can register them. It does not close
// Config.Redis or the inner Completer. A Client keeps working after Close
// (Stats still counts), without metrics and without goroutines: its
// settlements and its reads of the shared state are then made in the
// calls. Close is idempotent and returns nil.
func (c *Client) Close() error {
	c.settle.close()
	c.br.close()
	c.metrics.reg.Unregister()
	return nil
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
// a call whose ctx ends returns ctx's error; neither is retried. A
// request whose token reservation can never fit the token budget returns
// a *TooLargeError, and one go-openai refuses before sending (e.g. Stream
// set, MaxTokens on a reasoning model) returns go-openai's error; neither
// spends anything nor is answered by the fallback. A call whose
// per-learner quota (set by a Service) cannot take it returns a
// *RateLimitError at once, with no fallback.
func (c *Client) CreateChatCompletion(ctx context.Context, req openai.ChatCompletionRequest) (openai.ChatCompletionResponse, error) {
	var resp openai.ChatCompletionResponse
	err := c.run(ctx, req, func(st step) attemptResult {
		r, res := c.attemptUnary(ctx, req, st)
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
//
// With a token budget (or a per-learner token quota), a request without
// StreamOptions is sent with stream_options {"include_usage": true}
// (unless DisableStreamUsage): its stream then ends with a chunk that has
// no Choices and carries Usage, so code reading the stream must not
// assume Choices is non-empty.
func (c *Client) CreateChatCompletionStream(ctx context.Context, req openai.ChatCompletionRequest) (*openai.ChatCompletionStream, error) {
	if req.StreamOptions == nil && !c.cfg.DisableStreamUsage {
		if q := quotaOf(ctx); c.cfg.Tokens != nil || q != nil && q.tokens.Limiter != nil {
			req.StreamOptions = &openai.StreamOptions{IncludeUsage: true}
		}
	}
	var s *openai.ChatCompletionStream
	err := c.run(ctx, req, func(st step) attemptResult {
		str, res := c.attemptStream(ctx, req, st)
		if res.err == nil {
			s = str
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

// step is what run gives one attempt.
type step struct {
	n       int    // the attempt's number, from 1
	reserve int    // the token reservation
	quota   *quota // the call's per-learner quota, or nil
	charge  bool   // the quota is not spent yet: this attempt spends it if it reaches the budget step
}

// tokenFate is what became of an attempt's token reservation.
type tokenFate uint8

const (
	tokensKept  tokenFate = iota // kept as reserved
	tokensBack                   // given back: the upstream did not charge them
	tokensUsage                  // settled to the usage the upstream reported
	tokensBody                   // settled by the stream's body when it ends
)

// attemptResult is one attempt's outcome.
type attemptResult struct {
	err        error
	cls        class
	upstream   bool // the request left this process: an upstream attempt
	status     int
	retryAfter time.Duration // zero unless err != nil
	took       time.Duration
	end        time.Time // when the attempt ended (Config.Now)

	quotaSpent bool       // the attempt spent the call's quota
	back       settlement // what it gives back to the shared budgets, not made yet
	tokens     tokenFate  // what became of its token reservation (upstream attempts)
	usage      int        // the total tokens reported, when tokens is tokensUsage
}

// call is one call's bookkeeping across its attempts.
type call struct {
	reserve    int
	quota      *quota
	quotaSpent bool
	attempts   int        // upstream attempts
	tokens     tokenFate  // of the last upstream attempt
	usage      int        // of the last upstream attempt
	owed       settlement // the last attempt's refunds, not made yet
}

// run runs a call: the retry loop around attempts, then what the call
// still owes the budgets.
func (c *Client) run(ctx context.Context, req openai.ChatCompletionRequest, try func(step) attemptResult) error {
	reserve := c.reservation(req)
	if err := c.fits(reserve); err != nil {
		c.metrics.call(outError)
		return err
	}
	cl := call{reserve: reserve, quota: quotaOf(ctx)}
	err := c.attempts(ctx, &cl, try)
	c.settleCall(ctx, &cl)
	return err
}

// settleCall makes, later, what a call still owes when it ends: its last
// attempt's refunds, and its quota's: given back whole when no upstream
// attempt was made, else its tokens settled as the last upstream
// attempt's reservation was (a stream's body settles them itself).
func (c *Client) settleCall(ctx context.Context, cl *call) {
	c.settleLater(ctx, cl.owed)
	q := cl.quota
	if q == nil || !cl.quotaSpent {
		return
	}
	switch {
	case cl.attempts == 0:
		c.giveBack(ctx, q)
	case cl.tokens == tokensBack:
		c.adjust(ctx, q.tokens.Limiter, q.tokens.Key, -q.tokens.N)
	case cl.tokens == tokensUsage:
		c.adjust(ctx, q.tokens.Limiter, q.tokens.Key, cl.usage-q.tokens.N)
	}
}

// attempts is the retry loop.
func (c *Client) attempts(ctx context.Context, cl *call, try func(step) attemptResult) error {
	var last attemptResult
	spent := func(reason Reason) *UnavailableError {
		return &UnavailableError{Reason: reason, StatusCode: last.status, RetryAfter: last.retryAfter, Attempts: cl.attempts, Err: last.err}
	}
	for n := 1; ; n++ {
		res := try(step{n: n, reserve: cl.reserve, quota: cl.quota, charge: cl.quota != nil && !cl.quotaSpent})
		cl.quotaSpent = cl.quotaSpent || res.quotaSpent
		cl.owed = res.back
		if res.upstream {
			cl.attempts++
			cl.tokens, cl.usage = res.tokens, res.usage
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
		_, quotaShort := res.err.(*RateLimitError) // as charge returns it
		switch {
		case !res.upstream && quotaShort:
			// The learner's quota: answered at once, no fallback.
			c.metrics.call(outRateLimited)
			return res.err
		case !res.upstream && errors.As(res.err, &u):
			// Refused before the upstream: breaker, budget, bulkhead.
			if u.Attempts == 0 {
				u.Attempts = cl.attempts
			}
			if u.StatusCode == 0 {
				u.StatusCode = last.status
			}
			if u.Err == nil {
				u.Err = last.err
			}
			return c.unavailable(u)
		case !res.upstream && ctx.Err() == nil:
			// A *TooLargeError from the limiter, or a request go-openai
			// refused before sending.
			c.metrics.call(outError)
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
		// The retry spends the same budgets again: what this attempt
		// gives back must be there before the retry waits for it.
		c.settleNow(ctx, cl.owed)
		cl.owed = settlement{}
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

// fits returns a *TooLargeError when reserve can never fit the token
// budget's burst (when the Limiter exposes it).
func (c *Client) fits(reserve int) error {
	if c.tokenBurst <= 0 || reserve <= c.tokenBurst {
		return nil
	}
	return &TooLargeError{Tokens: reserve, Burst: c.tokenBurst, Err: &chatscale.InputError{
		Package: "chat", Field: "Messages",
		Reason: fmt.Sprintf("with the reply's maximum they reserve %d tokens, over the token budget's burst %d", reserve, c.tokenBurst),
	}}
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
// time after any wait for budget), and whether the attempt spent the
// call's quota (even when it fails: the quota is then given back when the
// call ends without an upstream attempt).
func (c *Client) enter(ctx context.Context, st step) (p permit, start time.Time, quotaSpent bool, err error) {
	now := c.now()
	if p, err = c.br.allow(ctx, now.UnixMilli()); err != nil {
		return p, now, false, err
	}
	if now, quotaSpent, err = c.waitBudget(ctx, st, now); err != nil {
		c.br.finish(ctx, p, classExcluded, "")
		return permit{}, now, quotaSpent, err
	}
	if err := c.acquire(ctx); err != nil {
		c.refund(ctx, st.reserve)
		c.br.finish(ctx, p, classExcluded, "")
		return permit{}, now, quotaSpent, err
	}
	return p, now, quotaSpent, nil
}

// waitBudget waits out an adaptive pause, then spends 1 request and
// st.reserve tokens, all or nothing, and the call's quota when st says
// so. start is the current time; it returns the time after the wait.
func (c *Client) waitBudget(ctx context.Context, st step, start time.Time) (time.Time, bool, error) {
	pause := c.br.peek().pause
	q := st.quota
	if !st.charge {
		q = nil
	}
	if pause <= start.UnixMilli() && c.cfg.Requests == nil && c.cfg.Tokens == nil && q == nil {
		return start, false, nil
	}
	sctx, span := startSpan(ctx, spanBudget)
	if c.cfg.MaxBudgetWait > 0 {
		var cancel context.CancelFunc
		sctx, cancel = context.WithTimeout(sctx, c.cfg.MaxBudgetWait)
		defer cancel()
	}
	spent, err := c.spendBudget(sctx, st.reserve, start, pause, q)
	if err != nil && sctx.Err() != nil && ctx.Err() == nil {
		// MaxBudgetWait ended the wait, not the caller.
		err = &UnavailableError{Reason: ReasonRateLimited, Err: err}
	}
	end := c.now()
	c.metrics.limiterWait(end.Sub(start))
	endBudgetSpan(span, end.Sub(start), err)
	return end, spent, err
}

// spendBudget is the budget step: the adaptive pause and the shared
// budgets (spendShared) and, with q, the learner's quota, asked with
// ratelimit.AllowAll (never waiting) at the same time as the shared
// budgets when it does I/O, so that its round trip adds no latency. A
// quota that refuses ends the shared wait (WaitAll spends nothing when
// its ctx ends) or gives back what it spent. spent reports whether q was
// spent.
func (c *Client) spendBudget(ctx context.Context, reserve int, start time.Time, pause int64, q *quota) (spent bool, err error) {
	paused := pause > start.UnixMilli()
	if paused {
		d := time.Duration(pause-start.UnixMilli()) * time.Millisecond
		if dl, ok := ctx.Deadline(); ok && start.Add(d).After(dl) {
			return false, &UnavailableError{Reason: ReasonRateLimited, RetryAfter: d}
		}
	}
	switch {
	case q == nil:
		return false, c.spendShared(ctx, reserve, start, pause)
	case !q.io || !paused && c.cfg.Requests == nil && c.cfg.Tokens == nil:
		// The quota answers at once (a *ratelimit.Local), or it is all
		// there is to ask.
		if spent, err = c.charge(ctx, q); err != nil {
			return spent, err
		}
		return spent, c.spendShared(ctx, reserve, start, pause)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	answer := make(chan quotaAnswer, 1)
	go func() {
		spent, err := c.charge(ctx, q)
		if err != nil {
			cancel()
		}
		answer <- quotaAnswer{spent, err}
	}()
	err = c.spendShared(wctx, reserve, start, pause)
	a := <-answer
	if a.err != nil {
		if err == nil {
			c.refund(ctx, reserve)
		}
		return a.spent, a.err
	}
	return a.spent, err
}

// spendShared waits out an adaptive pause, then spends 1 request and
// reserve tokens from the shared budgets, all or nothing.
func (c *Client) spendShared(ctx context.Context, reserve int, start time.Time, pause int64) error {
	if pause > start.UnixMilli() {
		if err := c.sleep(ctx, time.Duration(pause-start.UnixMilli())*time.Millisecond); err != nil {
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
	case errors.Is(err, chatscale.ErrInvalidInput):
		// Raised before anything is spent: the reservation is over the
		// burst of a Limiter that does not expose its Limit.
		return &TooLargeError{Tokens: reserve, Err: err}
	default:
		return fmt.Errorf("chat: budget: %w", err)
	}
}

// refund gives back what spendShared spent, when no upstream call
// followed.
func (c *Client) refund(ctx context.Context, reserve int) {
	c.adjust(ctx, c.cfg.Requests, c.cfg.RequestKey, -1)
	c.adjust(ctx, c.cfg.Tokens, c.cfg.TokenKey, -reserve)
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

func (c *Client) attemptUnary(ctx context.Context, req openai.ChatCompletionRequest, st step) (openai.ChatCompletionResponse, attemptResult) {
	p, start, quotaSpent, err := c.enter(ctx, st)
	if err != nil {
		return openai.ChatCompletionResponse{}, attemptResult{err: err, cls: classExcluded, quotaSpent: quotaSpent}
	}
	spanCtx, span := startSpan(ctx, spanAttempt)
	actx, cancel := context.WithTimeoutCause(spanCtx, c.cfg.AttemptTimeout, errAttemptTimeout)
	a := &attemptInfo{}
	if p.probe {
		a.onReach = c.metrics.probe
	}
	ictx := withAttempt(actx, a)
	if st.quota != nil {
		ictx = withoutQuota(ictx)
	}
	resp, err := c.inner.CreateChatCompletion(ictx, req)
	cls, status := classify(ctx, actx, err)
	cancel()
	c.release()
	reached, seenStatus, h, _ := a.seen()
	if h == nil {
		h = resp.Header() // go-openai sets it on errors too
	}
	if status == 0 {
		status = seenStatus
	}
	o := attemptOutcome{p: p, reserve: st.reserve, start: start, err: err, cls: cls, status: status, h: h, reached: reached,
		// The status line came back (go-openai sets the header of
		// every reply it got, error replies included).
		answered: err == nil || status != 0 || h != nil}
	if err == nil {
		o.usage = &resp.Usage
	}
	res := c.leave(ctx, o)
	res.quotaSpent = quotaSpent
	endAttemptSpan(span, st.n, res)
	return resp, res
}

func (c *Client) attemptStream(ctx context.Context, req openai.ChatCompletionRequest, st step) (*openai.ChatCompletionStream, attemptResult) {
	p, start, quotaSpent, err := c.enter(ctx, st)
	if err != nil {
		return nil, attemptResult{err: err, cls: classExcluded, quotaSpent: quotaSpent}
	}
	spanCtx, span := startSpan(ctx, spanAttempt)
	sctx, cancel := context.WithCancelCause(spanCtx)
	// The timeout covers the wait for the first byte only; the stream
	// then lives as long as ctx, until the caller closes it.
	timer := time.AfterFunc(c.cfg.AttemptTimeout, func() { cancel(errAttemptTimeout) })
	var once sync.Once
	a := &attemptInfo{stream: true}
	a.end = func() { once.Do(func() { cancel(context.Canceled); c.release() }) }
	if p.probe {
		a.onReach = c.metrics.probe
	}
	// Past enter, the call holds its quota (spent now or before): a body
	// that settles the shared tokens settles the quota's too.
	q := st.quota
	if q != nil && q.tokens.Limiter == nil {
		q = nil
	}
	if c.cfg.Tokens != nil || q != nil {
		reserve := st.reserve
		a.settle = func(total int) {
			c.adjust(ctx, c.cfg.Tokens, c.cfg.TokenKey, total-reserve)
			if q != nil {
				c.adjust(ctx, q.tokens.Limiter, q.tokens.Key, total-q.tokens.N)
			}
		}
		a.refund = func() {
			c.adjust(ctx, c.cfg.Tokens, c.cfg.TokenKey, -reserve)
			if q != nil {
				c.adjust(ctx, q.tokens.Limiter, q.tokens.Key, -q.tokens.N)
			}
		}
	}
	ictx := withAttempt(sctx, a)
	if st.quota != nil {
		ictx = withoutQuota(ictx)
	}
	s, err := c.inner.CreateChatCompletionStream(ictx, req)
	if !timer.Stop() && err == nil {
		_ = s.Close()
		s, err = nil, context.Cause(sctx)
	}
	cls, status := classify(ctx, sctx, err)
	reached, seenStatus, h, wrapped := a.seen()
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
	o := attemptOutcome{p: p, reserve: st.reserve, start: start, err: err, cls: cls, status: status, h: h, reached: reached,
		// An error reply, or the first byte of the stream's body.
		answered: err == nil || statusOf(err) != 0,
		// The wrapped body settles the tokens as the stream passes.
		bodySettles: err == nil && wrapped,
	}
	res := c.leave(ctx, o)
	res.quotaSpent = quotaSpent
	endAttemptSpan(span, st.n, res)
	return s, res
}

// attemptOutcome is what one attempt that passed enter learned.
type attemptOutcome struct {
	p        permit
	reserve  int
	start    time.Time
	err      error
	cls      class
	status   int
	h        http.Header
	reached  bool // the request reached Transport
	answered bool // the upstream's reply began: its status line (unary), or an error reply or the first byte of its body (stream)
	usage    *openai.Usage
	// bodySettles: a streamed body wrapped by Transport settles the
	// token reservation itself.
	bodySettles bool
}

// leave settles an attempt: what it spent (see the package doc's
// Accounting section), the adaptive pause, the breaker. What the attempt
// gives back to the shared budgets is returned in its result's back, for
// run to give back before a retry or when the call ends.
func (c *Client) leave(ctx context.Context, o attemptOutcome) attemptResult {
	end := c.now()
	if o.reached {
		c.viaTransport.Store(true)
	}
	if o.err != nil && !o.reached && (refusedLocally(o.err) || c.viaTransport.Load()) {
		// Refused before it was sent: no attempt, no breaker count, and
		// its budget is given back (no retry follows).
		c.refund(ctx, o.reserve)
		c.br.finish(ctx, o.p, classExcluded, "")
		return attemptResult{err: o.err, cls: classExcluded, took: end.Sub(o.start), end: end}
	}
	if o.p.probe && !o.reached {
		// Sent without Transport (with it, counted when it reached it).
		c.metrics.probe()
	}
	c.observe(ctx, o.h, end)
	res := attemptResult{err: o.err, cls: o.cls, upstream: true, status: o.status, took: end.Sub(o.start), end: end}
	if o.err != nil && isDialError(o.err) {
		// The connection could not be made: the upstream never saw it.
		res.back.requests = -1
	}
	switch {
	case o.usage != nil && o.usage.TotalTokens > 0:
		res.tokens, res.usage = tokensUsage, o.usage.TotalTokens
		c.adjust(ctx, c.cfg.Tokens, c.cfg.TokenKey, o.usage.TotalTokens-o.reserve)
	case o.bodySettles:
		res.tokens = tokensBody
	case o.err != nil && (!o.answered || o.status >= 400 && o.status < 500):
		// Not charged: refused by the upstream (4xx, 429 included), or no
		// reply came back (connection refused, timeout or cancellation
		// before the first byte).
		res.tokens = tokensBack
		res.back.tokens = -o.reserve
	}
	if o.err != nil {
		res.retryAfter = retryAfter(o.h, end)
	}
	counted := breakerClass(o.cls, o.status, o.p.probe)
	if o.cls == classRetry && o.status == http.StatusTooManyRequests {
		// Rate limited, not failing: every instance waits until the
		// upstream said to come back.
		res.retryAfter = max(res.retryAfter, resetWait(o.h))
		if res.retryAfter > 0 {
			c.metrics.pause()
			c.br.pause(ctx, end.Add(min(res.retryAfter, c.cfg.MaxPause)).UnixMilli())
		}
	}
	c.br.finish(ctx, o.p, counted, failureReason(o.cls, o.status, o.err))
	return res
}

// breakerClass is how an attempt counts for the breaker. Failures are
// 5xx, timeouts (408, or no reply in time) and connection failures: an
// upstream that is down. Any other error came from an upstream that
// answered: a 409, a 429 (the shared pause handles it) or
// insufficient_quota count as neither success nor failure, and close the
// breaker when they answer a half-open probe, so that one probe per
// half-open period is enough.
func breakerClass(cls class, status int, probe bool) class {
	if cls != classRetry && cls != classFatal {
		return cls
	}
	if status == 0 || status >= 500 || status == http.StatusRequestTimeout {
		return classRetry
	}
	if probe {
		return classOK
	}
	return classExcluded
}

// resetWait reads, from a 429's headers, the x-ratelimit-reset-* time of
// each budget that has nothing remaining (or does not say), the longest.
func resetWait(h http.Header) time.Duration {
	var wait time.Duration
	for _, k := range [...][2]string{
		{"X-Ratelimit-Remaining-Requests", "X-Ratelimit-Reset-Requests"},
		{"X-Ratelimit-Remaining-Tokens", "X-Ratelimit-Reset-Tokens"},
	} {
		if n, err := strconv.Atoi(strings.TrimSpace(h.Get(k[0]))); err == nil && n > 0 {
			continue
		}
		wait = max(wait, parseReset(h.Get(k[1])))
	}
	return wait
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
	// fallback, refused with an *UnavailableError, failed with an error
	// of their own (an upstream client error, a *TooLargeError, a request
	// go-openai refused before sending), ended by the caller's ctx,
	// refused by the learner's quota (a *RateLimitError).
	OK, Fallbacks, Unavailable, Errors, Canceled, RateLimited uint64
	// Attempts is the number of upstream attempts (requests that left
	// the process, see the package doc's Accounting section); Retries
	// of them were retries. RetriesDenied counts retries the retry
	// budget refused.
	Attempts, Retries, RetriesDenied uint64
	// Trips counts breaker trips published by this Client; Probes the
	// half-open probes it sent (one per half-open period in the cluster,
	// unless a probe ended without an outcome or Redis failed).
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
		Canceled: m.n.calls[outCanceled].Load(), RateLimited: m.n.calls[outRateLimited].Load(),
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
