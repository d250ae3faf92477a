package queue

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/internal/keyspace"
	"github.com/chatscale/chatscale/internal/prom"
)

// Defaults of Config.
const (
	// DefaultPriority is the default Config.DefaultPriority.
	DefaultPriority = "default"
	// DefaultMaxAttempts is the default Config.MaxAttempts.
	DefaultMaxAttempts = 3
	// DefaultTimeout is the default Config.Timeout: a Service's default
	// turn timeout.
	DefaultTimeout = chat.DefaultTurnTimeout
	// DefaultRetention is the default Config.Retention.
	DefaultRetention = 24 * time.Hour
	// DefaultConcurrency is the default Config.Concurrency. It matches
	// the default chat.Config.MaxInFlight, the bulkhead of a chat.Client:
	// a turn is I/O-bound (it waits on the upstream for seconds and uses
	// microseconds of CPU), so a waiting job costs one goroutine, and
	// what bounds the upstream traffic is the shared request and token
	// budgets, not the number of jobs a worker runs.
	DefaultConcurrency = 256
	// DefaultPollInterval is the default Config.PollInterval.
	DefaultPollInterval = 100 * time.Millisecond
	// DefaultRetryCheckInterval is the default Config.RetryCheckInterval.
	DefaultRetryCheckInterval = time.Second
	// DefaultRetryBase is the default Config.RetryBase.
	DefaultRetryBase = time.Second
	// DefaultRetryMax is the default Config.RetryMax.
	DefaultRetryMax = time.Minute
	// DefaultDepthEvery is the default Config.DepthEvery.
	DefaultDepthEvery = 15 * time.Second
	// DefaultWaitPoll is the default Config.WaitPoll.
	DefaultWaitPoll = 50 * time.Millisecond
	// DefaultWaitMaxPoll is the default Config.WaitMaxPoll.
	DefaultWaitMaxPoll = time.Second
)

// MaxNameBytes bounds a priority name and the ID part of a job ID.
const MaxNameBytes = 64

// DefaultQueues returns the default Config.Queues: "high", "default" and
// "low" with weights 6, 3 and 1.
func DefaultQueues() map[string]int {
	return map[string]int{"high": 6, DefaultPriority: 3, "low": 1}
}

// Config configures a Client and a Worker. Give both the same Prefix and
// Queues: a Client enqueues to the queues they name, a Worker serves them.
// The zero value works.
type Config struct {
	// Prefix starts the name of every queue: a priority p is the asynq
	// queue <Prefix>queue:<p> ("chatscale:queue:default" by default), whose
	// keys asynq names asynq:{<queue>}:… (see the package doc). Empty
	// means chatscale.DefaultPrefix. It must not contain '{' or '}'.
	Prefix string
	// Queues maps each priority to its weight: a Worker whose queues all
	// hold jobs takes them from each queue in proportion to its weight
	// (or, with StrictPriority, from the heaviest non-empty queue first).
	// Names are 1 to MaxNameBytes ASCII letters, digits, '_' or '-';
	// weights are positive. Nil means DefaultQueues().
	Queues map[string]int
	// DefaultPriority is the priority of a job enqueued without the
	// Priority option. Empty means DefaultPriority ("default"); it must
	// be one of Queues.
	DefaultPriority string
	// StrictPriority makes a Worker empty the heaviest queue before
	// taking from the next one. A low priority can then starve.
	StrictPriority bool

	// MaxAttempts is the number of attempts of a job, the first included,
	// when Enqueue is not given the MaxAttempts option. Zero means
	// DefaultMaxAttempts (3); negative is an error.
	MaxAttempts int
	// Timeout bounds each attempt of a job when Enqueue is not given the
	// Timeout option. Zero means DefaultTimeout (60 s); negative is an
	// error.
	Timeout time.Duration
	// Retention is how long a finished job's Status (and Response) stays
	// readable, and its idempotency key taken. Zero means
	// DefaultRetention (24 h); negative is an error. asynq keeps it in
	// whole seconds, at least one.
	Retention time.Duration
	// MaxMessageBytes bounds Request.Message at Enqueue. Zero means
	// chat.DefaultMaxMessageBytes; negative is an error. Set it to the
	// Service's ServiceConfig.MaxMessageBytes when that differs.
	MaxMessageBytes int
	// WaitPoll is Wait's first interval between two reads of a job's
	// status; it doubles up to WaitMaxPoll. Zero means DefaultWaitPoll
	// (50 ms) and DefaultWaitMaxPoll (1 s); negative is an error.
	WaitPoll, WaitMaxPoll time.Duration

	// Concurrency is the number of jobs a Worker runs at once. Zero means
	// DefaultConcurrency (256); negative is an error. Keep it at or below
	// the MaxInFlight of the chat.Client behind the Worker's Service: a
	// job over the bulkhead waits BulkheadWait and is re-queued.
	Concurrency int
	// PollInterval is how often an idle Worker looks for a job (asynq's
	// TaskCheckInterval, with jitter): the delay before a job enqueued
	// into empty queues is picked up. Each look is one Redis script per
	// queue. Zero means DefaultPollInterval (100 ms); negative is an
	// error.
	PollInterval time.Duration
	// RetryCheckInterval is how often a Worker moves the jobs whose retry
	// time has come back to their queues (asynq's
	// DelayedTaskCheckInterval). Zero means DefaultRetryCheckInterval
	// (1 s); negative is an error.
	RetryCheckInterval time.Duration
	// RetryBase and RetryMax shape the backoff between the attempts of a
	// job that failed: the n-th retry waits a random time in [d/2, d)
	// with d = min(RetryMax, RetryBase·2^(n-1)), and at least the
	// upstream's RetryAfter when it gave one. Zero means DefaultRetryBase
	// (1 s) and DefaultRetryMax (1 min); negative is an error. asynq
	// keeps retry times in whole seconds: every delay is rounded up to
	// the next second.
	RetryBase, RetryMax time.Duration
	// DepthEvery is how old the queue depths a scrape returns may get: a
	// scrape that finds them older starts one background read (see
	// Worker). Zero means DefaultDepthEvery (15 s); negative is an error.
	DepthEvery time.Duration

	// Registerer receives the metrics of a Client or a Worker; Close
	// unregisters them. Nil means no metrics.
	Registerer prometheus.Registerer
	// Namespace starts every metric name. Empty means
	// chatscale.DefaultNamespace ("ai_chat"), as in
	// ai_chat_queue_jobs_total.
	Namespace string
	// ConstLabels are added to every series; they must not hold the
	// labels the package sets: "queue", "state", "status" and "result".
	// Two Workers (or Clients) can share a Registerer when their
	// ConstLabels differ.
	ConstLabels prometheus.Labels
	// Logger gets the Worker's warnings and asynq's log lines (no
	// message text, no secret). Nil means discard.
	Logger *slog.Logger
	// Now is the clock of enqueue times and job latencies. It must follow
	// the wall clock: asynq's own times do. Nil means time.Now.
	Now func() time.Time
}

const pkg = "chat/queue"

func configError(field, reason string) error {
	return &chatscale.ConfigError{Package: pkg, Field: field, Reason: reason}
}

func (c Config) withDefaults() (Config, error) {
	if c.Prefix == "" {
		c.Prefix = chatscale.DefaultPrefix
	}
	if err := keyspace.Check(pkg, "Config.Prefix", c.Prefix); err != nil {
		return c, err
	}
	if c.Queues == nil {
		c.Queues = DefaultQueues()
	} else {
		c.Queues = maps.Clone(c.Queues)
	}
	if len(c.Queues) == 0 {
		return c, configError("Config.Queues", "empty")
	}
	for _, name := range slices.Sorted(maps.Keys(c.Queues)) {
		if !validName(name) {
			return c, configError("Config.Queues", fmt.Sprintf("%q: not 1 to %d ASCII letters, digits, '_' or '-'", name, MaxNameBytes))
		}
		if w := c.Queues[name]; w <= 0 {
			return c, configError("Config.Queues", fmt.Sprintf("%q: weight %d not positive", name, w))
		}
	}
	if c.DefaultPriority == "" {
		c.DefaultPriority = DefaultPriority
	}
	if _, ok := c.Queues[c.DefaultPriority]; !ok {
		return c, configError("Config.DefaultPriority", fmt.Sprintf("%q: not in Queues", c.DefaultPriority))
	}
	ints := [...]struct {
		field string
		p     *int
		def   int
	}{
		{"Config.MaxAttempts", &c.MaxAttempts, DefaultMaxAttempts},
		{"Config.MaxMessageBytes", &c.MaxMessageBytes, chat.DefaultMaxMessageBytes},
		{"Config.Concurrency", &c.Concurrency, DefaultConcurrency},
	}
	for _, f := range ints {
		if *f.p < 0 {
			return c, configError(f.field, fmt.Sprintf("%d: negative", *f.p))
		}
		if *f.p == 0 {
			*f.p = f.def
		}
	}
	durs := [...]struct {
		field string
		p     *time.Duration
		def   time.Duration
	}{
		{"Config.Timeout", &c.Timeout, DefaultTimeout},
		{"Config.Retention", &c.Retention, DefaultRetention},
		{"Config.WaitPoll", &c.WaitPoll, DefaultWaitPoll},
		{"Config.WaitMaxPoll", &c.WaitMaxPoll, DefaultWaitMaxPoll},
		{"Config.PollInterval", &c.PollInterval, DefaultPollInterval},
		{"Config.RetryCheckInterval", &c.RetryCheckInterval, DefaultRetryCheckInterval},
		{"Config.RetryBase", &c.RetryBase, DefaultRetryBase},
		{"Config.RetryMax", &c.RetryMax, DefaultRetryMax},
		{"Config.DepthEvery", &c.DepthEvery, DefaultDepthEvery},
	}
	for _, f := range durs {
		if *f.p < 0 {
			return c, configError(f.field, f.p.String()+": negative")
		}
		if *f.p == 0 {
			*f.p = f.def
		}
	}
	if c.WaitMaxPoll < c.WaitPoll {
		c.WaitMaxPoll = c.WaitPoll
	}
	if c.RetryMax < c.RetryBase {
		c.RetryMax = c.RetryBase
	}
	if err := prom.CheckLabels(pkg, c.ConstLabels, "queue", "state", "status", "result"); err != nil {
		return c, err
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// QueueName returns the asynq queue of priority p under c.Prefix:
// <Prefix>queue:<p>. asynq's tools (its CLI, asynqmon) show queues by
// this name.
func (c Config) QueueName(p string) string {
	prefix := c.Prefix
	if prefix == "" {
		prefix = chatscale.DefaultPrefix
	}
	return prefix + "queue:" + p
}

// priorities returns the priority names, heaviest first, then by name.
func (c Config) priorities() []string {
	names := slices.Collect(maps.Keys(c.Queues))
	slices.SortFunc(names, func(a, b string) int {
		if c.Queues[a] != c.Queues[b] {
			return c.Queues[b] - c.Queues[a]
		}
		if a < b {
			return -1
		}
		return 1
	})
	return names
}

// validName reports whether s is 1 to MaxNameBytes ASCII letters, digits,
// '_' or '-'.
func validName(s string) bool {
	if s == "" || len(s) > MaxNameBytes {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch b := s[i]; {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9', b == '_', b == '-':
		default:
			return false
		}
	}
	return true
}

func (c Config) promOpts() prom.Opts {
	return prom.Opts{Registerer: c.Registerer, Namespace: c.Namespace, ConstLabels: c.ConstLabels}
}
