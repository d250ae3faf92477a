package contextcache

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatscale/chatscale/internal/prom"
)

// subsystem is the part of every metric name after the namespace.
const subsystem = "contextcache"

// collector exports a Cache's Stats as Prometheus metrics, read at scrape
// time so that the hot path pays nothing for them.
type collector struct {
	c       *Cache
	metrics []metric
}

type metric struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(Stats) float64
}

// newCollector returns the collector of c, with the names and constant
// labels of o: <Namespace>_contextcache_<name>.
func newCollector(c *Cache, o prom.Opts) *collector {
	counter := func(name, help string, labels prometheus.Labels, v func(Stats) uint64) metric {
		return metric{
			desc:  prometheus.NewDesc(o.Name(subsystem, name), help, nil, labels),
			typ:   prometheus.CounterValue,
			value: func(s Stats) float64 { return float64(v(s)) },
		}
	}
	return &collector{c: c, metrics: []metric{
		counter("hits_total", "Gets answered by a fresh copy, by tier.", o.Labels("tier", "l1"),
			func(s Stats) uint64 { return s.L1Hits }),
		counter("hits_total", "Gets answered by a fresh copy, by tier.", o.Labels("tier", "l2"),
			func(s Stats) uint64 { return s.L2Hits }),
		counter("negative_hits_total", "Not-found answers taken from L1 or L2.", o.Labels(),
			func(s Stats) uint64 { return s.NegativeHits }),
		counter("misses_total", "Gets that found no fresh L1 copy.", o.Labels(),
			func(s Stats) uint64 { return s.Misses }),
		counter("loads_total", "Calls of the Source.", o.Labels(),
			func(s Stats) uint64 { return s.Loads }),
		counter("load_errors_total", "Source calls that failed.", o.Labels(),
			func(s Stats) uint64 { return s.LoadErrors }),
		counter("not_found_total", "Source calls that found no transcript.", o.Labels(),
			func(s Stats) uint64 { return s.NotFound }),
		counter("stale_served_total", "Stale copies served because the Source failed.", o.Labels(),
			func(s Stats) uint64 { return s.StaleServes }),
		counter("source_skips_total", "Loads answered without the Source because it failed for the same key moments ago.", o.Labels(),
			func(s Stats) uint64 { return s.SourceSkips }),
		counter("lock_waits_total", "Loads that waited for another instance's lock.", o.Labels(),
			func(s Stats) uint64 { return s.LockWaits }),
		counter("lock_timeouts_total", "Waits for another instance's load that ran out.", o.Labels(),
			func(s Stats) uint64 { return s.LockTimeouts }),
		counter("redis_errors_total", "Failed Redis calls.", o.Labels(),
			func(s Stats) uint64 { return s.RedisErrors }),
		counter("invalidations_total", "Invalidate calls on this instance.", o.Labels(),
			func(s Stats) uint64 { return s.Invalidations }),
		counter("invalidations_received_total", "Invalidation messages applied.", o.Labels(),
			func(s Stats) uint64 { return s.InvalidationsReceived }),
		{
			desc:  prometheus.NewDesc(o.Name(subsystem, "l1_entries"), "Entries in L1 (estimate).", nil, o.Labels()),
			typ:   prometheus.GaugeValue,
			value: func(s Stats) float64 { return float64(s.L1Entries) },
		},
		{
			desc:  prometheus.NewDesc(o.Name(subsystem, "l1_bytes"), "Estimated bytes held by L1.", nil, o.Labels()),
			typ:   prometheus.GaugeValue,
			value: func(s Stats) float64 { return float64(s.L1Bytes) },
		},
	}}
}

// Describe implements prometheus.Collector.
func (m *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, x := range m.metrics {
		ch <- x.desc
	}
}

// Collect implements prometheus.Collector.
func (m *collector) Collect(ch chan<- prometheus.Metric) {
	s := m.c.Stats()
	for _, x := range m.metrics {
		ch <- prometheus.MustNewConstMetric(x.desc, x.typ, x.value(s))
	}
}
