package chat

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/prom"
)

// MemberHeader is set, on the Header() of a response (and of a stream)
// a Failover returns, to the Name of the member that answered. A
// Failover's fallback reply does not carry it.
const MemberHeader = "Chatscale-Member"

// AnsweredBy returns the member named on h (a response's or a stream's
// Header()) by a Failover, or "" for a fallback reply or a response that
// did not come through a Failover.
func AnsweredBy(h http.Header) string { return h.Get(MemberHeader) }

// Member is one upstream of a Failover.
type Member struct {
	// Name names the member: the MemberHeader value and the metrics'
	// "member", "from" and "to" labels. Required, unique in the chain.
	Name string
	// Completer answers for the member, usually a *Client with
	// DisableFallback set and its own budgets, breaker, base URL and key.
	// Only an *UnavailableError (or a degraded reply) from it moves a
	// call to the next member. Required.
	Completer Completer
	// Model replaces the request's Model for this member. Empty keeps the
	// request's.
	Model string
	// Weight is the member's share of normal traffic when any member has
	// a positive Weight: a call starts at a member drawn with probability
	// Weight/sum, then fails over in the chain's order. Zero (with others
	// positive) means the member takes failover traffic only; all zero
	// means every call starts at the first member. Negative is an error.
	Weight int
}

// FailoverConfig tunes a Failover. The zero value is usable: no waiting
// for a paused member, the default fallback text, no metrics.
type FailoverConfig struct {
	// MaxWait is how long a call may wait for a *Client member's adaptive
	// pause (set by a 429 or by low x-ratelimit-remaining-* headers): a
	// member paused for longer is skipped without a call. Zero means a
	// paused member is always skipped; negative is an error.
	MaxWait time.Duration
	// FallbackText is the reply when every member is out. Empty means
	// DefaultFallbackText.
	FallbackText string
	// DisableFallback makes a call whose members are all out return the
	// last member's *UnavailableError instead of the fallback reply.
	DisableFallback bool
	// Intn returns a uniform int in [0, n), for the weighted choice. Nil
	// means math/rand/v2's IntN. It must be safe for concurrent use.
	Intn func(n int) int

	// Name is the metrics' "failover" label. Empty means "failover".
	Name string
	// Registerer receives the Failover's collectors; Close unregisters
	// them. Nil means no metrics.
	Registerer prometheus.Registerer
	// Namespace starts every metric name. Empty means
	// chatscale.DefaultNamespace ("ai_chat"), as in
	// ai_chat_failover_calls_total.
	Namespace string
	// ConstLabels are added to every series; they must not hold the
	// labels the Failover sets: "failover", "member", "outcome", "from",
	// "to". Nil means none.
	ConstLabels prometheus.Labels
	// Now returns the current time, compared with the members' breaker
	// deadlines and pauses. Nil means time.Now.
	Now func() time.Time
}

// member outcomes, for FailoverStats and the calls metric.
const (
	memberOK          = iota // answered
	memberError              // answered with an error of its own: final
	memberUnavailable        // *UnavailableError or degraded: failed over
	memberSkipped            // breaker open or paused past MaxWait: not called
	memberCanceled           // the caller's ctx ended
	numMemberOutcomes
)

var memberOutcomeNames = [numMemberOutcomes]string{"ok", "error", "unavailable", "skipped", "canceled"}

type failoverMember struct {
	Member
	client *Client  // Completer as a *Client, or nil
	header []string // {Name}, shared by every response it answers: read-only
	n      [numMemberOutcomes]atomic.Uint64
	calls  [numMemberOutcomes]prometheus.Counter // nil without a Registerer
	to     []prometheus.Counter                  // failovers from this member, by target index
}

// Failover is a Completer that sends each call to the first usable member
// of an ordered chain (see the package doc's Failover section). It is
// safe for concurrent use and runs no goroutine.
type Failover struct {
	members   []failoverMember
	weighted  bool
	total     int // sum of weights
	cfg       FailoverConfig
	fb        *Client // builds the fallback replies
	failovers atomic.Uint64
	fallbacks atomic.Uint64
	fbCounter prometheus.Counter
	reg       *prom.Registration
}

var _ Completer = (*Failover)(nil)

// NewFailover returns a Failover over members, in order of preference. It
// does no I/O. It returns a *chatscale.ConfigError for an empty chain, a
// member with an empty or duplicate Name, a nil Completer or a negative
// Weight, a negative MaxWait, ConstLabels holding a label it sets, or a
// registration that fails.
func NewFailover(members []Member, cfg FailoverConfig) (*Failover, error) {
	ferr := func(field, reason string) error {
		return &chatscale.ConfigError{Package: "chat", Field: field, Reason: reason}
	}
	if len(members) == 0 {
		return nil, ferr("members", "empty")
	}
	if cfg.MaxWait < 0 {
		return nil, ferr("FailoverConfig.MaxWait", cfg.MaxWait.String()+": negative")
	}
	for _, l := range [...]string{"failover", "member", "outcome", "from", "to"} {
		if _, ok := cfg.ConstLabels[l]; ok {
			return nil, ferr("FailoverConfig.ConstLabels", fmt.Sprintf("holds %q, a label the package sets", l))
		}
	}
	if cfg.FallbackText == "" {
		cfg.FallbackText = DefaultFallbackText
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Intn == nil {
		cfg.Intn = mrand.IntN
	}
	if cfg.Name == "" {
		cfg.Name = "failover"
	}
	f := &Failover{cfg: cfg, members: make([]failoverMember, len(members))}
	seen := make(map[string]bool, len(members))
	for i, m := range members {
		field := fmt.Sprintf("members[%d]", i)
		switch {
		case strings.TrimSpace(m.Name) == "":
			return nil, ferr(field+".Name", "empty")
		case seen[m.Name]:
			return nil, ferr(field+".Name", fmt.Sprintf("%q: duplicate", m.Name))
		case m.Completer == nil:
			return nil, ferr(field+".Completer", "nil")
		case m.Weight < 0:
			return nil, ferr(field+".Weight", fmt.Sprintf("%d: negative", m.Weight))
		}
		seen[m.Name] = true
		fm := &f.members[i]
		fm.Member = m
		fm.client, _ = m.Completer.(*Client)
		fm.header = []string{m.Name}
		f.total += m.Weight
	}
	f.weighted = f.total > 0
	fbc := openai.DefaultConfig("")
	fbc.BaseURL = "http://chatscale.fallback.invalid/v1"
	fbc.HTTPClient = fallbackDoer{}
	f.fb = &Client{cfg: Config{FallbackText: cfg.FallbackText, Now: cfg.Now}, fb: openai.NewClientWithConfig(fbc)}
	if err := f.register(); err != nil {
		return nil, err
	}
	return f, nil
}

// register creates the collectors, all or nothing, and resolves every
// series once so that a call does no label lookup.
func (f *Failover) register() error {
	o := prom.Opts{Registerer: f.cfg.Registerer, Namespace: f.cfg.Namespace, ConstLabels: f.cfg.ConstLabels}
	if o.Registerer == nil {
		return nil
	}
	labels := o.Labels("failover", f.cfg.Name)
	calls := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: o.Name("failover", "calls_total"), ConstLabels: labels,
		Help: "Calls given to each member, by outcome: ok, error, unavailable, skipped, canceled.",
	}, []string{"member", "outcome"})
	failovers := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: o.Name("failover", "failovers_total"), ConstLabels: labels,
		Help: "Calls moved from one member to the next.",
	}, []string{"from", "to"})
	fallbacks := prometheus.NewCounter(prometheus.CounterOpts{
		Name: o.Name("failover", "fallbacks_total"), ConstLabels: labels,
		Help: "Calls for which every member was out: fallback reply or *UnavailableError.",
	})
	reg, err := prom.Register("chat", o.Registerer, calls, failovers, fallbacks)
	if err != nil {
		return err
	}
	f.reg, f.fbCounter = reg, fallbacks
	for i := range f.members {
		m := &f.members[i]
		for o, name := range memberOutcomeNames {
			m.calls[o] = calls.WithLabelValues(m.Name, name)
		}
		m.to = make([]prometheus.Counter, len(f.members))
		for j := range f.members {
			if j != i {
				m.to[j] = failovers.WithLabelValues(m.Name, f.members[j].Name)
			}
		}
	}
	return nil
}

// Close unregisters the Failover's collectors. It closes no member. The
// Failover keeps working (FailoverStats still counts). Close is
// idempotent and returns nil.
func (f *Failover) Close() error {
	f.reg.Unregister()
	return nil
}

// MemberStats counts one member's calls by outcome.
type MemberStats struct {
	Name string
	// OK: answered. Errors: answered with an error of its own (final).
	// Unavailable: refused with an *UnavailableError or a degraded reply
	// (the call moved on). Skipped: not called, its breaker open or its
	// pause longer than MaxWait. Canceled: the caller's ctx ended.
	OK, Errors, Unavailable, Skipped, Canceled uint64
}

// FailoverStats is a snapshot of a Failover's counters.
type FailoverStats struct {
	// Members, in the chain's order.
	Members []MemberStats
	// Failovers counts moves from one member to the next.
	Failovers uint64
	// Fallbacks counts calls for which every member was out.
	Fallbacks uint64
}

// Stats returns a snapshot of the Failover's counters. It does no I/O.
func (f *Failover) Stats() FailoverStats {
	s := FailoverStats{Members: make([]MemberStats, len(f.members)), Failovers: f.failovers.Load(), Fallbacks: f.fallbacks.Load()}
	for i := range f.members {
		m := &f.members[i]
		s.Members[i] = MemberStats{Name: m.Name, OK: m.n[memberOK].Load(), Errors: m.n[memberError].Load(),
			Unavailable: m.n[memberUnavailable].Load(), Skipped: m.n[memberSkipped].Load(), Canceled: m.n[memberCanceled].Load()}
	}
	return s
}

func (m *failoverMember) count(o int) {
	m.n[o].Add(1)
	if c := m.calls[o]; c != nil {
		c.Inc()
	}
}

// first is the index of the member a call starts at.
func (f *Failover) first() int {
	if !f.weighted {
		return 0
	}
	r := f.cfg.Intn(f.total)
	for i := range f.members {
		if r < f.members[i].Weight {
			return i
		}
		r -= f.members[i].Weight
	}
	return 0
}

// next is the member tried after member i in a call that started at
// start: start first, then the others in the chain's order. It returns
// -1 when none is left.
func (f *Failover) next(start, i int) int {
	switch {
	case i < 0:
		return start
	case i == start:
		i = -1
	}
	i++
	if i == start {
		i++
	}
	if i >= len(f.members) {
		return -1
	}
	return i
}

// skip reports whether a *Client member is out without a call: its
// breaker is open as this process sees it (a passed deadline means
// half-open: the member gets the call, which may be its probe), or it is
// paused past MaxWait. The reason is what its call would have returned.
func (f *Failover) skip(m *failoverMember, now time.Time) *UnavailableError {
	if m.client == nil {
		return nil
	}
	st := m.client.br.peek()
	ms := now.UnixMilli()
	if st.until != 0 && ms < st.until {
		return &UnavailableError{Reason: ReasonBreakerOpen, RetryAfter: time.Duration(st.until-ms) * time.Millisecond}
	}
	if wait := time.Duration(st.pause-ms) * time.Millisecond; st.pause > ms && wait > f.cfg.MaxWait {
		return &UnavailableError{Reason: ReasonRateLimited, RetryAfter: wait}
	}
	return nil
}

// attempt is what one member's call ended with, as the chain sees it.
type attempt int

const (
	attemptFinal attempt = iota // answered, or an error that no other member would change
	attemptNext                 // out: try the next member
)

// judge sorts a member's error. A nil error is final.
func judge(ctx context.Context, err error) (attempt, int) {
	switch {
	case err == nil:
		return attemptFinal, memberOK
	case ctx.Err() != nil:
		return attemptFinal, memberCanceled
	case asUnavailable(err) != nil:
		return attemptNext, memberUnavailable
	default:
		// A client error of the upstream, a *TooLargeError, the learner's
		// *RateLimitError: another member would not answer differently,
		// or must not be charged again.
		return attemptFinal, memberError
	}
}

// asUnavailable returns err's *UnavailableError, or nil.
func asUnavailable(err error) *UnavailableError {
	var u *UnavailableError
	if errors.As(err, &u) {
		return u
	}
	return nil
}

// memberCtx returns the ctx for the next member: a call's per-learner
// quota is spent once, by the first member that made upstream attempts
// (a member that made none gave it back or never spent it).
func memberCtx(ctx context.Context, err error) context.Context {
	if quotaOf(ctx) == nil {
		return ctx
	}
	if u := asUnavailable(err); u != nil && u.Attempts > 0 {
		return withoutQuota(ctx)
	}
	return ctx
}

// CreateChatCompletion sends req to the first usable member, with the
// member's Model, and moves to the next one when it is out: skipped
// (breaker open, paused past MaxWait), an *UnavailableError, or a
// degraded reply. Any other answer is final, error or not. The response's
// Header() names the member (MemberHeader, AnsweredBy). When every member
// is out it returns the fallback reply (IsDegraded reports true; its
// DegradedHeader holds the last member's Reason) or, with
// DisableFallback, the last member's *UnavailableError.
func (f *Failover) CreateChatCompletion(ctx context.Context, req openai.ChatCompletionRequest) (openai.ChatCompletionResponse, error) {
	resp, m, last, _, err := route(f, ctx, req, func(ctx context.Context, m *failoverMember, r openai.ChatCompletionRequest) (openai.ChatCompletionResponse, http.Header, error) {
		resp, err := m.Completer.CreateChatCompletion(ctx, r)
		if err == nil && IsDegraded(resp) {
			return resp, resp.Header(), nil
		}
		return resp, nil, err
	})
	switch {
	case m != nil && err != nil:
		return resp, err
	case m != nil:
		if h := resp.Header(); h != nil {
			h[MemberHeader] = m.header
		} else {
			resp.SetHeader(http.Header{MemberHeader: m.header})
		}
		return resp, nil
	case f.cfg.DisableFallback:
		return openai.ChatCompletionResponse{}, err
	}
	return f.fb.fallbackResponse(req, last), nil
}

// CreateChatCompletionStream opens a stream on the first usable member,
// as CreateChatCompletion does. A stream fails over only before it is
// returned (the member's CreateChatCompletionStream failed, before the
// first byte of the reply): once a member returned a stream, a failure
// reaches the caller through Recv. The stream's Header() names the
// member. When every member is out it returns the fallback stream
// (IsDegradedStream reports true) or, with DisableFallback, the last
// member's *UnavailableError.
func (f *Failover) CreateChatCompletionStream(ctx context.Context, req openai.ChatCompletionRequest) (*openai.ChatCompletionStream, error) {
	s, m, last, ctx, err := route(f, ctx, req, func(ctx context.Context, m *failoverMember, r openai.ChatCompletionRequest) (*openai.ChatCompletionStream, http.Header, error) {
		s, err := m.Completer.CreateChatCompletionStream(ctx, r)
		if err == nil && IsDegradedStream(s) {
			_ = s.Close()
			return nil, s.Header(), nil
		}
		return s, nil, err
	})
	switch {
	case m != nil && err != nil:
		return nil, err
	case m != nil:
		if s != nil && s.Header() != nil {
			s.Header()[MemberHeader] = m.header
		}
		return s, nil
	case f.cfg.DisableFallback:
		return nil, err
	}
	fs, ferr := f.fb.fallbackStream(ctx, req, last)
	if ferr != nil {
		return nil, err
	}
	return fs, nil
}

// route sends req, with each member's Model, to the members in order
// through call, which returns the member's answer, or the header of a
// degraded reply (nil for any other answer) and its error. A final answer
// comes back with its member m. When every member is out, m is nil and
// route returns the last member's error, its *UnavailableError and the
// ctx for the fallback.
func route[T any](f *Failover, ctx context.Context, req openai.ChatCompletionRequest,
	call func(context.Context, *failoverMember, openai.ChatCompletionRequest) (T, http.Header, error),
) (res T, m *failoverMember, last *UnavailableError, outCtx context.Context, err error) {
	start := f.first()
	prev := -1
	for i := f.next(start, -1); i >= 0; i = f.next(start, i) {
		m := &f.members[i]
		f.moved(prev, i)
		prev = i
		if u := f.skip(m, f.cfg.Now()); u != nil {
			m.count(memberSkipped)
			last, err = u, u
			continue
		}
		r := req
		if m.Model != "" {
			r.Model = m.Model
		}
		ans, degraded, cerr := call(ctx, m, r)
		if degraded != nil {
			last = &UnavailableError{Reason: DegradedReason(degraded)}
			err = last
			m.count(memberUnavailable)
			continue
		}
		next, o := judge(ctx, cerr)
		m.count(o)
		if next == attemptFinal {
			return ans, m, nil, ctx, cerr
		}
		last, err = asUnavailable(cerr), cerr
		ctx = memberCtx(ctx, cerr)
	}
	f.exhausted()
	var zero T
	return zero, nil, last, ctx, err
}

// moved counts a failover from member from (-1: the call's first member)
// to member to.
func (f *Failover) moved(from, to int) {
	if from < 0 {
		return
	}
	f.failovers.Add(1)
	if c := f.members[from].to; c != nil {
		c[to].Inc()
	}
}

func (f *Failover) exhausted() {
	f.fallbacks.Add(1)
	if f.fbCounter != nil {
		f.fbCounter.Inc()
	}
}
