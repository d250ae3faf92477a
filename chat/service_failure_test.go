package chat_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
	tu "github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
	"github.com/chatscale/chatscale/threads"
)

// brokenStore returns a Redis thread store whose server is gone.
func brokenStore(t *testing.T) threads.Store {
	t.Helper()
	env := tu.MiniredisEnv(t)
	st, err := threads.NewRedis(env.Client, threads.Config{Prefix: env.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	env.Mini.Close()
	return st
}

func TestServiceThreadStoreDown(t *testing.T) {
	t.Run("error", func(t *testing.T) {
		h := newHarness(t, harnessOpts{memory: true, service: chat.ServiceConfig{Threads: brokenStore(t)}})
		_, err := h.svc.Ask(context.Background(), chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "Hi"})
		var ue *chat.UnavailableError
		if !errors.As(err, &ue) || ue.Reason != chat.ReasonThreadsDown || !errors.Is(err, threads.ErrUnavailable) {
			t.Fatalf("err = %v, want an *UnavailableError with ReasonThreadsDown wrapping threads.ErrUnavailable", err)
		}
		if h.fake.Requests() != 0 {
			t.Error("the upstream was asked although the turn failed")
		}
	})
	t.Run("answer without history", func(t *testing.T) {
		h := newHarness(t, harnessOpts{memory: true, service: chat.ServiceConfig{Threads: brokenStore(t), AnswerWithoutThread: true}})
		r := h.ask("ada", video1, "Hi")
		if !r.Degraded || !hasReason(r, chat.ReasonThreadsDown) || r.Stored || r.ThreadID != "" || r.Reply == "" {
			t.Fatalf("response = %+v, want a degraded, unstored answer", r)
		}
		if got := roles(h.lastRequest().Messages); got != "system,system,user" {
			t.Errorf("roles = %s", got)
		}
		if got := metricValue(t, h.reg, "ai_chat_degraded_total", "reason", string(chat.ReasonThreadsDown)); got != 1 {
			t.Errorf("degraded_total{reason=threads_unavailable} = %v, want 1", got)
		}
	})
}

func hasReason(r chat.Response, want chat.Reason) bool {
	for _, x := range r.Reasons {
		if x == want {
			return true
		}
	}
	return false
}

func TestServiceTranscriptMissing(t *testing.T) {
	const nowhere = "https://videos.example/go-101/none"
	t.Run("error", func(t *testing.T) {
		h := newHarness(t, harnessOpts{memory: true})
		_, err := h.svc.Ask(context.Background(), chat.Request{UserID: "ada", CourseID: course, VideoURL: nowhere, Message: "Hi"})
		var ue *chat.UnavailableError
		if !errors.As(err, &ue) || ue.Reason != chat.ReasonNoTranscript || !errors.Is(err, contextcache.ErrNotFound) {
			t.Fatalf("err = %v, want ReasonNoTranscript wrapping contextcache.ErrNotFound", err)
		}
		if h.fake.Requests() != 0 || h.hasThread("ada") {
			t.Error("a refused turn was sent or stored")
		}
	})
	t.Run("answer without transcript", func(t *testing.T) {
		h := newHarness(t, harnessOpts{memory: true, service: chat.ServiceConfig{AnswerWithoutTranscript: true}})
		r := h.ask("ada", nowhere, "Hi")
		if !r.Degraded || !hasReason(r, chat.ReasonNoTranscript) || !r.TranscriptMissing || !r.Stored {
			t.Fatalf("response = %+v, want degraded (no transcript) and stored", r)
		}
		if got := roles(h.lastRequest().Messages); got != "system,user" {
			t.Errorf("roles = %s, want no transcript message", got)
		}
		if got := h.history("ada"); len(got) != 2 {
			t.Errorf("thread holds %d messages, want the exchange (2): the reply is the model's", len(got))
		}
	})
}

func TestServiceTranscriptSourceDown(t *testing.T) {
	clock := tu.NewClock(time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC))
	h := newHarness(t, harnessOpts{memory: true, cache: contextcache.Config{
		Now: clock.Now, L1TTL: time.Minute, MaxStale: time.Hour, NegativeTTL: -1,
	}})
	h.ask("ada", video1, "First") // fills the cache
	clock.Advance(2 * time.Minute)
	h.src.down.Store(true)
	r := h.ask("ada", video1, "Second")
	if !r.TranscriptStale || !r.Degraded || !hasReason(r, chat.ReasonStaleTranscript) || !r.Stored {
		t.Fatalf("response = %+v, want a stale transcript flagged and the exchange stored", r)
	}
	if !strings.Contains(h.lastRequest().Messages[1].Content, "Goroutines are functions") {
		t.Error("the stale copy was not sent")
	}
	// A video never loaded has no copy: an error, or an answer without it.
	_, err := h.svc.Ask(context.Background(), chat.Request{UserID: "ada", CourseID: course, VideoURL: video2, Message: "Third"})
	var ue *chat.UnavailableError
	if !errors.As(err, &ue) || ue.Reason != chat.ReasonTranscriptDown || !errors.Is(err, contextcache.ErrUnavailable) {
		t.Fatalf("err = %v, want ReasonTranscriptDown wrapping contextcache.ErrUnavailable", err)
	}
}

func TestServiceUpstreamDown(t *testing.T) {
	t.Run("fallback", func(t *testing.T) {
		h := newHarness(t, harnessOpts{memory: true})
		h.fake.Always(&tu.FakeStep{Status: http.StatusInternalServerError})
		r := h.ask("ada", video1, "Hi")
		if !r.Degraded || !hasReason(r, chat.ReasonRetriesSpent) || r.Reply != chat.DefaultFallbackText || r.Stored {
			t.Fatalf("response = %+v, want the fallback, degraded and not stored", r)
		}
		if got := h.history("ada"); len(got) != 0 {
			t.Errorf("thread holds %q after a fallback reply, want nothing", got)
		}
		if got := metricValue(t, h.reg, "ai_chat_requests_total", "status", "degraded"); got != 1 {
			t.Errorf("requests_total{status=degraded} = %v", got)
		}
	})
	t.Run("typed error", func(t *testing.T) {
		h := newHarness(t, harnessOpts{memory: true, client: chat.Config{DisableFallback: true}})
		h.fake.Always(&tu.FakeStep{Status: http.StatusInternalServerError})
		_, err := h.svc.Ask(context.Background(), chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "Hi"})
		if !errors.Is(err, chat.ErrUnavailable) {
			t.Fatalf("err = %v, want ErrUnavailable", err)
		}
		if got := h.history("ada"); len(got) != 0 {
			t.Errorf("thread holds %q after a failed turn", got)
		}
		if got := metricValue(t, h.reg, "ai_chat_requests_total", "status", "unavailable"); got != 1 {
			t.Errorf("requests_total{status=unavailable} = %v", got)
		}
	})
}

func TestServiceUserQuota(t *testing.T) {
	for _, viaClient := range []bool{true, false} {
		t.Run(map[bool]string{true: "client", false: "other completer"}[viaClient], func(t *testing.T) {
			o := harnessOpts{memory: true, service: chat.ServiceConfig{UserRequests: mustLocal(t, ratelimit.PerMinute(2))}}
			h := newHarness(t, o)
			if !viaClient {
				// The go-openai client itself: a Completer that is not a *Client.
				h = newHarness(t, harnessOpts{memory: true, service: chat.ServiceConfig{
					UserRequests: mustLocal(t, ratelimit.PerMinute(2)),
				}})
				svc, err := chat.NewService(chat.ServiceConfig{Threads: h.store, Transcripts: h.cache,
					Completer: chat.NewOpenAI(h.fake.URL, "sk", 4), Model: "gpt-4o-mini",
					UserRequests: mustLocal(t, ratelimit.PerMinute(2))})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = svc.Close(context.Background()) })
				h.svc = svc
			}
			h.ask("ada", video1, "One")
			h.ask("ada", video1, "Two")
			_, err := h.svc.Ask(context.Background(), chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "Three"})
			var rl *chat.RateLimitError
			if !errors.As(err, &rl) || !errors.Is(err, chat.ErrRateLimited) || rl.RetryAfter <= 0 || rl.Key != "ada" {
				t.Fatalf("err = %v, want a *RateLimitError for ada with a RetryAfter", err)
			}
			if n := h.fake.Requests(); n != 2 {
				t.Errorf("upstream got %d requests, want 2", n)
			}
			if got := h.history("ada"); len(got) != 4 {
				t.Errorf("thread holds %d messages, want the 2 exchanges allowed", len(got))
			}
			// Another learner has a quota of their own.
			h.ask("bob", video1, "One")
		})
	}
}

func TestServiceStream(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	var deltas []string
	r, err := h.svc.Stream(context.Background(), chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "Stream it"},
		func(d string) error { deltas = append(deltas, d); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(deltas) < 2 || strings.Join(deltas, "") != r.Reply || r.Reply != tu.Reply(h.lastRequest()) {
		t.Fatalf("%d deltas %q, reply %q", len(deltas), deltas, r.Reply)
	}
	if !r.Stored || r.Usage.CompletionTokens == 0 {
		t.Errorf("response = %+v, want stored with usage", r)
	}
	if got := h.history("ada"); len(got) != 2 || got[1] != "assistant: "+r.Reply {
		t.Errorf("thread holds %q", got)
	}

	// The learner goes away after the first delta: the upstream call
	// stops and nothing is stored.
	stop := errors.New("client gone")
	n := 0
	_, err = h.svc.Stream(context.Background(), chat.Request{UserID: "bob", CourseID: course, VideoURL: video1, Message: "Stream it"},
		func(string) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("err = %v after %d deltas, want the callback's error after 1", err, n)
	}
	if h.hasThread("bob") && len(h.history("bob")) != 0 {
		t.Errorf("an abandoned stream stored %q", h.history("bob"))
	}
	if got := metricValue(t, h.reg, "ai_chat_requests_total", "status", "canceled"); got != 1 {
		t.Errorf("requests_total{status=canceled} = %v after an abandoned stream, want 1", got)
	}

	// A stream cut by the upstream stores nothing either.
	h.fake.Script(tu.FakeStep{CutAfter: 1})
	_, err = h.svc.Stream(context.Background(), chat.Request{UserID: "cyd", CourseID: course, VideoURL: video1, Message: "Stream it"},
		func(string) error { return nil })
	if !errors.Is(err, chat.ErrUnavailable) {
		t.Fatalf("cut stream: err = %v, want ErrUnavailable", err)
	}
	if got := h.history("cyd"); len(got) != 0 {
		t.Errorf("a cut stream stored %q", got)
	}
}

func TestServiceStreamFallback(t *testing.T) {
	h := newHarness(t, harnessOpts{memory: true})
	h.fake.Always(&tu.FakeStep{Status: http.StatusServiceUnavailable})
	var got strings.Builder
	r, err := h.svc.Stream(context.Background(), chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "Hi"},
		func(d string) error { got.WriteString(d); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != chat.DefaultFallbackText || !r.Degraded || r.Stored {
		t.Fatalf("deltas %q, response %+v: want the fallback as a delta, degraded, unstored", got.String(), r)
	}
}

func TestServiceCanceledTurn(t *testing.T) {
	h := newHarness(t, harnessOpts{memory: true})
	h.fake.Always(&tu.FakeStep{Hang: true})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := h.svc.Ask(ctx, chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "Hi"})
		done <- err
	}()
	if err := h.fake.WaitRequests(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if got := h.history("ada"); len(got) != 0 {
		t.Errorf("a canceled turn stored %q", got)
	}
}

func TestServiceCloseWaitsForTurns(t *testing.T) {
	// Checked after every part of the harness is closed.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	h := newHarness(t, harnessOpts{memory: true, fake: tu.OpenAIConfig{Latency: 300 * time.Millisecond}})
	type result struct {
		r   chat.Response
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := h.svc.Ask(context.Background(), chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "Hi"})
		done <- result{r, err}
	}()
	if err := h.fake.WaitRequests(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	if err := h.svc.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The turn in flight was finished, its exchange stored, before Close
	// returned.
	if got := h.history("ada"); len(got) != 2 {
		t.Fatalf("after Close the thread holds %q, want the exchange of the turn in flight", got)
	}
	if res := <-done; res.err != nil || !res.r.Stored {
		t.Fatalf("the turn in flight ended with %v, stored %v", res.err, res.r.Stored)
	}
	if _, err := h.svc.Ask(context.Background(), chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "Hi"}); !errors.Is(err, chat.ErrClosed) {
		t.Errorf("Ask after Close: %v, want ErrClosed", err)
	}
	if err := h.svc.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestServiceCloseBoundedByContext(t *testing.T) {
	h := newHarness(t, harnessOpts{memory: true})
	h.fake.Always(&tu.FakeStep{Hang: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := h.svc.Ask(ctx, chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "Hi"})
		done <- err
	}()
	if err := h.fake.WaitRequests(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer ccancel()
	if err := h.svc.Close(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with a turn hanging: %v, want context.DeadlineExceeded", err)
	}
	cancel()
	<-done
}

func TestServiceMetrics(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.ask("ada", video1, "One")
	h.ask("ada", video1, "Two")
	h.ask("bob", video2, "One")
	for _, c := range []struct {
		name, label, value string
		want               float64
	}{
		{"ai_chat_requests_total", "status", "ok", 3},
		{"ai_chat_request_duration_seconds", "", "", 3},
		{"ai_chat_transcripts_total", "tier", "source", 2},
		{"ai_chat_transcripts_total", "tier", "l1", 1},
		{"ai_chat_active_threads", "", "", 2},
	} {
		if got := metricValue(t, h.reg, c.name, c.label, c.value); got != c.want {
			t.Errorf("%s{%s=%q} = %v, want %v", c.name, c.label, c.value, got, c.want)
		}
	}
	if got := metricValue(t, h.reg, "ai_chat_tokens_total", "kind", "prompt"); got <= 0 {
		t.Errorf("tokens_total{kind=prompt} = %v", got)
	}
	if got := metricValue(t, h.reg, "ai_chat_tokens_total", "kind", "completion"); got <= 0 {
		t.Errorf("tokens_total{kind=completion} = %v", got)
	}
}

func TestServiceConfigErrors(t *testing.T) {
	h := newHarness(t, harnessOpts{memory: true})
	base := chat.ServiceConfig{Threads: h.store, Transcripts: h.cache, Completer: h.client, Model: "m"}
	for _, c := range []struct {
		field string
		edit  func(c *chat.ServiceConfig)
	}{
		{"ServiceConfig.Threads", func(c *chat.ServiceConfig) { c.Threads = nil }},
		{"ServiceConfig.Transcripts", func(c *chat.ServiceConfig) { c.Transcripts = nil }},
		{"ServiceConfig.Completer", func(c *chat.ServiceConfig) { c.Completer = nil }},
		{"ServiceConfig.Model", func(c *chat.ServiceConfig) { c.Model = " " }},
		{"ServiceConfig.SystemPrompt", func(c *chat.ServiceConfig) { c.SystemPrompt = "{{.Nope" }},
		{"ServiceConfig.SystemPrompt", func(c *chat.ServiceConfig) { c.SystemPrompt = "{{.Nope}}" }},
		{"ServiceConfig.MaxReplyTokens", func(c *chat.ServiceConfig) { c.ContextWindow, c.MaxReplyTokens = 100, 100 }},
		{"ServiceConfig.MaxMessageBytes", func(c *chat.ServiceConfig) { c.MaxMessageBytes = -1 }},
	} {
		cfg := base
		c.edit(&cfg)
		_, err := chat.NewService(cfg)
		if !isConfigError(err, c.field) {
			t.Errorf("%s: err = %v, want a *chatscale.ConfigError for it", c.field, err)
		}
	}
}

// isConfigError reports whether err is a *chatscale.ConfigError for field.
func isConfigError(err error, field string) bool {
	var ce *chatscale.ConfigError
	return errors.As(err, &ce) && ce.Field == field && errors.Is(err, chatscale.ErrInvalidConfig)
}

// countingStore counts the calls of Active on a real store.
type countingStore struct {
	threads.Store
	active atomic.Int64
}

func (s *countingStore) Active(ctx context.Context, within time.Duration) (int, error) {
	s.active.Add(1)
	return s.Store.Active(ctx, within)
}

func TestServiceActiveThreadsGauge(t *testing.T) {
	clock := tu.NewClock(time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC))
	mem, err := threads.NewMemory(threads.Config{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mem.Close() })
	st := &countingStore{Store: mem}
	h := newHarness(t, harnessOpts{memory: true, service: chat.ServiceConfig{Threads: st, Now: clock.Now, ActiveEvery: time.Minute}})
	for _, u := range []string{"ada", "bob", "cyd"} {
		h.ask(u, video1, "Hi")
	}
	if n := st.active.Load(); n != 0 {
		t.Fatalf("turns counted active threads %d times, want never", n)
	}
	if got := metricValue(t, h.reg, "ai_chat_active_threads", "", ""); got != 3 {
		t.Fatalf("active_threads = %v, want 3", got)
	}
	// Within ActiveEvery a scrape serves the last count.
	h.ask("dan", video1, "Hi")
	if got := metricValue(t, h.reg, "ai_chat_active_threads", "", ""); got != 3 || st.active.Load() != 1 {
		t.Fatalf("active_threads = %v after %d counts, want the cached 3 after 1", got, st.active.Load())
	}
	// Later, a scrape returns at once and refreshes in the background.
	clock.Advance(2 * time.Minute)
	metricValue(t, h.reg, "ai_chat_active_threads", "", "")
	if !tu.Eventually(5*time.Second, func() bool { return metricValue(t, h.reg, "ai_chat_active_threads", "", "") == 4 }) {
		t.Fatal("active_threads never reached 4 after the refresh")
	}
}

func TestServiceLogLine(t *testing.T) {
	var buf syncBuffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	h := newHarness(t, harnessOpts{memory: true, service: chat.ServiceConfig{Logger: logger}})
	const secret = "my password is hunter2"
	h.ask("ada", video1, secret)
	out := buf.String()
	if !strings.Contains(out, `"msg":"chat: turn"`) || !strings.Contains(out, `"status":"ok"`) || !strings.Contains(out, `"course_id":"go-101"`) {
		t.Fatalf("log = %s, want a turn line with status and course", out)
	}
	for _, leak := range []string{"hunter2", "reply to", "sk-test"} {
		if strings.Contains(out, leak) {
			t.Errorf("log holds %q: %s", leak, out)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestServiceOverFailover runs turns through a Failover of two Clients:
// the Response names the member that answered.
func TestServiceOverFailover(t *testing.T) {
	h := newHarness(t, harnessOpts{memory: true})
	secondary := tu.OpenAI(t, tu.OpenAIConfig{})
	member := func(url string) *chat.Client {
		c, err := chat.NewClient(chat.NewOpenAI(url, "sk", 4), chat.Config{DisableFallback: true, MaxAttempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	f, err := chat.NewFailover([]chat.Member{
		{Name: "primary", Completer: member(h.fake.URL)},
		{Name: "secondary", Completer: member(secondary.URL), Model: "small-model"},
	}, chat.FailoverConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	svc, err := chat.NewService(chat.ServiceConfig{Threads: h.store, Transcripts: h.cache, Completer: f, Model: "gpt-4o-mini"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close(context.Background()) })
	req := chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "Hi"}
	r, err := svc.Ask(context.Background(), req)
	if err != nil || r.Member != "primary" || r.Degraded {
		t.Fatalf("healthy primary: member %q degraded %v err %v", r.Member, r.Degraded, err)
	}
	h.fake.Always(&tu.FakeStep{Status: http.StatusInternalServerError})
	r, err = svc.Ask(context.Background(), req)
	if err != nil || r.Member != "secondary" || r.Degraded || !r.Stored {
		t.Fatalf("primary down: member %q degraded %v stored %v err %v", r.Member, r.Degraded, r.Stored, err)
	}
	if ev := secondary.Events(); len(ev) != 1 || ev[0].Request.Model != "small-model" {
		t.Errorf("secondary got %d requests, want 1 with its own model small-model", len(ev))
	}
	var got strings.Builder
	r, err = svc.Stream(context.Background(), req, func(d string) error { got.WriteString(d); return nil })
	if err != nil || r.Member != "secondary" || got.String() != r.Reply {
		t.Fatalf("stream with primary down: member %q err %v", r.Member, err)
	}
}
