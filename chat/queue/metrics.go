package queue

import (
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatscale/chatscale/internal/prom"
)

// enqResult is the result label of ai_chat_queue_enqueued_total.
type enqResult int

const (
	enqNew enqResult = iota
	enqDuplicate
	enqInvalid
	enqError
	numEnqResults
)

var enqNames = [numEnqResults]string{"new", "duplicate", "invalid", "error"}

// otherQueue is the queue label of an Enqueue with an unknown priority.
const otherQueue = "other"

type clientMetrics struct {
	reg    *prom.Registration
	counts map[string]*[numEnqResults]prometheus.Counter
}

func newClientMetrics(cfg Config) (*clientMetrics, error) {
	m := &clientMetrics{}
	o := cfg.promOpts()
	if o.Registerer == nil {
		return m, nil
	}
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: o.Name("queue", "enqueued_total"), ConstLabels: o.Labels(),
		Help: "Enqueue calls by priority and result: new, duplicate, invalid, error.",
	}, []string{"queue", "result"})
	m.counts = make(map[string]*[numEnqResults]prometheus.Counter, len(cfg.Queues)+1)
	for _, q := range append(cfg.priorities(), otherQueue) {
		var cs [numEnqResults]prometheus.Counter
		for i := range cs {
			cs[i] = vec.WithLabelValues(q, enqNames[i])
		}
		m.counts[q] = &cs
	}
	reg, err := prom.Register(pkg, o.Registerer, vec)
	if err != nil {
		return nil, err
	}
	m.reg = reg
	return m, nil
}

func (m *clientMetrics) enqueued(priority string, r enqResult) {
	if m.reg == nil {
		return
	}
	cs, ok := m.counts[priority]
	if !ok {
		cs = m.counts[otherQueue]
	}
	cs[r].Inc()
}

// runResult is the result label of ai_chat_queue_runs_total.
type runResult int

const (
	runOK runResult = iota
	runDegraded
	runInvalid
	runMalformed
	runRateLimited
	runHeldOff
	runUnavailable
	runTimeout
	runError
	runExhausted
	runAborted
	numRunResults
)

var runNames = [numRunResults]string{
	"ok", "degraded", "invalid", "malformed", "rate_limited", "held_off",
	"unavailable", "timeout", "error", "exhausted", "aborted",
}

func runResultOf(kind Kind, heldOff bool) runResult {
	switch {
	case kind == KindRateLimited:
		return runRateLimited
	case heldOff:
		return runHeldOff
	case kind == KindInvalid:
		return runInvalid
	case kind == KindMalformed:
		return runMalformed
	case kind == KindUnavailable:
		return runUnavailable
	case kind == KindTimeout:
		return runTimeout
	}
	return runError
}

// jobStatus is the status label of the job metrics.
type jobStatus int

const (
	statusDone jobStatus = iota
	statusFailed
	numJobStatuses
)

var statusNames = [numJobStatuses]string{"done", "failed"}

// depthStates are the state label values of ai_chat_queue_depth.
var depthStates = [...]string{"pending", "active", "scheduled", "retry", "archived", "completed"}

type queueSeries struct {
	runs [numRunResults]prometheus.Counter
	jobs [numJobStatuses]prometheus.Counter
	took [numJobStatuses]prometheus.Observer
}

type workerMetrics struct {
	reg    *prom.Registration
	queues map[string]*queueSeries
	other  *queueSeries
	depth  *depthCollector
}

func newWorkerMetrics(w *Worker) (*workerMetrics, error) {
	m := &workerMetrics{}
	o := w.cfg.promOpts()
	if o.Registerer == nil {
		return m, nil
	}
	labels := o.Labels()
	fq := func(n string) string { return o.Name("queue", n) }
	runs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: fq("runs_total"), ConstLabels: labels,
		Help: "Attempts by priority and result: ok, degraded, invalid, malformed, rate_limited, held_off, unavailable, timeout, error, exhausted, aborted.",
	}, []string{"queue", "result"})
	jobs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: fq("jobs_total"), ConstLabels: labels,
		Help: "Jobs that ended on this worker, by priority and status: done, failed.",
	}, []string{"queue", "status"})
	took := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: fq("job_duration_seconds"), ConstLabels: labels,
		Help:    "Time from Enqueue to the end of a job, by priority and status.",
		Buckets: []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
	}, []string{"queue", "status"})
	m.depth = &depthCollector{
		w: w,
		depth: prometheus.NewDesc(fq("depth"),
			"Jobs in the queue by asynq state: pending, active, scheduled, retry, archived, completed.", []string{"queue", "state"}, labels),
		oldest: prometheus.NewDesc(fq("oldest_pending_seconds"),
			"Age of the oldest pending job of the queue.", []string{"queue"}, labels),
	}
	series := func(q string) *queueSeries {
		s := &queueSeries{}
		for i := range s.runs {
			s.runs[i] = runs.WithLabelValues(q, runNames[i])
		}
		for i := range s.jobs {
			s.jobs[i] = jobs.WithLabelValues(q, statusNames[i])
			s.took[i] = took.WithLabelValues(q, statusNames[i])
		}
		return s
	}
	m.queues = make(map[string]*queueSeries, len(w.cfg.Queues))
	for q := range w.cfg.Queues {
		m.queues[q] = series(q)
	}
	m.other = series(otherQueue)
	reg, err := prom.Register(pkg, o.Registerer, runs, jobs, took, m.depth)
	if err != nil {
		return nil, err
	}
	m.reg = reg
	return m, nil
}

func (m *workerMetrics) series(priority string) *queueSeries {
	if s, ok := m.queues[priority]; ok {
		return s
	}
	return m.other
}

func (m *workerMetrics) run(priority string, r runResult) {
	if m.reg != nil {
		m.series(priority).runs[r].Inc()
	}
}

func (m *workerMetrics) ended(priority string, st jobStatus, took time.Duration) {
	if m.reg == nil {
		return
	}
	s := m.series(priority)
	s.jobs[st].Inc()
	if took > 0 {
		s.took[st].Observe(took.Seconds())
	}
}

// close stops the depth readings, waits for a running one and
// unregisters the collectors.
func (m *workerMetrics) close() {
	if m.reg == nil {
		return
	}
	m.depth.mu.Lock()
	m.depth.closed = true
	m.depth.mu.Unlock()
	m.depth.refreshing.Wait()
	m.reg.Unregister()
}

// depthCollector is ai_chat_queue_depth and
// ai_chat_queue_oldest_pending_seconds. A scrape returns the last reading
// at once; when it is older than DepthEvery, one background read asks
// asynq's Inspector again. The first scrape waits for the first reading.
type depthCollector struct {
	w             *Worker
	depth, oldest *prometheus.Desc

	mu         sync.Mutex
	infos      map[string]asynq.QueueInfo // by priority
	fetched    time.Time
	have       bool
	running    bool
	closed     bool
	refreshing sync.WaitGroup
}

func (d *depthCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- d.depth
	ch <- d.oldest
}

func (d *depthCollector) Collect(ch chan<- prometheus.Metric) {
	now := d.w.cfg.Now()
	d.mu.Lock()
	have := d.have
	stale := now.Sub(d.fetched) >= d.w.cfg.DepthEvery || now.Before(d.fetched)
	start := stale && !d.running && !d.closed
	if start {
		d.running = true
		d.refreshing.Add(1)
	}
	d.mu.Unlock()
	if start {
		if have {
			go d.refresh(now)
		} else {
			d.refresh(now)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.have {
		return
	}
	for q, info := range d.infos {
		for _, s := range depthStates {
			var v int
			switch s {
			case "pending":
				v = info.Pending
			case "active":
				v = info.Active
			case "scheduled":
				v = info.Scheduled
			case "retry":
				v = info.Retry
			case "archived":
				v = info.Archived
			case "completed":
				v = info.Completed
			}
			ch <- prometheus.MustNewConstMetric(d.depth, prometheus.GaugeValue, float64(v), q, s)
		}
		ch <- prometheus.MustNewConstMetric(d.oldest, prometheus.GaugeValue, info.Latency.Seconds(), q)
	}
}

// refresh reads every queue's counts. A queue asynq does not list (nothing
// was ever enqueued to it) counts zero everywhere.
func (d *depthCollector) refresh(now time.Time) {
	defer d.refreshing.Done()
	infos := make(map[string]asynq.QueueInfo, len(d.w.cfg.Queues))
	all, failed := d.w.in.Queues()
	known := make(map[string]bool, len(all))
	for _, q := range all {
		known[q] = true
	}
	for p := range d.w.cfg.Queues {
		if failed != nil {
			break
		}
		if !known[d.w.cfg.QueueName(p)] {
			infos[p] = asynq.QueueInfo{}
			continue
		}
		info, err := d.w.in.GetQueueInfo(d.w.cfg.QueueName(p))
		if err != nil {
			failed = err
			continue
		}
		infos[p] = *info
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.running = false
	d.fetched = now // after a failure too: try again after DepthEvery, not at every scrape
	if failed != nil {
		d.w.cfg.Logger.Warn("chat/queue: reading the queue depths", "err", failed.Error())
		return
	}
	d.infos, d.have = infos, true
}
