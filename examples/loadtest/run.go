package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/sashabaranov/go-openai"
	"go.opentelemetry.io/otel/trace"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/ratelimit"
	"github.com/chatscale/chatscale/threads"
)

// options are the command line's settings.
type options struct {
	Learners  int
	PerMinute float64
	Instances int
	Duration  time.Duration
	Seed      uint64

	Courses, Videos int
	ZipfS           float64
	// Common is the share of first turns that ask one of the
	// commonQuestions; Answers turns the answer cache on for every course.
	Common       float64
	Answers      bool
	BaselinePath string // a report of the same setup without -answers

	RPM, TPM        int
	Median, P99     time.Duration
	ReplyTokens     int
	LearnerTimeout  time.Duration
	SourceLatency   time.Duration
	BudgetRPM       int
	BudgetBurst     int
	BudgetTPM       int
	BudgetTokBurst  int
	LearnerRPM      float64
	TurnTimeout     time.Duration
	TranscriptToks  int
	HistoryToks     int
	MaxReply        int
	MaxInFlight     int
	MaxBudgetWait   time.Duration
	RedisURL        string
	Progress        time.Duration
	Targets         []string
	AuthSecret      string
	ServeUpstream   string
	Closed          int
	ClosedRounds    int
	ClosedPerRound  int
	JSONPath        string
	CSVPath         string
	PlotPath        string
	UpstreamWindow  time.Duration // the fake's window; 60 s but in tests
	Out             io.Writer
	StopGrace       time.Duration // how long in-flight turns may run after an interrupt
	UpstreamAddress string        // the fake's listen address; 127.0.0.1:0 by default
	NoTiming        bool          // no per-turn timing spans (the closed loop)
}

func (o *options) defaults() {
	if o.UpstreamWindow == 0 {
		o.UpstreamWindow = time.Minute
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.StopGrace == 0 {
		o.StopGrace = 5 * time.Second
	}
	if o.UpstreamAddress == "" {
		o.UpstreamAddress = "127.0.0.1:0"
	}
	if o.BudgetBurst == 0 {
		o.BudgetBurst = max(1, o.RPM/100)
	}
	if o.BudgetRPM == 0 {
		// GCRA admits at most burst + rate in any 60 s: keep that at the
		// upstream's limit less 1 % for the time a request takes from
		// the budget decision to the upstream, which varies (a pause of
		// the sender shifts some requests later than others).
		o.BudgetRPM = max(1, o.RPM-o.BudgetBurst-o.RPM/100)
	}
	if o.BudgetTokBurst == 0 {
		o.BudgetTokBurst = max(1, o.TPM/100)
	}
	if o.BudgetTPM == 0 {
		o.BudgetTPM = max(1, o.TPM-o.BudgetTokBurst-o.TPM/100)
	}
}

// driver asks one question for a learner.
type driver interface {
	ask(ctx context.Context, l *learner, req chat.Request) turnRecord
}

// runOpen runs the open loop: every learner asks its questions at its
// Poisson arrival times until the duration ends or ctx does (an
// interrupt), then the turns in flight finish (within the learner
// timeout, or StopGrace after an interrupt). It returns the report's turn
// figures and the timeline.
func runOpen(ctx context.Context, o options, cat *catalog, d driver, up *upstream) (*Report, []timelineRow) {
	rep := &Report{}
	// Schedules and learners, from the seed.
	seeds := mrand.New(mrand.NewPCG(o.Seed, 1))
	learners := make([]*learner, o.Learners)
	scheds := make([][]time.Duration, o.Learners)
	seconds := int(math.Ceil(o.Duration.Seconds()))
	offered := make([]int, seconds)
	for i := range learners {
		learners[i] = newLearner("learner-"+strconv.Itoa(i), seeds.Uint64(), cat)
		scheds[i] = arrivals(learners[i].r, o.PerMinute, o.Duration)
		for _, a := range scheds[i] {
			offered[int(a/time.Second)]++
		}
	}
	start := time.Now()
	rep.Started = start
	col := newCollector(start)
	stop := make(chan struct{})
	var stopAt atomic.Int64
	stopAt.Store(int64(o.Duration))
	rep.Stopped = "duration"
	turnCtx, cancelTurns := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelTurns()
	go func() {
		t := time.NewTimer(o.Duration)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			stopAt.Store(int64(time.Since(start)))
			rep.Stopped = "interrupted"
			time.AfterFunc(o.StopGrace, cancelTurns)
		}
		close(stop)
	}()

	var wg sync.WaitGroup
	for i, l := range learners {
		sched := scheds[i]
		wg.Go(func() {
			t := time.NewTimer(time.Hour)
			defer t.Stop()
			for _, a := range sched {
				if wait := time.Until(start.Add(a)); wait > 0 {
					t.Reset(wait)
					select {
					case <-t.C:
					case <-stop:
						return
					}
				}
				select {
				case <-stop:
					return
				default:
				}
				q := l.next(cat, o.Common)
				sent := time.Since(start)
				col.asked.Add(1)
				col.inflight.Add(1)
				rec := d.ask(turnCtx, l, chat.Request{UserID: l.id, CourseID: q.course, VideoURL: q.video, Message: q.message, Position: q.pos, HasPosition: q.hasPos})
				col.inflight.Add(-1)
				rec.asked, rec.queued = sent, sent-a
				rec.first, rec.common = q.first, q.common
				col.add(rec)
			}
		})
	}

	// Progress and the per-second samples.
	done := make(chan struct{})
	var pwg sync.WaitGroup
	pwg.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		sec := 0
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			col.sampleInflight(sec)
			sec++
			if o.Progress > 0 && sec%int(max(1, o.Progress/time.Second)) == 0 {
				el := time.Since(start)
				off := 0
				for s := 0; s < len(offered) && s < int(el/time.Second); s++ {
					off += offered[s]
				}
				p50, p99 := col.percentilesSoFar()
				line := fmt.Sprintf("%4.0fs offered %d done %d in flight %d p50 %s p99 %s degraded %d failed %d",
					el.Seconds(), off, col.done.Load(), col.inflight.Load(), p50.Round(time.Millisecond), p99.Round(time.Millisecond),
					col.degraded.Load(), col.failed.Load())
				if up != nil {
					tot := up.totals(60)
					line += fmt.Sprintf(" | upstream %d, 429s %d", tot.Requests, tot.Rejected)
				}
				fmt.Fprintln(o.Out, line)
			}
		}
	})
	wg.Wait()
	close(done)
	pwg.Wait()
	end := time.Since(start)
	rep.Seconds = end.Seconds()

	col.fill(rep)
	limit := time.Duration(stopAt.Load())
	for _, s := range scheds {
		for _, a := range s {
			if a < limit {
				rep.Turns.Offered++
			}
		}
	}
	rep.Turns.Unasked = rep.Turns.Offered - rep.Turns.Asked
	var upAt func(int) upSecond
	if up != nil {
		t0 := start.Unix()
		upAt = func(sec int) upSecond {
			// Seconds of the run are counted from start; the upstream's
			// from the wall clock's seconds: take the wall second that
			// holds most of the run's second.
			return up.at(t0 + int64(sec) + int64(start.Nanosecond()/5e8))
		}
	}
	rows := col.timeline(offered, upAt, int(math.Ceil(end.Seconds())))
	// turns asked after the first minute, for the transcript figures
	for _, r := range col.records {
		if r.asked >= time.Minute {
			rep.Transcripts.TurnsAfterFirstMin++
		}
	}
	return rep, rows
}

// fillUpstream adds the upstream's figures to rep.
func fillUpstream(rep *Report, up *upstream, o options, start time.Time) {
	tot := up.totals(int(o.UpstreamWindow / time.Second))
	u := &rep.Upstream
	u.URL, u.RPMLimit, u.TPMLimit = up.URL, o.RPM, o.TPM
	u.Requests, u.Tokens, u.Rejected429 = tot.Requests, tot.Tokens, tot.Rejected
	u.BusiestRequests, u.BusiestTokens, u.BusiestSent = tot.BusiestRequests, tot.BusiestTokens, tot.BusiestSent
	if !tot.BusiestRequestsAt.IsZero() {
		u.BusiestAt = math.Round(tot.BusiestRequestsAt.Sub(start.Truncate(time.Second)).Seconds())
	}
}

// cluster is the in-process setup: K instances, each with its own Redis
// client, HTTP client, L1 and Service, on one Redis and one Source.
type cluster struct {
	o        options
	prefix   string
	admin    *redis.Client
	mini     *miniredis.Miniredis
	rdbs     []*redis.Client
	counters []*cmdCounter
	clients  []*chat.Client
	caches   []*contextcache.Cache
	svcs     []*chat.Service
	lims     []*ratelimit.Redis
	regs     []*prometheus.Registry // the instances' metrics, with -answers
	next     atomic.Uint64
	budget   [2]ratelimit.Limit
}

// newRunPrefix returns a key prefix of its own for a run, so that runs on
// one Redis never see each other's threads and budgets.
func newRunPrefix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "loadtest-" + hex.EncodeToString(b[:]) + ":"
}

// redisOptions returns the options of the run's Redis: REDIS_URL, else an
// embedded miniredis.
func redisOptions(url string) (*redis.Options, *miniredis.Miniredis, error) {
	if url == "" {
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			return nil, nil, err
		}
		return &redis.Options{Addr: mr.Addr()}, mr, nil
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	return opt, nil, nil
}

func newCluster(ctx context.Context, o options, src contextcache.Source, upstreamURL string) (_ *cluster, err error) {
	c := &cluster{o: o, prefix: newRunPrefix()}
	defer func() {
		if err != nil {
			c.close(context.WithoutCancel(ctx))
		}
	}()
	opt, mr, err := redisOptions(o.RedisURL)
	if err != nil {
		return nil, err
	}
	c.mini = mr
	c.admin = redis.NewClient(opt)
	c.budget = [2]ratelimit.Limit{
		{Rate: o.BudgetRPM, Period: time.Minute, Burst: o.BudgetBurst},
		{Rate: o.BudgetTPM, Period: time.Minute, Burst: o.BudgetTokBurst},
	}
	var tp trace.TracerProvider // nil: no spans at all
	if !o.NoTiming {
		tp = &spanTimer{}
	}
	for range o.Instances {
		io := *opt
		io.PoolSize = 64
		rdb := redis.NewClient(&io)
		cnt := &cmdCounter{}
		rdb.AddHook(cnt)
		c.rdbs, c.counters = append(c.rdbs, rdb), append(c.counters, cnt)

		store, err := threads.NewRedis(rdb, threads.Config{Prefix: c.prefix})
		if err != nil {
			return nil, err
		}
		cache, err := contextcache.New(src, contextcache.Config{Redis: rdb, Prefix: c.prefix})
		if err != nil {
			return nil, err
		}
		c.caches = append(c.caches, cache)
		// ExpectedInstances: while Redis fails, each instance answers
		// from a local budget of limit/instances, not the whole limit.
		reqs, err := ratelimit.NewRedis(rdb, c.budget[0], ratelimit.Config{Name: "requests", HashTag: "openai", Prefix: c.prefix, ExpectedInstances: o.Instances})
		if err != nil {
			return nil, err
		}
		toks, err := ratelimit.NewRedis(rdb, c.budget[1], ratelimit.Config{Name: "tokens", HashTag: "openai", Prefix: c.prefix, ExpectedInstances: o.Instances})
		if err != nil {
			return nil, err
		}
		c.lims = append(c.lims, reqs, toks)
		var quota ratelimit.Limiter
		if o.LearnerRPM > 0 {
			q, err := ratelimit.NewRedis(rdb, learnerQuota(o.LearnerRPM), ratelimit.Config{Name: "learner", Prefix: c.prefix})
			if err != nil {
				return nil, err
			}
			c.lims = append(c.lims, q)
			quota = q
		}
		client, err := chat.NewClient(newOpenAIClient(upstreamURL, o.MaxInFlight), chat.Config{
			Requests: reqs, Tokens: toks, Redis: rdb, Prefix: c.prefix, MaxInFlight: o.MaxInFlight,
			MaxBudgetWait: o.MaxBudgetWait,
		})
		if err != nil {
			return nil, err
		}
		c.clients = append(c.clients, client)
		scfg := chat.ServiceConfig{
			Threads: store, Transcripts: cache, Completer: client, Model: "gpt-4o-mini",
			TranscriptTokens: o.TranscriptToks, HistoryTokens: o.HistoryToks, MaxReplyTokens: o.MaxReply,
			TurnTimeout: o.TurnTimeout, UserRequests: quota,
			AnswerWithoutThread: true, AnswerWithoutTranscript: true,
			TracerProvider: tp,
		}
		if o.Answers {
			// Every course, L2 on the run's Redis under the run's prefix;
			// the instance's own registry gives the hits by tier.
			scfg.Answers = chat.AnswersConfig{Courses: func(string) bool { return true }, Redis: rdb, Prefix: c.prefix}
			reg := prometheus.NewRegistry()
			scfg.Registerer = reg
			c.regs = append(c.regs, reg)
		}
		svc, err := chat.NewService(scfg)
		if err != nil {
			return nil, err
		}
		c.svcs = append(c.svcs, svc)
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		for _, l := range []interface{ LoadScripts(context.Context) error }{store, cache, reqs, toks, client} {
			if err := l.LoadScripts(wctx); err != nil {
				cancel()
				return nil, fmt.Errorf("redis: %w", err)
			}
		}
		cancel()
	}
	return c, nil
}

// learnerQuota is a per-learner quota of perMinute turns a minute with
// no burst (one turn per 60/perMinute seconds), as a Limit over 10
// minutes so that fractions count.
func learnerQuota(perMinute float64) ratelimit.Limit {
	return ratelimit.Limit{Rate: max(1, int(math.Round(perMinute*10))), Period: 10 * time.Minute, Burst: 1}
}

// newOpenAIClient is a go-openai client with its own connection pool, the
// chat.Transport the Client needs, and the timing of each upstream call
// under it.
func newOpenAIClient(baseURL string, maxConns int) *openai.Client {
	base := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        maxConns,
		MaxIdleConnsPerHost: maxConns,
		IdleConnTimeout:     90 * time.Second,
	}
	cfg := openai.DefaultConfig("sk-loadtest")
	cfg.BaseURL = baseURL
	cfg.HTTPClient = &http.Client{Transport: chat.Transport(timedTransport{base: base})}
	return openai.NewClientWithConfig(cfg)
}

// ask sends the turn to the next instance, round robin, as a load
// balancer without sticky sessions would.
func (c *cluster) ask(ctx context.Context, _ *learner, req chat.Request) turnRecord {
	svc := c.svcs[c.next.Add(1)%uint64(len(c.svcs))]
	tt := &turnTiming{}
	tctx, cancel := context.WithTimeout(withTiming(ctx, tt), c.o.LearnerTimeout)
	start := time.Now()
	resp, err := svc.Ask(tctx, req)
	rec := turnRecord{took: time.Since(start)}
	learnerGone := tctx.Err() != nil
	cancel()
	rec.upstream = time.Duration(tt.upstream.Load())
	rec.budget = time.Duration(tt.budget.Load())
	rec.attempts = int(tt.attempts.Load())
	if err == nil && resp.Cached {
		rec.cached, rec.saved = true, resp.SavedUsage
	}
	var rl *chat.RateLimitError
	switch {
	case err == nil && rec.took > c.o.LearnerTimeout:
		rec.out = outTimeout
	case err == nil && resp.Degraded:
		rec.out = outDegraded
		for _, r := range resp.Reasons {
			rec.reasons = append(rec.reasons, string(r))
		}
	case err == nil:
		rec.out = outOK
	case errors.As(err, &rl):
		rec.out = outRateLimited
		rec.retry, rec.hasRetry = rl.RetryAfter, rl.RetryAfter > 0
	case learnerGone && ctx.Err() == nil:
		rec.out = outTimeout
	case ctx.Err() != nil:
		rec.out, rec.kind = outError, "canceled at stop"
	default:
		rec.out, rec.kind = outError, errorKind(err)
	}
	return rec
}

// errorKind names an error of Service.Ask by its type.
func errorKind(err error) string {
	var (
		ve *chat.ValidationError
		ue *chat.UnavailableError
	)
	switch {
	case errors.As(err, &ve):
		return "invalid " + ve.Field
	case errors.As(err, &ue):
		return "unavailable: " + string(ue.Reason)
	case errors.Is(err, context.DeadlineExceeded):
		return "turn deadline (ServiceConfig.TurnTimeout)"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, chat.ErrClosed):
		return "closed"
	}
	return "other: " + fmt.Sprintf("%T", err)
}

// commands returns the commands the instances sent.
func (c *cluster) commands() int64 {
	var n int64
	for _, cnt := range c.counters {
		n += cnt.n.Load()
	}
	return n
}

// topLevel sums the clients' top-level command counts by name.
func (c *cluster) topLevel() map[string]int64 {
	sum := map[string]int64{}
	for _, cnt := range c.counters {
		for name, n := range cnt.topLevel() {
			sum[name] += n
		}
	}
	return sum
}

func (c *cluster) close(ctx context.Context) {
	for _, s := range c.svcs {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_ = s.Close(cctx)
		cancel()
	}
	for _, cl := range c.clients {
		_ = cl.Close()
	}
	for _, ca := range c.caches {
		_ = ca.Close()
	}
	for _, l := range c.lims {
		_ = l.Close()
	}
	if c.admin != nil {
		c.cleanup(ctx)
	}
	for _, r := range c.rdbs {
		_ = r.Close()
	}
	if c.admin != nil {
		_ = c.admin.Close()
	}
	if c.mini != nil {
		c.mini.Close()
	}
}

// cleanup deletes the run's keys: a SCAN of its prefix, bounded.
func (c *cluster) cleanup(ctx context.Context) {
	if c.mini != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var cursor uint64
	for range 100_000 {
		keys, next, err := c.admin.Scan(ctx, cursor, c.prefix+"*", 1000).Result()
		if err != nil {
			return
		}
		if len(keys) > 0 {
			_ = c.admin.Unlink(ctx, keys...).Err()
		}
		if cursor = next; cursor == 0 {
			return
		}
	}
}

// runInProcess is the default mode.
func runInProcess(ctx context.Context, o options) (*Report, []timelineRow, error) {
	up, err := newUpstream(upstreamConfig{RPM: o.RPM, TPM: o.TPM, Median: o.Median, P99: o.P99, ReplyTokens: o.ReplyTokens, Seed: o.Seed, Window: o.UpstreamWindow})
	if err != nil {
		return nil, nil, err
	}
	if err := up.start(o.UpstreamAddress); err != nil {
		return nil, nil, err
	}
	defer up.close()
	src := &source{latency: o.SourceLatency}
	cl, err := newCluster(ctx, o, src, up.URL)
	if err != nil {
		return nil, nil, err
	}
	defer cl.close(context.WithoutCancel(ctx))
	server := "miniredis (embedded)"
	if cl.mini == nil {
		server = "redis " + cl.admin.Options().Addr
	}
	fmt.Fprintf(o.Out, "in process: %d learners x %g/min, %d instances, %s, upstream %s (%d RPM, %d TPM, latency median %s p99 %s), budgets %s and %s, %s\n",
		o.Learners, o.PerMinute, o.Instances, server, up.URL, o.RPM, o.TPM, o.Median, o.P99, cl.budget[0], cl.budget[1], o.Duration)
	cs0 := readCommandStats(ctx, cl.admin)
	cmd0, top0 := cl.commands(), cl.topLevel()
	cat := newCatalog(o.Courses, o.Videos, o.ZipfS)
	rep, rows := runOpen(ctx, o, cat, cl, up)
	rep.Mode = "in-process"
	cs := readCommandStats(context.WithoutCancel(ctx), cl.admin).minus(cs0)
	fillUpstream(rep, up, o, rep.Started)
	rep.Budget.Requests, rep.Budget.Tokens = cl.budget[0].String(), cl.budget[1].String()
	rep.Budget.MaxIn60s = o.BudgetBurst + o.BudgetRPM
	turns := float64(max(1, rep.Turns.Asked))
	tr := &rep.Transcripts
	tr.Loads = int(src.n.Load())
	tr.Per1000Turns = round3(float64(tr.Loads) / turns * 1000)
	tr.LoadsAfterFirstMin = src.loadsSince(rep.Started.Add(time.Minute))
	tr.Videos, tr.Repeats = src.distinct()
	if tr.TurnsAfterFirstMin > 0 {
		tr.Per1000AfterFirstMin = round3(float64(tr.LoadsAfterFirstMin) / float64(tr.TurnsAfterFirstMin) * 1000)
	}
	rep.Redis.Server = server
	rep.Redis.CommandsPerTurn = round3(float64(cl.commands()-cmd0) / turns)
	if cs.OK {
		rep.Redis.ServerCallsPerTurn = round3(float64(cs.Calls) / turns)
		top := cl.topLevel()
		for name, n := range top0 {
			top[name] -= n
		}
		rep.Redis.ServerUsecPerTurn = round3(float64(cs.topLevelUsec(top)) / turns)
		rep.Redis.CommandstatsCaveats = "whole server: includes any other client's commands during the run; each command sent counted once"
	}
	rep.Settings = settings(o)
	mc, err := cl.answerMetrics()
	if err != nil {
		return nil, nil, fmt.Errorf("answer cache metrics: %w", err)
	}
	if err := fillAnswers(rep, o, mc); err != nil {
		return nil, nil, err
	}
	rep.Checks = openChecks(rep, o, true)
	return rep, rows, nil
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

func settings(o options) map[string]any {
	m := map[string]any{
		"learners": o.Learners, "questions_per_minute": o.PerMinute, "duration": o.Duration.String(), "seed": o.Seed,
		"courses": o.Courses, "videos_per_course": o.Videos, "zipf_s": o.ZipfS,
		"upstream_rpm": o.RPM, "upstream_tpm": o.TPM, "latency_median": o.Median.String(), "latency_p99": o.P99.String(),
		"reply_tokens": o.ReplyTokens, "learner_timeout": o.LearnerTimeout.String(),
	}
	if len(o.Targets) == 0 {
		m["instances"] = o.Instances
		m["budget_rpm"], m["budget_burst"], m["budget_tpm"], m["budget_token_burst"] = o.BudgetRPM, o.BudgetBurst, o.BudgetTPM, o.BudgetTokBurst
		m["learner_quota_per_minute"] = o.LearnerRPM
		m["turn_timeout"] = o.TurnTimeout.String()
		m["max_budget_wait"] = o.MaxBudgetWait.String()
		m["transcript_tokens"], m["history_tokens"], m["max_reply_tokens"] = o.TranscriptToks, o.HistoryToks, o.MaxReply
		m["source_latency"] = o.SourceLatency.String()
		m["common_share"], m["answer_cache"] = o.Common, o.Answers
	} else {
		m["targets"] = o.Targets
	}
	return m
}

// openChecks evaluates the scenario's targets.
func openChecks(rep *Report, o options, inProcess bool) []Check {
	var cs []Check
	add := func(name, want, got string, pass bool, notes string) {
		cs = append(cs, Check{Name: name, Want: want, Got: got, Pass: pass, Notes: notes})
	}
	t := rep.Turns
	add("learner timeouts", "0", strconv.Itoa(t.Timeouts), t.Timeouts == 0, fmt.Sprintf("%s learner timeout", o.LearnerTimeout))
	add("429s seen by learners", "0", strconv.Itoa(t.RateLimited), t.RateLimited == 0, "")
	add("errors", "0", strconv.Itoa(t.Errors), t.Errors == 0, "")
	if rep.Upstream.RPMLimit > 0 {
		u := rep.Upstream
		add("upstream busiest 60 s requests admitted", "<= "+strconv.Itoa(u.RPMLimit), strconv.Itoa(u.BusiestRequests), u.BusiestRequests <= u.RPMLimit, "the fake refuses beyond its limit")
		add("busiest 60 s requests sent upstream (admitted or refused)", "<= "+strconv.Itoa(u.RPMLimit), strconv.Itoa(u.BusiestSent), u.BusiestSent <= u.RPMLimit, "")
		add("upstream 429s", "0", strconv.Itoa(u.Rejected429), u.Rejected429 == 0, "")
	}
	if rep.Upstream.TPMLimit > 0 {
		u := rep.Upstream
		add("upstream busiest 60 s tokens", "<= "+strconv.Itoa(u.TPMLimit), strconv.Itoa(u.BusiestTokens), u.BusiestTokens <= u.TPMLimit, "")
	}
	var slowest float64
	for _, k := range []string{"degraded", "rate_limited"} {
		if d, ok := rep.Latency[k]; ok {
			slowest = math.Max(slowest, d.Max)
		}
	}
	add("slowest degraded answer or 429", "< 5s (fast)", fmtMs(slowest), slowest < 5000, "")
	if inProcess {
		if d, ok := rep.Overhead["minus_upstream"]; ok {
			add("overhead p99, end to end minus upstream", "< 5ms", fmtMs(d.P99), d.P99 < 5, "includes the wait for the shared budgets")
		}
		if d, ok := rep.Overhead["library"]; ok {
			add("overhead p99, end to end minus upstream minus budget wait", "< 5ms", fmtMs(d.P99), d.P99 < 5, "")
		}
		tr := rep.Transcripts
		add("transcript loads per 1000 turns after the first minute", "< 1", fmt.Sprintf("%.3f", tr.Per1000AfterFirstMin),
			tr.TurnsAfterFirstMin > 0 && tr.Per1000AfterFirstMin < 1,
			fmt.Sprintf("%d loads in %d turns; over the run %d distinct videos loaded, %d repeat loads", tr.LoadsAfterFirstMin, tr.TurnsAfterFirstMin, tr.Videos, tr.Repeats))
	}
	return cs
}
