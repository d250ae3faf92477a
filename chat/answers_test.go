package chat_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
	tu "github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/threads"
)

const opening = "What is this video about?"

// allCourses opts every course in.
func allCourses(string) bool { return true }

// answersHarness is a harness whose Service has the answer cache on, on
// the harness's Redis (or, with memory, without Redis).
func answersHarness(t *testing.T, memory bool, o harnessOpts) *harness {
	t.Helper()
	o.memory = memory
	if o.service.Answers.Courses == nil {
		o.service.Answers.Courses = allCourses
	}
	h := newHarness(t, o)
	if h.env != nil && o.service.Answers.Redis == nil {
		// A second Service on the same parts, with the cache on Redis:
		// the harness builds its Service before the Redis client exists.
		sc := o.service
		sc.Answers.Redis, sc.Answers.Prefix = h.env.Client, h.env.Prefix
		h.svc = h.newService(sc)
	}
	return h
}

// newService builds one more Service on the harness's parts, with a
// registry of its own, replacing h.reg.
func (h *harness) newService(sc chat.ServiceConfig) *chat.Service {
	h.t.Helper()
	if sc.Threads == nil {
		sc.Threads = h.store
	}
	if sc.Transcripts == nil {
		sc.Transcripts = h.cache
	}
	if sc.Completer == nil {
		sc.Completer = h.client
	}
	if sc.Model == "" {
		sc.Model = "gpt-4o-mini"
	}
	h.reg = prometheus.NewRegistry()
	sc.Registerer = h.reg
	svc, err := chat.NewService(sc)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = svc.Close(context.Background()) })
	return svc
}

func askWith(t *testing.T, svc *chat.Service, user, videoURL, msg string) chat.Response {
	t.Helper()
	r, err := svc.Ask(context.Background(), chat.Request{UserID: user, CourseID: course, VideoURL: videoURL, Message: msg})
	if err != nil {
		t.Fatalf("Ask(%s, %q): %v", user, msg, err)
	}
	return r
}

// 100 learners ask the same opening question about one video at once,
// through 4 instances (each its own Service, Client, contextcache and
// go-redis client) on one Redis: the upstream is called once, every
// learner gets the same reply, and every thread holds the exchange.
func TestAnswersOneCallAcrossInstances(t *testing.T) {
	const instances, learners = 4, 100
	env := tu.Redis(t)
	// The upstream answers slowly enough that the learners arrive while
	// the first call runs; the count below does not depend on it.
	fake := tu.OpenAI(t, tu.OpenAIConfig{Latency: 100 * time.Millisecond})
	src := &source{}
	src.put(video1, contextcache.Document{Title: "Goroutines", Text: "Goroutines are functions that run concurrently."})
	type instance struct {
		svc   *chat.Service
		store threads.Store
		reg   *prometheus.Registry
	}
	var ins []instance
	for range instances {
		rdb := env.NewClient()
		// 100 turns at once queue on each client's pool: the thread calls
		// get a bound far above what a loaded machine makes them wait,
		// so that the test counts upstream calls, not timeouts.
		st, err := threads.NewRedis(rdb, threads.Config{Prefix: env.Prefix, RedisTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		cache, err := contextcache.New(src, contextcache.Config{Redis: rdb, Prefix: env.Prefix, RedisTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cache.Close() })
		client, err := chat.NewClient(chat.NewOpenAI(fake.URL, "sk-test", 64), chat.Config{Redis: rdb, Prefix: env.Prefix, MaxInFlight: 128})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = client.Close() })
		reg := prometheus.NewRegistry()
		svc, err := chat.NewService(chat.ServiceConfig{Threads: st, Transcripts: cache, Completer: client, Model: "gpt-4o-mini",
			Registerer: reg, Answers: chat.AnswersConfig{Courses: allCourses, Redis: rdb, Prefix: env.Prefix}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = svc.Close(context.Background()) })
		if err := svc.LoadScripts(context.Background()); err != nil {
			t.Fatal(err)
		}
		ins = append(ins, instance{svc, st, reg})
	}

	start := make(chan struct{})
	resps := make([]chat.Response, learners)
	errs := make([]error, learners)
	var wg sync.WaitGroup
	for i := range learners {
		wg.Go(func() {
			<-start
			resps[i], errs[i] = ins[i%instances].svc.Ask(context.Background(), chat.Request{
				UserID: "learner-" + strconv.Itoa(i), CourseID: course, VideoURL: video1, Message: opening})
		})
	}
	close(start)
	wg.Wait()

	if n := fake.Requests(); n != 1 {
		t.Fatalf("upstream calls = %d, want 1", n)
	}
	cached := 0
	for i, r := range resps {
		if errs[i] != nil {
			t.Fatalf("learner %d: %v", i, errs[i])
		}
		if r.Reply != resps[0].Reply || r.Degraded || !r.Stored {
			t.Fatalf("learner %d: reply %q degraded %v stored %v; learner 0's reply %q", i, r.Reply, r.Degraded, r.Stored, resps[0].Reply)
		}
		if r.Cached {
			cached++
			if r.Usage != (chat.Usage{}) || r.SavedUsage.CompletionTokens == 0 {
				t.Errorf("learner %d: a hit with Usage %+v, SavedUsage %+v", i, r.Usage, r.SavedUsage)
			}
		}
	}
	if cached != learners-1 {
		t.Errorf("%d replies from the cache, want %d", cached, learners-1)
	}
	var hits, misses, saved float64
	for _, in := range ins {
		hits += metricValue(t, in.reg, "ai_chat_answer_cache_hits_total", "tier", "l1") +
			metricValue(t, in.reg, "ai_chat_answer_cache_hits_total", "tier", "l2")
		misses += metricValue(t, in.reg, "ai_chat_answer_cache_misses_total", "", "")
		saved += metricValue(t, in.reg, "ai_chat_answer_cache_saved_tokens_total", "kind", "completion")
	}
	if hits != learners-1 || misses != 1 {
		t.Errorf("metrics: %v hits, %v misses; want %d and 1", hits, misses, learners-1)
	}
	if want := float64((learners - 1) * resps[0].SavedUsage.CompletionTokens); saved != want || saved == 0 {
		t.Errorf("saved completion tokens = %v, want %v", saved, want)
	}
	for i := range learners {
		st := ins[(i+1)%instances].store // read through another instance
		th, err := st.GetOrCreate(context.Background(), "learner-"+strconv.Itoa(i), course)
		if err != nil {
			t.Fatal(err)
		}
		msgs, err := st.History(context.Background(), th.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != 2 || msgs[0].Content != opening || msgs[1].Content != resps[0].Reply {
			t.Fatalf("learner %d's thread = %+v", i, msgs)
		}
	}
}

// A hit is stored in the learner's thread like any reply and says so;
// the other parts of the key (course, model, system prompt, transcript
// version, reply maximum) each make a miss.
func TestAnswersKey(t *testing.T) {
	forEachStore(t, func(t *testing.T, memory bool) {
		h := answersHarness(t, memory, harnessOpts{})
		r := h.ask("u0", video1, opening)
		if r.Cached || h.fake.Requests() != 1 {
			t.Fatalf("first asker: Cached %v, %d calls", r.Cached, h.fake.Requests())
		}
		hit := h.ask("u1", video1, opening)
		if !hit.Cached || hit.Reply != r.Reply || !hit.Stored || hit.Usage != (chat.Usage{}) || hit.SavedUsage != r.Usage ||
			hit.PromptTokens != 0 || h.fake.Requests() != 1 {
			t.Fatalf("second asker: %+v (first %+v), %d calls", hit, r, h.fake.Requests())
		}
		if got := h.history("u1"); len(got) != 2 || got[1] != "assistant: "+r.Reply {
			t.Fatalf("the hit's thread = %q", got)
		}
		calls := 1
		miss := func(name string, svc *chat.Service, req chat.Request) {
			t.Helper()
			resp, err := svc.Ask(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			calls++
			if resp.Cached || h.fake.Requests() != calls {
				t.Fatalf("%s: Cached %v, %d upstream calls, want %d", name, resp.Cached, h.fake.Requests(), calls)
			}
		}
		req := func(user string) chat.Request {
			return chat.Request{UserID: user, CourseID: course, VideoURL: video1, Message: opening}
		}
		other := req("u2")
		other.CourseID = "other-course"
		miss("another course", h.svc, other)
		miss("another video", h.svc, chat.Request{UserID: "u3", CourseID: course, VideoURL: video2, Message: opening})

		base := chat.ServiceConfig{Answers: chat.AnswersConfig{Courses: allCourses}}
		if h.env != nil {
			base.Answers.Redis, base.Answers.Prefix = h.env.Client, h.env.Prefix
		}
		for _, c := range []struct {
			name string
			edit func(*chat.ServiceConfig)
		}{
			{"another model", func(c *chat.ServiceConfig) { c.Model = "gpt-4o" }},
			{"another system prompt", func(c *chat.ServiceConfig) { c.SystemPrompt = chat.DefaultSystemPrompt + " Be brief." }},
			{"another reply maximum", func(c *chat.ServiceConfig) { c.MaxReplyTokens = 512 }},
		} {
			sc := base
			c.edit(&sc)
			miss(c.name, h.newService(sc), req("u-"+c.name))
		}
		// The same configuration in a new Service hits (L2, or nothing
		// without Redis: L1 is per Service).
		same := h.newService(base)
		resp := askWith(t, same, "u4", video1, opening)
		if memory {
			calls++
		}
		if resp.Cached == memory || h.fake.Requests() != calls {
			t.Fatalf("same configuration, new Service: Cached %v, %d calls, want %d", resp.Cached, h.fake.Requests(), calls)
		}

		// A new transcript version: invalidated and changed.
		h.src.put(video1, contextcache.Document{Title: "Goroutines", Text: "Goroutines are cheap threads managed by Go."})
		if err := h.cache.Invalidate(context.Background(), course, video1); err != nil {
			t.Fatal(err)
		}
		miss("a changed transcript", same, req("u5"))
		if resp := askWith(t, same, "u6", video1, opening); !resp.Cached {
			t.Fatal("the changed transcript's answer was not cached")
		}
		// The same text with a new UpdatedAt is a new version too.
		h.src.put(video1, contextcache.Document{Title: "Goroutines", Text: "Goroutines are cheap threads managed by Go.",
			UpdatedAt: time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)})
		if err := h.cache.Invalidate(context.Background(), course, video1); err != nil {
			t.Fatal(err)
		}
		miss("a new UpdatedAt", same, req("u7"))
	})
}

// Questions that differ only in case, spacing, Unicode normalisation or
// trailing punctuation share an answer; others do not.
func TestAnswersNormalisedQuestion(t *testing.T) {
	h := answersHarness(t, false, harnessOpts{})
	first := h.ask("u0", video1, opening)
	for i, q := range []string{"  what is THIS video about ?? ", "what is this video about", "WHAT IS THIS VIDEO\tABOUT…", "What is this video about？"} {
		r := h.ask("same-"+strconv.Itoa(i), video1, q)
		if !r.Cached || r.Reply != first.Reply {
			t.Errorf("%q: Cached %v, reply %q; want the reply to %q", q, r.Cached, r.Reply, opening)
		}
		if got := h.history("same-" + strconv.Itoa(i)); len(got) != 2 || got[0] != "user: "+q {
			t.Errorf("%q: the thread holds %q, want the learner's own wording", q, got)
		}
	}
	// NFC: "é" precomposed and decomposed are one question.
	a := h.ask("nfc-0", video1, "Qu'est-ce que la r\u00e9cursivit\u00e9 ?")
	if b := h.ask("nfc-1", video1, "qu'est-ce que la re\u0301cursivite\u0301"); a.Cached || !b.Cached || b.Reply != a.Reply {
		t.Errorf("NFC: first Cached %v, second Cached %v", a.Cached, b.Cached)
	}
	calls := h.fake.Requests()
	for i, q := range []string{"What is this video not about?", "What is this video about? Briefly.", "What is this audio about?"} {
		if r := h.ask("other-"+strconv.Itoa(i), video1, q); r.Cached {
			t.Errorf("%q was answered from the cache", q)
		}
	}
	if got := h.fake.Requests() - calls; got != 3 {
		t.Errorf("%d upstream calls for 3 different questions", got)
	}
}

// A learner whose thread holds messages is never served from the cache,
// nor does their turn fill it.
func TestAnswersNotWithHistory(t *testing.T) {
	forEachStore(t, func(t *testing.T, memory bool) {
		h := answersHarness(t, memory, harnessOpts{})
		h.ask("ada", video1, "How do goroutines start?")
		h.ask("bob", video1, opening) // cached now
		calls := h.fake.Requests()
		r := h.ask("ada", video1, opening)
		if r.Cached || h.fake.Requests() != calls+1 || r.HistoryMessages != 2 {
			t.Fatalf("a learner with history: Cached %v, %d calls (want %d), %d history messages",
				r.Cached, h.fake.Requests(), calls+1, r.HistoryMessages)
		}
		// cyd and dan ask the same first question (dan gets cyd's answer),
		// so their threads hold the same exchange; then the same second
		// question: each gets an upstream call of their own.
		h.ask("cyd", video1, "How do goroutines start?")
		if r := h.ask("dan", video1, "How do goroutines start?"); !r.Cached {
			t.Fatal("dan's first question was not answered from the cache")
		}
		calls = h.fake.Requests()
		h.ask("cyd", video1, "And channels?")
		if r := h.ask("dan", video1, "And channels?"); r.Cached || h.fake.Requests() != calls+2 {
			t.Fatalf("an answer given with history was shared: Cached %v, %d calls (want %d)", r.Cached, h.fake.Requests(), calls+2)
		}
		// A newcomer asking it gets no answer given with history either.
		if r := h.ask("eve", video1, "And channels?"); r.Cached {
			t.Fatal("an answer given with history was served to a newcomer")
		}
	})
}

// A degraded reply (the fallback) is not cached: the next asker calls the
// upstream. A turn without its transcript neither fills nor reads the
// cache.
func TestAnswersNotDegraded(t *testing.T) {
	h := answersHarness(t, false, harnessOpts{client: chat.Config{MaxAttempts: 1},
		service: chat.ServiceConfig{AnswerWithoutTranscript: true}})
	h.fake.Always(&tu.FakeStep{Status: 503})
	r := h.ask("u0", video1, opening)
	if !r.Degraded || r.Cached {
		t.Fatalf("first asker: Degraded %v Cached %v, want a fallback", r.Degraded, r.Cached)
	}
	h.fake.Always(nil)
	calls := h.fake.Requests()
	r = h.ask("u1", video1, opening)
	if r.Cached || r.Degraded || h.fake.Requests() != calls+1 {
		t.Fatalf("after a fallback: Cached %v Degraded %v, %d calls (want %d)", r.Cached, r.Degraded, h.fake.Requests(), calls+1)
	}
	if r := h.ask("u2", video1, opening); !r.Cached {
		t.Fatal("the good reply was not cached")
	}

	// No transcript: answered, degraded, not cached, not served.
	const noVideo = "https://videos.example/go-101/none"
	for i := range 2 {
		calls := h.fake.Requests()
		r := h.ask("nt-"+strconv.Itoa(i), noVideo, opening)
		if !r.TranscriptMissing || r.Cached || h.fake.Requests() != calls+1 {
			t.Fatalf("no transcript, asker %d: missing %v Cached %v, %d calls (want %d)", i, r.TranscriptMissing, r.Cached, h.fake.Requests(), calls+1)
		}
	}
}

// A course not opted in never touches the cache: no lookup, no key, no
// metric.
func TestAnswersCourseNotOptedIn(t *testing.T) {
	var asked []string
	var mu sync.Mutex
	h := answersHarness(t, false, harnessOpts{service: chat.ServiceConfig{Answers: chat.AnswersConfig{Courses: func(c string) bool {
		mu.Lock()
		asked = append(asked, c)
		mu.Unlock()
		return c == "opted-in"
	}}}})
	for i := range 3 {
		if r := h.ask("u"+strconv.Itoa(i), video1, opening); r.Cached {
			t.Fatal("a course not opted in was served from the cache")
		}
	}
	if n := h.fake.Requests(); n != 3 {
		t.Errorf("%d upstream calls, want 3", n)
	}
	keys, err := h.env.Keys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if strings.Contains(k, "chat:answers:") {
			t.Errorf("key %q written for a course not opted in", k)
		}
	}
	if m := metricValue(t, h.reg, "ai_chat_answer_cache_misses_total", "", ""); m != 0 {
		t.Errorf("%v misses counted", m)
	}
	if len(asked) != 3 || asked[0] != course {
		t.Errorf("Courses asked about %q", asked)
	}
	// With the cache off, nothing is registered.
	off := newHarness(t, harnessOpts{})
	mfs, _ := off.reg.Gather()
	for _, mf := range mfs {
		if strings.Contains(mf.GetName(), "answer_cache") {
			t.Errorf("%s registered with the cache off", mf.GetName())
		}
	}
}

// The cache's Redis down (stopped, or hanging without an answer): turns
// are answered, not degraded, and the failures are counted; the
// process's own L1 still serves.
func TestAnswersRedisDown(t *testing.T) {
	t.Run("stopped", func(t *testing.T) {
		broken := tu.MiniredisEnv(t)
		broken.Mini.Close()
		testAnswersRedisDown(t, broken.Client)
	})
	t.Run("hung", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var conns sync.WaitGroup
		var mu sync.Mutex
		var open []net.Conn
		conns.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				open = append(open, c)
				mu.Unlock()
			}
		})
		t.Cleanup(func() {
			_ = ln.Close()
			conns.Wait()
			mu.Lock()
			for _, c := range open {
				_ = c.Close()
			}
			mu.Unlock()
		})
		// Socket timeouts far beyond the cache's bound: the bound ends the wait.
		rdb := redis.NewClient(&redis.Options{Addr: ln.Addr().String(), ReadTimeout: time.Minute, WriteTimeout: time.Minute})
		t.Cleanup(func() { _ = rdb.Close() })
		testAnswersRedisDown(t, rdb)
	})
}

func testAnswersRedisDown(t *testing.T, rdb redis.UniversalClient) {
	h := newHarness(t, harnessOpts{})
	svc := h.newService(chat.ServiceConfig{Answers: chat.AnswersConfig{Courses: allCourses, Redis: rdb, Prefix: h.env.Prefix,
		RedisTimeout: 100 * time.Millisecond}})
	r := askWith(t, svc, "u0", video1, opening)
	if r.Degraded || r.Cached || !r.Stored || h.fake.Requests() != 1 {
		t.Fatalf("first asker: %+v, %d calls", r, h.fake.Requests())
	}
	if n := metricValue(t, h.reg, "ai_chat_answer_cache_redis_errors_total", "", ""); n < 1 {
		t.Errorf("%v Redis errors counted", n)
	}
	r = askWith(t, svc, "u1", video1, opening)
	if r.Degraded || !r.Cached || h.fake.Requests() != 1 {
		t.Fatalf("second asker: Degraded %v Cached %v, %d calls", r.Degraded, r.Cached, h.fake.Requests())
	}
}

// Stream serves a hit as deltas that make up the cached reply, and
// stores it.
func TestAnswersStream(t *testing.T) {
	forEachStore(t, func(t *testing.T, memory bool) {
		h := answersHarness(t, memory, harnessOpts{})
		stream := func(user string) (chat.Response, string, int) {
			var b strings.Builder
			n := 0
			r, err := h.svc.Stream(context.Background(), chat.Request{UserID: user, CourseID: course, VideoURL: video1, Message: opening},
				func(d string) error { b.WriteString(d); n++; return nil })
			if err != nil {
				t.Fatal(err)
			}
			return r, b.String(), n
		}
		first, text, _ := stream("u0")
		if first.Cached || text != first.Reply {
			t.Fatalf("first: Cached %v, deltas %q, reply %q", first.Cached, text, first.Reply)
		}
		if first.Usage.CompletionTokens == 0 {
			t.Fatal("the streamed miss reported no usage")
		}
		hit, text, n := stream("u1")
		if !hit.Cached || text != first.Reply || hit.Reply != first.Reply || n < 1 || !hit.Stored {
			t.Fatalf("hit: Cached %v, %d deltas %q, reply %q, stored %v", hit.Cached, n, text, hit.Reply, hit.Stored)
		}
		if hit.SavedUsage != first.Usage || h.fake.Requests() != 1 {
			t.Fatalf("hit saved %+v (want %+v), %d calls", hit.SavedUsage, first.Usage, h.fake.Requests())
		}
		// A unary asker hits the streamed answer too.
		if r := h.ask("u2", video1, opening); !r.Cached || r.Reply != first.Reply {
			t.Fatalf("unary after stream: Cached %v", r.Cached)
		}
		// A caller that leaves during a hit's deltas stores nothing.
		boom := errors.New("gone")
		_, err := h.svc.Stream(context.Background(), chat.Request{UserID: "u3", CourseID: course, VideoURL: video1, Message: opening},
			func(string) error { return boom })
		if !errors.Is(err, boom) {
			t.Fatalf("Stream with a failing onDelta: %v", err)
		}
		if got := h.history("u3"); len(got) != 0 {
			t.Fatalf("abandoned hit stored %q", got)
		}
	})
}

// A turn waiting for another instance's answer calls the upstream itself
// once LockWait runs out; it does not wait for a holder that never ends.
func TestAnswersLockWaitRunsOut(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	sc := chat.ServiceConfig{Answers: chat.AnswersConfig{Courses: allCourses, Redis: h.env.Client, Prefix: h.env.Prefix,
		LockWait: 50 * time.Millisecond}}
	svc := h.newService(sc)
	// Another instance holds every lock: a lock key is in place for the
	// key the turn will use. Find it by a first turn's keys.
	askWith(t, svc, "u0", video1, opening)
	keys, err := h.env.Keys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var answerKey string
	for _, k := range keys {
		if strings.HasPrefix(k, h.env.Prefix+"chat:answers:{") && strings.HasSuffix(k, "}:a") {
			answerKey = k
		}
	}
	if answerKey == "" {
		t.Fatalf("no answer key among %q", keys)
	}
	lockKey := strings.TrimSuffix(answerKey, "a") + "lock"
	ctx := context.Background()
	pipe := h.env.Client.Pipeline()
	pipe.Del(ctx, answerKey)
	pipe.Set(ctx, lockKey, "another-instance", time.Minute)
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	// A fresh Service has no L1 copy.
	fresh := h.newService(sc)
	r := askWith(t, fresh, "u1", video1, opening)
	if r.Cached || h.fake.Requests() != 2 {
		t.Fatalf("Cached %v, %d calls, want a call of its own", r.Cached, h.fake.Requests())
	}
	// Its answer is written for the next askers, the lock left alone.
	if v, err := h.env.Client.Get(ctx, lockKey).Result(); err != nil || v != "another-instance" {
		t.Errorf("lock = %q, %v", v, err)
	}
	if err := h.env.Client.Get(ctx, answerKey).Err(); errors.Is(err, redis.Nil) {
		t.Error("the answer was not written")
	}
}

func TestAnswersConfigErrors(t *testing.T) {
	h := newHarness(t, harnessOpts{noRegistry: true})
	for _, c := range []struct {
		field string
		a     chat.AnswersConfig
	}{
		{"ServiceConfig.Answers.TTL", chat.AnswersConfig{TTL: -time.Second}},
		{"ServiceConfig.Answers.LockTTL", chat.AnswersConfig{LockTTL: -time.Second}},
		{"ServiceConfig.Answers.Prefix", chat.AnswersConfig{Prefix: "a{b}:"}},
	} {
		c.a.Courses = allCourses
		_, err := chat.NewService(chat.ServiceConfig{Threads: h.store, Transcripts: h.cache, Completer: h.client, Model: "m", Answers: c.a})
		var ce *chatscale.ConfigError
		if !errors.As(err, &ce) || ce.Field != c.field {
			t.Errorf("%s: err %v", c.field, err)
		}
	}
	// Without Courses, the other fields are not looked at: the cache is off.
	if _, err := chat.NewService(chat.ServiceConfig{Threads: h.store, Transcripts: h.cache, Completer: h.client, Model: "m",
		Answers: chat.AnswersConfig{TTL: -1}}); err != nil {
		t.Errorf("cache off: %v", err)
	}
}

// A turn served a stale transcript (the source failed) is degraded: it
// neither reads nor fills the cache.
func TestAnswersNotWithStaleTranscript(t *testing.T) {
	clock := tu.NewClock(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	h := answersHarness(t, true, harnessOpts{cache: contextcache.Config{Now: clock.Now, L1TTL: time.Minute, MaxStale: time.Hour}})
	if r := h.ask("u0", video1, opening); r.Cached || r.Degraded {
		t.Fatalf("fresh: Cached %v Degraded %v", r.Cached, r.Degraded)
	}
	clock.Advance(2 * time.Minute)
	h.src.down.Store(true)
	for i := 1; i <= 2; i++ {
		r := h.ask("u"+strconv.Itoa(i), video1, opening)
		if !r.TranscriptStale || r.Cached || h.fake.Requests() != 1+i {
			t.Fatalf("stale, asker %d: stale %v Cached %v, %d calls (want %d)", i, r.TranscriptStale, r.Cached, h.fake.Requests(), 1+i)
		}
	}
}

// The answer cache's Redis round trips: a miss costs two (the lookup that
// takes the lock, the write that releases it), a hit from Redis one, a
// hit from process memory none.
func TestAnswersRoundTrips(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	rdb := h.env.NewClient()
	rec := &tripRecorder{}
	rdb.AddHook(rec)
	cfg := chat.AnswersConfig{Courses: allCourses, Redis: rdb, Prefix: h.env.Prefix}
	svc := h.newService(chat.ServiceConfig{Answers: cfg})
	if err := svc.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	cfg.L1Size = -1
	noL1 := h.newService(chat.ServiceConfig{Answers: cfg})
	rec.take()
	for _, c := range []struct {
		name   string
		svc    *chat.Service
		cached bool
		trips  int
	}{
		{"miss", svc, false, 2},
		{"hit from L1", svc, true, 0},
		{"hit from L2", noL1, true, 1},
	} {
		r := askWith(t, c.svc, "u-"+c.name, video1, opening)
		trips, seq := rec.take()
		if r.Cached != c.cached || len(trips) != c.trips || seq != c.trips {
			t.Errorf("%s: Cached %v, %d round trips (%d sequential): %v; want %d", c.name, r.Cached, len(trips), seq, names(trips), c.trips)
		}
	}
}
