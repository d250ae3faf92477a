// Package app is the example server of chatscale: the wiring of a
// chat.Service from the environment, the HTTP handler that serves it
// (JSON, Server-Sent Events, asynchronous jobs on chat/queue, the chat
// page), authentication, and the embedded defaults (Redis in process, sample transcripts, an offline
// model) that let it run with no configuration. examples/server's main is
// a thin wrapper around it; tests and other programs build it with New.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/contextcache/mongosource"
	"github.com/chatscale/chatscale/ratelimit"
	"github.com/chatscale/chatscale/threads"
)

// Options are the hooks a program sets in code, next to the Config read
// from the environment.
type Options struct {
	// Authenticator says who the learner is. Nil: HMACAuth with
	// Config.AuthSecret when it is set, else AnonymousAuth.
	Authenticator Authenticator
	// Jobs serves the job routes. Nil: New builds them on chat/queue,
	// with a worker in process (see JobRoutes).
	Jobs *JobRoutes
	// Logger is the log; nil discards.
	Logger *slog.Logger
}

// App is a wired server: the chat.Service and the parts it runs on, and
// the HTTP handler in front of them.
type App struct {
	cfg     Config
	log     *slog.Logger
	auth    Authenticator
	authTag string // "bearer" or "anonymous", for the chat page
	jobs    *JobRoutes
	reg     *prometheus.Registry
	svc     *chat.Service
	catalog []Video
	offline bool

	rdb   redis.UniversalClient
	mongo *mongo.Client

	handler http.Handler
	gate    *gate

	closeOnce sync.Once
	closeErr  error
	closers   []func(context.Context) error // run in reverse order
}

// New wires an App from cfg. It connects to nothing yet (go-redis and the
// MongoDB driver connect on first use), warms the Redis script caches when
// Redis answers within a few seconds, and logs which parts are embedded
// and which are real. Close releases what it built.
func New(ctx context.Context, cfg Config, opts Options) (_ *App, err error) {
	cfg = cfg.withDefaults()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &App{cfg: cfg, log: log, jobs: opts.Jobs, reg: prometheus.NewRegistry(), gate: newGate()}
	defer func() {
		if err != nil {
			_ = a.Close(context.WithoutCancel(ctx))
		}
	}()
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	switch {
	case opts.Authenticator != nil:
		a.auth, a.authTag = opts.Authenticator, "custom"
		log.Info("auth: the program's Authenticator")
	case len(cfg.AuthSecret) > 0:
		a.auth, a.authTag = HMACAuth(cfg.AuthSecret, nil), "bearer"
		log.Info("auth: HMAC-signed bearer tokens (AUTH_SECRET)")
	default:
		a.auth, a.authTag = AnonymousAuth(), "anonymous"
		log.Info("auth: embedded, anonymous learners with an ID in a cookie (AUTH_SECRET unset)")
	}

	// Redis: threads, budgets, the transcript L2 and the breaker's shared
	// state all live there.
	if err := a.connectRedis(); err != nil {
		return nil, err
	}
	rdb := a.rdb

	// Transcripts: MongoDB through mongosource, or the samples; cached in
	// process and in Redis either way.
	var src contextcache.Source
	if cfg.MongoURI != "" {
		s, err := a.connectMongo()
		if err != nil {
			return nil, err
		}
		src = s
		log.Info("transcripts: MongoDB", "database", cfg.MongoDatabase, "collection", cfg.MongoCollection)
	} else {
		src = sampleSource()
		a.catalog = Catalog()
		log.Info("transcripts: embedded samples (MONGODB_URI unset)", "videos", len(a.catalog))
	}
	cache, err := contextcache.New(src, contextcache.Config{Redis: rdb, Registerer: a.reg, Logger: log})
	if err != nil {
		return nil, err
	}
	a.onClose(func(context.Context) error { return cache.Close() })

	store, err := threads.NewRedis(rdb, threads.Config{})
	if err != nil {
		return nil, err
	}

	// The budgets shared by every instance (one hash tag: one round trip
	// for both), and each learner's quota.
	shared := ratelimit.Config{HashTag: "openai", ExpectedInstances: cfg.ExpectedInstances}
	shared.Name = "requests"
	requests, err := a.limiter(upstreamLimit(cfg.UpstreamRequestsPerMinute, 1), shared)
	if err != nil {
		return nil, err
	}
	shared.Name = "tokens"
	// A turn reserves up to about 13,000 tokens (the Service's default
	// budgets): the token burst holds at least that.
	tokens, err := a.limiter(upstreamLimit(cfg.UpstreamTokensPerMinute, 16_384), shared)
	if err != nil {
		return nil, err
	}
	var learner ratelimit.Limiter // nil: no quota
	warm := map[string]func(context.Context) error{}
	if cfg.LearnerTurnsPerMinute > 0 {
		l, err := a.limiter(ratelimit.PerMinute(cfg.LearnerTurnsPerMinute), ratelimit.Config{Name: "learner-turns"})
		if err != nil {
			return nil, err
		}
		learner, warm["learner-turns"] = l, l.LoadScripts
	}

	// The upstream: an OpenAI-compatible API, or the offline model.
	var inner chat.Completer
	if cfg.offlineModel() {
		a.offline = true
		inner = newOfflineCompleter(&offlineModel{delay: cfg.OfflineDelay, down: cfg.OfflineDown})
		log.Info("model: embedded offline model, answers from the transcript (OPENAI_API_KEY and OPENAI_BASE_URL unset)",
			"delay", cfg.OfflineDelay, "down", cfg.OfflineDown, "tokenizer", cfg.Model)
	} else {
		base := cfg.OpenAIBaseURL
		if base == "" {
			base = DefaultOpenAIBaseURL
		}
		inner = chat.NewOpenAI(base, cfg.OpenAIAPIKey, 64)
		log.Info("model: OpenAI-compatible API", "base_url", redactURL(base), "model", cfg.Model, "api_key_set", cfg.OpenAIAPIKey != "")
	}
	client, err := chat.NewClient(inner, chat.Config{
		Requests: requests, Tokens: tokens, Redis: rdb, MaxBudgetWait: cfg.UpstreamMaxWait,
		DisableFallback: cfg.DisableFallback, Registerer: a.reg, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	a.onClose(func(context.Context) error { return client.Close() })

	a.svc, err = chat.NewService(chat.ServiceConfig{
		Threads: store, Transcripts: cache, Completer: client, Model: cfg.Model,
		UserRequests: learner,
		// A learner still gets an answer when Redis or the transcript
		// fails: flagged degraded, with no history or no transcript.
		AnswerWithoutThread: true, AnswerWithoutTranscript: true,
		Registerer: a.reg, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	a.onClose(a.svc.Close)

	// The job routes: a queue on the same Redis and a worker running its
	// jobs in process with the same Service (jobs.go), unless the program
	// serves them itself.
	var startWorker func(context.Context) error
	if opts.Jobs == nil {
		if startWorker, err = a.newJobs(); err != nil {
			return nil, err
		}
	} else {
		log.Info("jobs: the program's JobRoutes serve POST /v1/jobs and GET /v1/jobs/{id}")
	}

	// Warm-up: the scripts of every Redis-backed part and the
	// invalidation subscriber. Failures are logged: the parts work
	// without them, and /readyz tells whether Redis answers.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	warm["threads"], warm["requests"], warm["tokens"] = store.LoadScripts, requests.LoadScripts, tokens.LoadScripts
	warm["client"], warm["contextcache"], warm["subscriber"] = client.LoadScripts, cache.LoadScripts, cache.Start
	var wg sync.WaitGroup
	for name, load := range warm {
		wg.Go(func() {
			if err := load(wctx); err != nil {
				log.Warn("startup: Redis warm-up failed; continuing", "part", name, "err", err)
			}
		})
	}
	// The job worker starts meanwhile; Redis not answering only delays
	// it (see workerRun).
	var workerErr error
	if startWorker != nil {
		wg.Go(func() { workerErr = startWorker(wctx) })
	}
	wg.Wait()
	if workerErr != nil {
		return nil, workerErr
	}

	a.handler = a.routes()
	return a, nil
}

// connectRedis builds the Redis client the environment names, or starts
// the embedded one.
func (a *App) connectRedis() error {
	cfg := a.cfg
	switch {
	case cfg.RedisURL != "":
		opt, err := redis.ParseURL(cfg.RedisURL)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err // url.Error quotes the URL, password included
			}
			return &EnvError{Var: "REDIS_URL", Reason: err.Error()}
		}
		a.rdb = redis.NewClient(opt)
		a.log.Info("redis: real", "addr", opt.Addr, "db", opt.DB)
	case len(cfg.RedisClusterAddrs) > 0:
		a.rdb = redis.NewClusterClient(&redis.ClusterOptions{Addrs: cfg.RedisClusterAddrs, Password: cfg.RedisPassword})
		a.log.Info("redis: real Redis Cluster", "seeds", strings.Join(cfg.RedisClusterAddrs, ","))
	case cfg.RedisSentinelMaster != "":
		a.rdb = redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: cfg.RedisSentinelMaster, SentinelAddrs: cfg.RedisSentinelAddrs, Password: cfg.RedisPassword,
		})
		a.log.Info("redis: real, through Sentinel", "master", cfg.RedisSentinelMaster, "sentinels", strings.Join(cfg.RedisSentinelAddrs, ","))
	default:
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			return fmt.Errorf("embedded Redis: %w", err)
		}
		a.onClose(func(context.Context) error { mr.Close(); return nil })
		a.rdb = redis.NewClient(&redis.Options{Addr: mr.Addr()})
		a.log.Info("redis: embedded (miniredis in process; threads and budgets are lost at exit, not shared between instances; REDIS_URL unset)")
	}
	rdb := a.rdb
	a.onClose(func(context.Context) error { return rdb.Close() })
	return nil
}

// connectMongo builds the MongoDB client and the transcript Source.
func (a *App) connectMongo() (contextcache.Source, error) {
	cfg := a.cfg
	client, err := mongo.Connect(mongosource.ClientOptions(cfg.MongoURI))
	if err != nil {
		return nil, &EnvError{Var: "MONGODB_URI", Reason: "cannot be used: " + err.Error()}
	}
	a.mongo = client
	a.onClose(client.Disconnect)
	kind := mongosource.CourseIDObjectID
	if cfg.MongoCourseIDString {
		kind = mongosource.CourseIDString
	}
	src, err := mongosource.New(client.Database(cfg.MongoDatabase).Collection(cfg.MongoCollection), mongosource.Config{CourseID: kind})
	if err != nil {
		return nil, err
	}
	return src, nil
}

// limiter returns a budget kept in Redis, shared by every instance.
func (a *App) limiter(limit ratelimit.Limit, cfg ratelimit.Config) (*ratelimit.Redis, error) {
	cfg.Registerer, cfg.Logger = a.reg, a.log
	l, err := ratelimit.NewRedis(a.rdb, limit, cfg)
	if err != nil {
		return nil, err
	}
	a.onClose(func(context.Context) error { return l.Close() })
	return l, nil
}

func (a *App) onClose(f func(context.Context) error) { a.closers = append(a.closers, f) }

// Handler returns the HTTP handler: every route, behind the drain gate
// and the request log.
func (a *App) Handler() http.Handler { return a.handler }

// Service returns the chat.Service the handler serves.
func (a *App) Service() *chat.Service { return a.svc }

// Registry returns the registry /metrics serves.
func (a *App) Registry() *prometheus.Registry { return a.reg }

// Config returns the App's configuration, defaults filled in.
func (a *App) Config() Config { return a.cfg }

// Drain stops admitting requests (they are answered 503, /healthz and
// /metrics excepted) and waits until the requests in flight, streams
// included, have finished, or ctx ends (its error is returned then).
func (a *App) Drain(ctx context.Context) error { return a.gate.drain(ctx) }

// Close stops the job worker (waiting for its running jobs until ctx
// ends, then handing the rest back to the queue), then the Service
// (waiting for its turns until ctx ends), and closes every other part New
// built, in reverse order. It is idempotent.
func (a *App) Close(ctx context.Context) error {
	a.closeOnce.Do(func() {
		var errs []error
		for i := len(a.closers) - 1; i >= 0; i-- {
			errs = append(errs, a.closers[i](ctx))
		}
		a.closeErr = errors.Join(errs...)
	})
	return a.closeErr
}

// Ready checks the dependencies a real deployment has: Redis always (the
// embedded one answers at once), MongoDB when configured. It returns one
// entry per dependency: "ok" or what failed.
func (a *App) Ready(ctx context.Context) (map[string]string, bool) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	checks, ok := map[string]string{}, true
	var mu sync.Mutex
	var wg sync.WaitGroup
	check := func(name string, ping func(context.Context) error) {
		wg.Go(func() {
			err := ping(ctx)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				checks[name], ok = "unreachable", false
				a.log.Warn("readyz: dependency unreachable", "dependency", name, "err", err)
				return
			}
			checks[name] = "ok"
		})
	}
	check("redis", func(ctx context.Context) error { return a.rdb.Ping(ctx).Err() })
	if a.mongo != nil {
		check("mongodb", func(ctx context.Context) error { return a.mongo.Ping(ctx, nil) })
	}
	wg.Wait()
	return checks, ok
}

// redactURL drops the user information of a URL.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable)"
	}
	u.User = nil
	return u.String()
}

// gate admits requests until drain, and counts those in flight.
type gate struct {
	mu       sync.Mutex
	ctx      context.Context // cancelled when the drain begins
	cancel   context.CancelFunc
	inFlight sync.WaitGroup
}

func newGate() *gate {
	g := &gate{}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	return g
}

func (g *gate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ctx.Err() != nil {
		return false
	}
	g.inFlight.Add(1)
	return true
}

func (g *gate) leave() { g.inFlight.Done() }

// draining returns a context cancelled when the drain begins: a request
// that only waits for something (GET /v1/jobs/{id}?wait=…) stops waiting
// then and answers with what it has, so that the drain does not wait for
// it.
func (g *gate) draining() context.Context { return g.ctx }

func (g *gate) drain(ctx context.Context) error {
	g.mu.Lock()
	g.cancel()
	g.mu.Unlock()
	done := make(chan struct{})
	go func() {
		g.inFlight.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// upstreamLimit is a budget whose busiest 60 s stay within perMinute: a
// GCRA budget admits its burst plus its rate over any window, so the
// burst (1 % of the limit, at least minBurst, at most half) comes out of
// the rate.
func upstreamLimit(perMinute, minBurst int) ratelimit.Limit {
	burst := min(max(perMinute/100, minBurst), max(1, perMinute/2))
	return ratelimit.Limit{Rate: max(1, perMinute-burst), Period: time.Minute, Burst: burst}
}
