package main

import (
	"context"
	"io"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
	"go.opentelemetry.io/otel/trace/noop"
)

// turnTiming collects, for one turn, the time spent inside the upstream
// HTTP calls and waiting for the shared budgets. The turn's context
// carries it to the RoundTripper and to the spans below.
type turnTiming struct {
	upstream atomic.Int64 // ns, request sent to body read
	budget   atomic.Int64 // ns, chat.budget spans
	attempts atomic.Int64
}

type timingKey struct{}

func withTiming(ctx context.Context, t *turnTiming) context.Context {
	return context.WithValue(ctx, timingKey{}, t)
}

func timingOf(ctx context.Context) *turnTiming {
	t, _ := ctx.Value(timingKey{}).(*turnTiming)
	return t
}

// timedTransport measures each upstream HTTP call: from the request
// handed to the network to the response body read or closed.
type timedTransport struct{ base http.RoundTripper }

func (t timedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	tt := timingOf(r.Context())
	start := time.Now()
	resp, err := t.base.RoundTrip(r)
	if tt == nil {
		return resp, err
	}
	tt.attempts.Add(1)
	if err != nil {
		tt.upstream.Add(int64(time.Since(start)))
		return resp, err
	}
	resp.Body = &timedBody{ReadCloser: resp.Body, done: func() { tt.upstream.Add(int64(time.Since(start))) }}
	return resp, nil
}

type timedBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *timedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.once.Do(b.done)
	}
	return n, err
}

func (b *timedBody) Close() error {
	b.once.Do(b.done)
	return b.ReadCloser.Close()
}

// spanTimer is a minimal OpenTelemetry TracerProvider whose spans record
// nothing but the duration of the chat.budget spans (the Client's wait for
// the shared budgets) into the turn's turnTiming.
type spanTimer struct{ embedded.TracerProvider }

func (p *spanTimer) Tracer(string, ...trace.TracerOption) trace.Tracer { return timerTracer{p: p} }

type timerTracer struct {
	embedded.Tracer
	p *spanTimer
}

func (t timerTracer) Start(ctx context.Context, name string, _ ...trace.SpanStartOption) (context.Context, trace.Span) {
	s := &timerSpan{p: t.p}
	if name == "chat.budget" {
		s.tt, s.start = timingOf(ctx), time.Now()
	}
	return trace.ContextWithSpan(ctx, s), s
}

type timerSpan struct {
	noop.Span
	p     *spanTimer
	tt    *turnTiming
	start time.Time
}

func (s *timerSpan) IsRecording() bool                    { return true }
func (s *timerSpan) TracerProvider() trace.TracerProvider { return s.p }
func (s *timerSpan) End(...trace.SpanEndOption) {
	if s.tt != nil {
		s.tt.budget.Add(int64(time.Since(s.start)))
	}
}

// cmdCounter is a go-redis hook counting the commands a client sends
// (each command of a pipeline or transaction counts), and by name those
// it sends at the top level: not the commands queued between MULTI and
// EXEC, whose time INFO commandstats counts in EXEC's too.
type cmdCounter struct {
	n     atomic.Int64
	mu    sync.Mutex
	names map[string]int64
}

func (c *cmdCounter) add(name string) {
	c.mu.Lock()
	if c.names == nil {
		c.names = make(map[string]int64)
	}
	c.names[name]++
	c.mu.Unlock()
}

// topLevel returns a copy of the top-level counts by name.
func (c *cmdCounter) topLevel() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.names)
}

func (c *cmdCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *cmdCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		c.add(strings.ToLower(cmd.Name()))
		return next(ctx, cmd)
	}
}
func (c *cmdCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(int64(len(cmds)))
		inTx := false
		for _, cmd := range cmds {
			name := strings.ToLower(cmd.Name())
			switch {
			case name == "multi":
				inTx = true
			case name == "exec":
				inTx = false
			case inTx:
				continue
			}
			c.add(name)
		}
		return next(ctx, cmds)
	}
}

// commandStats is INFO commandstats: calls and microseconds of CPU, in
// all and by command.
type commandStats struct {
	Calls, Usec int64
	OK          bool
	byName      map[string][2]int64 // calls, usec
}

func readCommandStats(ctx context.Context, rdb redis.UniversalClient) commandStats {
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return commandStats{}
	}
	s := commandStats{byName: map[string][2]int64{}}
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "cmdstat_") {
			continue
		}
		name, v, _ := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":")
		var st [2]int64
		for _, kv := range strings.Split(v, ",") {
			k, val, _ := strings.Cut(kv, "=")
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "calls":
				s.Calls += n
				st[0] = n
				s.OK = true
			case "usec":
				s.Usec += n
				st[1] = n
			}
		}
		s.byName[name] = st
	}
	return s
}

func (a commandStats) minus(b commandStats) commandStats {
	d := commandStats{Calls: a.Calls - b.Calls, Usec: a.Usec - b.Usec, OK: a.OK && b.OK, byName: map[string][2]int64{}}
	for name, st := range a.byName {
		bs := b.byName[name]
		d.byName[name] = [2]int64{st[0] - bs[0], st[1] - bs[1]}
	}
	return d
}

// scriptsAndTransactions are the commands whose commandstats time
// includes the commands they run, which commandstats counts under their
// own names as well.
var scriptsAndTransactions = map[string]bool{
	"evalsha": true, "evalsha_ro": true, "eval": true, "eval_ro": true, "fcall": true, "fcall_ro": true,
	"exec": true, "multi": true,
}

// topLevelUsec returns the µs Redis spent on the commands clients sent,
// each counted once: a script's or a transaction's whole time, and, of
// every other command, the share of its calls that clients sent at the
// top level (sent, from the clients' hooks) rather than from inside a
// script or a transaction, whose time is already counted. Summing every
// command's usec instead counts a script's commands twice.
func (a commandStats) topLevelUsec(sent map[string]int64) int64 {
	var us int64
	for name, st := range a.byName {
		calls, usec := st[0], st[1]
		switch {
		case calls <= 0:
		case scriptsAndTransactions[name]:
			us += usec
		case sent[name] > 0:
			us += usec * min(sent[name], calls) / calls
		}
	}
	return us
}
