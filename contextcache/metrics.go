package contextcache

import "github.com/prometheus/client_golang/prometheus"

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

func newCollector(c *Cache) *collector {
	counter := func(name, help string, labels prometheus.Labels, v func(Stats) uint64) metric {
		return metric{
			desc:  prometheus.NewDesc("contextcache_"+name, help, nil, labels),
			typ:   prometheus.CounterValue,
			value: func(s Stats) float64 { return float64(v(s)) },
		}
	}
	return &collector{c: c, metrics: []metric{
		counter("hits_total", "Gets answered by a fresh copy, by tier.", prometheus.Labels{"tier": "l1"},
			func(s Stats) uint64 { return s.L1Hits }),
		counter("hits_total", "Gets answered by a fresh copy, by tier.", prometheus.Labels{"tier": "l2"},
			func(s Stats) uint64 { return s.L2Hits }),
		counter("negative_hits_total", "Not-found answers taken from L1 or L2.", nil,
			func(s Stats) uint64 { return s.NegativeHits }),
		counter("misses_total", "Gets that found no fresh L1 copy.", nil,
			func(s Stats) uint64 { return s.Misses }),
		counter("loads_total", "Calls of the Source.", nil,
			func(s Stats) uint64 { return s.Loads }),
		counter("load_errors_total", "Source calls that failed.", nil,
			func(s Stats) uint64 { return s.LoadErrors }),
		counter("not_found_total", "Source calls that found no transcript.", nil,
			func(s Stats) uint64 { return s.NotFound }),
		counter("stale_served_total", "Stale copies served because the Source failed.", nil,
			func(s Stats) uint64 { return s.StaleServes }),
		counter("source_skips_total", "Loads answered without the Source because it failed for the same key moments ago.", nil,
			func(s Stats) uint64 { return s.SourceSkips }),
		counter("lock_waits_total", "Loads that waited for another instance's lock.", nil,
			func(s Stats) uint64 { return s.LockWaits }),
		counter("lock_timeouts_total", "Waits for another instance's load that ran out.", nil,
			func(s Stats) uint64 { return s.LockTimeouts }),
		counter("redis_errors_total", "Failed Redis calls.", nil,
			func(s Stats) uint64 { return s.RedisErrors }),
		counter("invalidations_total", "Invalidate calls on this instance.", nil,
			func(s Stats) uint64 { return s.Invalidations }),
		counter("invalidations_received_total", "Invalidation messages applied.", nil,
			func(s Stats) uint64 { return s.InvalidationsReceived }),
		{
			desc:  prometheus.NewDesc("contextcache_l1_entries", "Entries in L1 (estimate).", nil, nil),
			typ:   prometheus.GaugeValue,
			value: func(s Stats) float64 { return float64(s.L1Entries) },
		},
		{
			desc:  prometheus.NewDesc("contextcache_l1_bytes", "Estimated bytes held by L1.", nil, nil),
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
