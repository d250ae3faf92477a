package queue_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/chat/queue"
	"github.com/chatscale/chatscale/contextcache"
	tu "github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/threads"
)

const (
	course = "go-101"
	video  = "https://videos.example/go-101/1"
	// blockPrefix starts the video URLs whose transcript load waits for
	// the source's gate: a job on such a video stays active until the
	// test opens the gate.
	blockPrefix = "https://videos.example/block/"
)

func request(user, msg string) chat.Request {
	return chat.Request{UserID: user, CourseID: course, VideoURL: video, Message: msg}
}

// source is the transcript source of the tests: every video has the same
// transcript; a video under blockPrefix reports its load on entered and
// waits for gate (or for the load's ctx).
type source struct {
	entered chan string
	gate    chan struct{}
	once    sync.Once
}

func newSource() *source {
	return &source{entered: make(chan string, 64), gate: make(chan struct{})}
}

func (s *source) load(ctx context.Context, courseID, videoURL string) (contextcache.Document, error) {
	if strings.HasPrefix(videoURL, blockPrefix) {
		select {
		case s.entered <- videoURL:
		default:
		}
		select {
		case <-s.gate:
		case <-ctx.Done():
			return contextcache.Document{}, ctx.Err()
		}
	}
	return contextcache.Document{CourseID: courseID, VideoURL: videoURL, Title: "Goroutines",
		Text: "Goroutines are functions that run concurrently."}, nil
}

func (s *source) open() { s.once.Do(func() { close(s.gate) }) }

// waitEntered waits for the load of videoURL to begin.
func (s *source) waitEntered(t testing.TB, videoURL string) {
	t.Helper()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case v := <-s.entered:
			if v == videoURL {
				return
			}
		case <-timeout.C:
			t.Fatalf("the transcript of %s was not asked for within 30 s", videoURL)
		}
	}
}

// rig is one test's Redis, fake upstream, transcript source and Client.
type rig struct {
	t      testing.TB
	env    *tu.RedisEnv
	cfg    queue.Config
	fake   *tu.FakeOpenAI
	src    *source
	client *queue.Client
	reg    *prometheus.Registry
}

type rigOpts struct {
	fake  tu.OpenAIConfig
	queue queue.Config
}

// newRig sets up a test. Its queues live under the test's unique prefix,
// and every asynq key of them is deleted at cleanup (asynq's keys start
// with "asynq:", outside the prefix testutil cleans).
func newRig(t testing.TB, o rigOpts) *rig {
	t.Helper()
	r := &rig{t: t, env: tu.Redis(t), src: newSource(), reg: prometheus.NewRegistry()}
	r.cfg = o.queue
	r.cfg.Prefix = r.env.Prefix
	if r.cfg.PollInterval == 0 {
		r.cfg.PollInterval = 20 * time.Millisecond
	}
	if r.cfg.RetryCheckInterval == 0 {
		r.cfg.RetryCheckInterval = 50 * time.Millisecond
	}
	if r.cfg.RetryBase == 0 {
		r.cfg.RetryBase = 10 * time.Millisecond
	}
	if r.cfg.WaitPoll == 0 {
		r.cfg.WaitPoll = 10 * time.Millisecond
		r.cfg.WaitMaxPoll = 100 * time.Millisecond
	}
	cleanupQueues(t, r.env, r.cfg)
	r.fake = tu.OpenAI(t, o.fake)
	cc := r.cfg
	cc.Registerer = r.reg
	client, err := queue.NewClient(r.env.Client, cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	r.client = client
	return r
}

// cleanupQueues deletes, at the test's end, the asynq keys of cfg's
// queues and their names in asynq's list of queues. It never touches a
// key of another queue.
func cleanupQueues(t testing.TB, env *tu.RedisEnv, cfg queue.Config) {
	if env.Backend == tu.Miniredis {
		return // the server goes away with the test
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pattern := "asynq:{" + cfg.Prefix + "*"
		del := func(ctx context.Context, c redis.Cmdable) error {
			iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
			for iter.Next(ctx) {
				if err := env.Client.Del(ctx, iter.Val()).Err(); err != nil {
					return err
				}
			}
			return iter.Err()
		}
		var err error
		if cc, ok := env.Client.(*redis.ClusterClient); ok {
			err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return del(ctx, c) })
		} else {
			err = del(ctx, env.Client)
		}
		if err != nil {
			t.Logf("deleting the keys %s: %v", pattern, err)
		}
		queues := cfg.Queues
		if queues == nil {
			queues = queue.DefaultQueues()
		}
		for p := range queues {
			if err := env.Client.SRem(ctx, "asynq:queues", cfg.QueueName(p)).Err(); err != nil {
				t.Logf("removing queue %s from asynq:queues: %v", cfg.QueueName(p), err)
			}
		}
	})
}

type svcOpts struct {
	client  chat.Config
	service chat.ServiceConfig
}

// service wires a chat.Service from real parts, as an instance of the
// host would: a Redis thread store under the test's prefix, a
// contextcache over the rig's source and a chat.Client over the fake
// upstream. Each call makes a new instance.
func (r *rig) service(o svcOpts) *chat.Service {
	t := r.t
	t.Helper()
	store, err := threads.NewRedis(r.env.Client, threads.Config{Prefix: r.env.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	cache, err := contextcache.New(contextcache.SourceFunc(r.src.load), contextcache.Config{LoadTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cache.Close() })
	cc := o.client
	if cc.BaseDelay == 0 {
		cc.BaseDelay = time.Millisecond
	}
	client, err := chat.NewClient(chat.NewOpenAI(r.fake.URL, "sk-test", 16), cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	sc := o.service
	sc.Threads, sc.Transcripts, sc.Completer = store, cache, client
	if sc.Model == "" {
		sc.Model = "gpt-4o-mini"
	}
	svc, err := chat.NewService(sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := svc.Close(ctx); err != nil {
			t.Errorf("Service.Close: %v", err)
		}
	})
	return svc
}

// worker starts a Worker over svc with the rig's Config changed by mod,
// registered on a registry of its own, and closes it at cleanup.
func (r *rig) worker(svc queue.Asker, mod func(*queue.Config)) (*queue.Worker, *prometheus.Registry) {
	t := r.t
	t.Helper()
	cfg := r.cfg
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	if mod != nil {
		mod(&cfg)
	}
	w, err := queue.NewWorker(r.env.Client, svc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := w.Close(ctx); err != nil {
			t.Errorf("Worker.Close: %v", err)
		}
	})
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return w, reg
}

func (r *rig) enqueue(req chat.Request, opts ...queue.Option) string {
	r.t.Helper()
	id, err := r.client.Enqueue(context.Background(), req, opts...)
	if err != nil {
		r.t.Fatalf("Enqueue: %v", err)
	}
	return id
}

// wait waits for the job to end, at most 30 s.
func (r *rig) wait(id string) queue.Status {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := r.client.Wait(ctx, id)
	if err != nil {
		r.t.Fatalf("Wait(%s): %v (last status %+v)", id, err, st)
	}
	return st
}

func (r *rig) status(id string) queue.Status {
	r.t.Helper()
	st, err := r.client.Status(context.Background(), id)
	if err != nil {
		r.t.Fatalf("Status(%s): %v", id, err)
	}
	return st
}

// messages returns the user messages the upstream received, in arrival
// order.
func (r *rig) messages() []string {
	var out []string
	for _, ev := range r.fake.Events() {
		msgs := ev.Request.Messages
		out = append(out, msgs[len(msgs)-1].Content)
	}
	return out
}

// counter returns the value of the counter or gauge name (for a
// histogram, its count) with the given labels in reg, and whether it
// exists.
func counter(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
	}
	return 0, false
}

// runs returns ai_chat_queue_runs_total of the default queue for result.
func runs(t testing.TB, reg *prometheus.Registry, result string) int {
	t.Helper()
	v, _ := counter(t, reg, "ai_chat_queue_runs_total", map[string]string{"queue": "default", "result": result})
	return int(v)
}

// jobErr returns st.Err as a *queue.JobError.
func jobErr(t testing.TB, st queue.Status) *queue.JobError {
	t.Helper()
	var je *queue.JobError
	if !errors.As(st.Err, &je) {
		t.Fatalf("Status.Err = %v (%T), want a *queue.JobError", st.Err, st.Err)
	}
	return je
}

func describe(st queue.Status) string {
	return fmt.Sprintf("state %s attempts %d/%d err %v", st.State, st.Attempts, st.MaxAttempts, st.Err)
}
