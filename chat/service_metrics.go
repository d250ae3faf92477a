package chat

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/internal/prom"
)

// turnStatus is how a turn ended, the status label of
// ai_chat_requests_total.
type turnStatus int

const (
	stOK turnStatus = iota
	stDegraded
	stInvalid
	stRateLimited
	stUnavailable
	stCanceled
	stError
	numStatuses
)

var statusNames = [numStatuses]string{"ok", "degraded", "invalid", "rate_limited", "unavailable", "canceled", "error"}

func statusOfTurn(err error, degraded bool) turnStatus {
	switch {
	case err == nil && degraded:
		return stDegraded
	case err == nil:
		return stOK
	case errors.Is(err, ErrInvalidRequest):
		return stInvalid
	case errors.Is(err, ErrRateLimited):
		return stRateLimited
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrClosed):
		return stUnavailable
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return stCanceled
	}
	return stError
}

// transcriptTier is the tier label of ai_chat_transcripts_total.
type transcriptTier int

const (
	tierL1 transcriptTier = iota
	tierL2
	tierSource
	tierStale
	tierMissing
	tierUnavailable
	numTiers
)

var tierNames = [numTiers]string{"l1", "l2", "source", "stale", "missing", "unavailable"}

func tierOf(t contextcache.Tier) transcriptTier {
	switch t {
	case contextcache.TierL1:
		return tierL1
	case contextcache.TierL2:
		return tierL2
	}
	return tierSource
}

// serviceReasons are the degraded reasons with a series of their own.
var serviceReasons = []Reason{
	ReasonThreadsDown, ReasonTranscriptDown, ReasonNoTranscript, ReasonStaleTranscript, ReasonStreamFailed, ReasonNotReplicated,
	ReasonBreakerOpen, ReasonBulkheadFull, ReasonRateLimited, ReasonLimiterDown, ReasonQuota, ReasonRetriesSpent,
}

// serviceMetrics holds a Service's collectors, their series resolved once.
type serviceMetrics struct {
	reg         *prom.Registration
	requests    [numStatuses]prometheus.Counter
	duration    prometheus.Histogram
	transcripts [numTiers]prometheus.Counter
	prompt      prometheus.Counter
	cached      prometheus.Counter
	completion  prometheus.Counter
	degraded    map[Reason]prometheus.Counter
	degradedVec *prometheus.CounterVec
	active      *activeGauge
	// The answer cache's, registered when it is on.
	answerHits   [numAnswerTiers]prometheus.Counter
	answerMisses prometheus.Counter
	answerSaved  [2]prometheus.Counter // prompt, completion
	answerErrors prometheus.Counter
}

func newServiceMetrics(o prom.Opts, s *Service) (*serviceMetrics, error) {
	m := &serviceMetrics{}
	if o.Registerer == nil {
		return m, nil
	}
	labels := o.Labels()
	fq := func(n string) string { return o.Name("", n) }
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: fq("requests_total"), ConstLabels: labels,
		Help: "Tutor turns by status: ok, degraded, invalid, rate_limited, unavailable, canceled, error.",
	}, []string{"status"})
	m.duration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: fq("request_duration_seconds"), ConstLabels: labels,
		Help:    "Duration of tutor turns.",
		Buckets: []float64{.1, .5, 1, 2, 5, 10},
	})
	transcripts := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: fq("transcripts_total"), ConstLabels: labels,
		Help: "Transcripts used by turns, by where they came from: l1, l2, source, stale, missing, unavailable.",
	}, []string{"tier"})
	tokens := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: fq("tokens_total"), ConstLabels: labels,
		Help: "Tokens the upstream reported, by kind: prompt, cached_prompt, completion.",
	}, []string{"kind"})
	m.degradedVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: fq("degraded_total"), ConstLabels: labels,
		Help: "Degraded turns by reason.",
	}, []string{"reason"})
	m.active = &activeGauge{
		s: s,
		desc: prometheus.NewDesc(fq("active_threads"),
			"Threads written to within the active window, as the thread store counts them.", nil, labels),
	}
	for i := range m.requests {
		m.requests[i] = requests.WithLabelValues(statusNames[i])
	}
	for i := range m.transcripts {
		m.transcripts[i] = transcripts.WithLabelValues(tierNames[i])
	}
	m.prompt = tokens.WithLabelValues("prompt")
	m.cached = tokens.WithLabelValues("cached_prompt")
	m.completion = tokens.WithLabelValues("completion")
	m.degraded = make(map[Reason]prometheus.Counter, len(serviceReasons))
	for _, r := range serviceReasons {
		m.degraded[r] = m.degradedVec.WithLabelValues(string(r))
	}
	cs := []prometheus.Collector{requests, m.duration, transcripts, tokens, m.degradedVec, m.active}
	if s.answers != nil {
		cs = append(cs, m.answerCollectors(fq, labels)...)
	}
	reg, err := prom.Register("chat", o.Registerer, cs...)
	if err != nil {
		return nil, err
	}
	m.reg = reg
	return m, nil
}

func (m *serviceMetrics) turn(st turnStatus, took time.Duration, r *Response) {
	if m.reg == nil {
		return
	}
	m.requests[st].Inc()
	m.duration.Observe(took.Seconds())
	if st != stOK && st != stDegraded {
		return
	}
	m.prompt.Add(float64(r.Usage.PromptTokens))
	m.cached.Add(float64(r.Usage.CachedPromptTokens))
	m.completion.Add(float64(r.Usage.CompletionTokens))
	for _, reason := range r.Reasons {
		c, ok := m.degraded[reason]
		if !ok {
			c = m.degradedVec.WithLabelValues(string(reason))
		}
		c.Inc()
	}
}

// answerCollectors makes the answer cache's collectors.
func (m *serviceMetrics) answerCollectors(fq func(string) string, labels prometheus.Labels) []prometheus.Collector {
	hits := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: fq("answer_cache_hits_total"), ConstLabels: labels,
		Help: "Turns answered from the answer cache, by tier: l1 (this process), l2 (Redis).",
	}, []string{"tier"})
	misses := prometheus.NewCounter(prometheus.CounterOpts{
		Name: fq("answer_cache_misses_total"), ConstLabels: labels,
		Help: "Turns that looked the answer cache up and asked the upstream.",
	})
	saved := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: fq("answer_cache_saved_tokens_total"), ConstLabels: labels,
		Help: "Upstream tokens the answer cache's hits did not spend, by kind: prompt, completion.",
	}, []string{"kind"})
	errs := prometheus.NewCounter(prometheus.CounterOpts{
		Name: fq("answer_cache_redis_errors_total"), ConstLabels: labels,
		Help: "Failed Redis calls of the answer cache.",
	})
	for i := range m.answerHits {
		m.answerHits[i] = hits.WithLabelValues(answerTierNames[i])
	}
	m.answerSaved[0] = saved.WithLabelValues("prompt")
	m.answerSaved[1] = saved.WithLabelValues("completion")
	m.answerMisses, m.answerErrors = misses, errs
	return []prometheus.Collector{hits, misses, saved, errs}
}

func (m *serviceMetrics) answerHit(t answerTier, a *answer) {
	if m.answerMisses != nil {
		m.answerHits[t].Inc()
		m.answerSaved[0].Add(float64(a.Prompt))
		m.answerSaved[1].Add(float64(a.Completion))
	}
}

func (m *serviceMetrics) answerMiss() {
	if m.answerMisses != nil {
		m.answerMisses.Inc()
	}
}

func (m *serviceMetrics) answerRedisError() {
	if m.answerErrors != nil {
		m.answerErrors.Inc()
	}
}

func (m *serviceMetrics) transcript(t transcriptTier) {
	if m.reg != nil {
		m.transcripts[t].Inc()
	}
}

func (m *serviceMetrics) unregister() {
	if m.reg != nil {
		m.reg.Unregister()
	}
}

// wait waits for a running refresh of the active-threads gauge.
func (m *serviceMetrics) wait() {
	if m.active != nil {
		m.active.mu.Lock()
		m.active.closed = true
		m.active.mu.Unlock()
		m.active.refreshing.Wait()
	}
}

// activeGauge is ai_chat_active_threads. A scrape returns the last count
// at once; when it is older than ActiveEvery, one background refresh
// reads the store again. The first scrape waits for the first count, at
// most activeTimeout.
type activeGauge struct {
	s    *Service
	desc *prometheus.Desc

	mu         sync.Mutex
	value      float64
	fetched    time.Time
	have       bool
	running    bool
	closed     bool // no refresh starts after Close
	refreshing sync.WaitGroup
}

// activeTimeout bounds one read of the active count.
const activeTimeout = 2 * time.Second

func (g *activeGauge) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

func (g *activeGauge) Collect(ch chan<- prometheus.Metric) {
	now := g.s.cfg.Now()
	g.mu.Lock()
	have, stale := g.have, now.Sub(g.fetched) >= g.s.cfg.ActiveEvery || now.Before(g.fetched)
	start := stale && !g.running && !g.closed
	if start {
		g.running = true
		g.refreshing.Add(1)
	}
	g.mu.Unlock()
	if start {
		if have {
			go g.refresh(now)
		} else {
			g.refresh(now)
		}
	}
	g.mu.Lock()
	v, have := g.value, g.have
	g.mu.Unlock()
	if have {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, v)
	}
}

func (g *activeGauge) refresh(now time.Time) {
	defer g.refreshing.Done()
	ctx, cancel := context.WithTimeout(context.Background(), activeTimeout)
	n, err := g.s.cfg.Threads.Active(ctx, g.s.cfg.ActiveWithin)
	cancel()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.running = false
	if err != nil {
		g.fetched = now // try again after ActiveEvery, not on every scrape
		g.s.log.Warn("chat: counting active threads", "err", err)
		return
	}
	g.value, g.fetched, g.have = float64(n), now, true
}
