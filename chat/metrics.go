package chat

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatscale/chatscale/internal/prom"
)

// outcome is how a call ended, for Stats and the calls metric.
type outcome int

const (
	outOK outcome = iota
	outFallback
	outUnavailable
	outError
	outCanceled
	outRateLimited
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"ok", "fallback", "unavailable", "error", "canceled", "rate_limited"}

// numClasses is the number of class values, for the attempts metric.
const numClasses = int(classExcluded) + 1

// reasons lists every Reason, for the fallbacks metric.
var reasons = []Reason{ReasonBreakerOpen, ReasonBulkheadFull, ReasonRateLimited, ReasonLimiterDown, ReasonQuota, ReasonRetriesSpent}

// metrics feeds Stats and, with a Registerer, Prometheus. The labelled
// series are resolved once in newMetrics, so a call does no label lookup.
type metrics struct {
	n counters

	reg       *prom.Registration              // nil without a Registerer
	calls     [numOutcomes]prometheus.Counter // nil without a Registerer
	attempts  [numClasses]prometheus.Counter
	fallbacks map[Reason]prometheus.Counter
	retries   prometheus.Counter
	denied    prometheus.Counter
	trips     prometheus.Counter
	probes    prometheus.Counter
	wait      prometheus.Histogram
}

// newMetrics registers the collectors on o.Registerer (nil: none), all or
// nothing. Every series carries the constant label client=<name> and
// o.ConstLabels.
func newMetrics(o prom.Opts, name string, c *Client) (*metrics, error) {
	m := &metrics{}
	if o.Registerer == nil {
		return m, nil
	}
	labels := o.Labels("client", name)
	fq := func(n string) string { return o.Name("client", n) }
	calls := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: fq("calls_total"), ConstLabels: labels,
		Help: "Calls by outcome: ok, fallback, unavailable, error, canceled, rate_limited.",
	}, []string{"outcome"})
	attempts := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: fq("attempts_total"), ConstLabels: labels,
		Help: "Upstream attempts by result: ok, retryable, fatal, excluded.",
	}, []string{"result"})
	m.retries = prometheus.NewCounter(prometheus.CounterOpts{
		Name: fq("retries_total"), ConstLabels: labels,
		Help: "Retries sent.",
	})
	m.denied = prometheus.NewCounter(prometheus.CounterOpts{
		Name: fq("retries_denied_total"), ConstLabels: labels,
		Help: "Retries refused by the retry budget.",
	})
	fallbacks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: fq("fallbacks_total"), ConstLabels: labels,
		Help: "Fallback replies by reason.",
	}, []string{"reason"})
	m.trips = prometheus.NewCounter(prometheus.CounterOpts{
		Name: fq("breaker_trips_total"), ConstLabels: labels,
		Help: "Breaker trips published by this instance.",
	})
	m.probes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: fq("breaker_probes_total"), ConstLabels: labels,
		Help: "Half-open probes sent by this instance.",
	})
	m.wait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: fq("limiter_wait_seconds"), ConstLabels: labels,
		Help:    "Time spent waiting for request and token budget per attempt.",
		Buckets: []float64{.001, .01, .05, .1, .5, 1, 2, 5, 10},
	})
	state := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: fq("breaker_state"), ConstLabels: labels,
		Help: "Breaker state as this instance sees it: 0 closed, 1 half-open, 2 open.",
	}, func() float64 { return float64(c.br.state()) })
	inFlight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: fq("in_flight"), ConstLabels: labels,
		Help: "Upstream calls and open streams holding a bulkhead slot.",
	}, func() float64 {
		if c.bulk == nil {
			return 0
		}
		return float64(len(c.bulk))
	})
	reg, err := prom.Register("chat", o.Registerer, calls, attempts, m.retries, m.denied, fallbacks, m.trips, m.probes, m.wait, state, inFlight)
	if err != nil {
		return nil, err
	}
	m.reg = reg
	for o, name := range outcomeNames {
		m.calls[o] = calls.WithLabelValues(name)
	}
	for cls := range numClasses {
		m.attempts[cls] = attempts.WithLabelValues(class(cls).String())
	}
	m.fallbacks = make(map[Reason]prometheus.Counter, len(reasons))
	for _, r := range reasons {
		m.fallbacks[r] = fallbacks.WithLabelValues(string(r))
	}
	return m, nil
}

func (m *metrics) call(o outcome) {
	m.n.calls[o].Add(1)
	if c := m.calls[o]; c != nil {
		c.Inc()
	}
}

func (m *metrics) attempt(cls class) {
	m.n.attempts.Add(1)
	if c := m.attempts[cls]; c != nil {
		c.Inc()
	}
}

func (m *metrics) retry() {
	m.n.retries.Add(1)
	if m.retries != nil {
		m.retries.Inc()
	}
}

func (m *metrics) retryDenied() {
	m.n.retriesDenied.Add(1)
	if m.denied != nil {
		m.denied.Inc()
	}
}

func (m *metrics) fallback(r Reason) {
	if c := m.fallbacks[r]; c != nil {
		c.Inc()
	}
}

func (m *metrics) trip() {
	m.n.trips.Add(1)
	if m.trips != nil {
		m.trips.Inc()
	}
}

func (m *metrics) probe() {
	m.n.probes.Add(1)
	if m.probes != nil {
		m.probes.Inc()
	}
}

func (m *metrics) limiterWait(d time.Duration) {
	m.n.waitNanos.Add(int64(d))
	if m.wait != nil {
		m.wait.Observe(d.Seconds())
	}
}

func (m *metrics) bulkheadFull() { m.n.bulkheadFull.Add(1) }
func (m *metrics) pause()        { m.n.pauses.Add(1) }
func (m *metrics) storeError()   { m.n.storeErrors.Add(1) }
