package chat_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
	tu "github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
	"github.com/chatscale/chatscale/threads"
)

// source is a transcript source for the tests: documents by video URL,
// with a switch that makes it fail.
type source struct {
	mu    sync.Mutex
	docs  map[string]contextcache.Document
	down  atomic.Bool
	loads atomic.Int64
}

func (s *source) Load(_ context.Context, courseID, videoURL string) (contextcache.Document, error) {
	s.loads.Add(1)
	if s.down.Load() {
		return contextcache.Document{}, errors.New("source down")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.docs[videoURL]
	if !ok {
		return contextcache.Document{}, fmt.Errorf("video %q: %w", videoURL, contextcache.ErrNotFound)
	}
	d.CourseID, d.VideoURL = courseID, videoURL
	return d, nil
}

func (s *source) put(videoURL string, d contextcache.Document) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.docs == nil {
		s.docs = make(map[string]contextcache.Document)
	}
	s.docs[videoURL] = d
}

// harness wires a Service from real parts: a thread store (Redis through
// testutil, or memory), a contextcache.Cache over source, a chat.Client
// over go-openai against the fake OpenAI server.
type harness struct {
	t      *testing.T
	env    *tu.RedisEnv
	store  threads.Store
	src    *source
	cache  *contextcache.Cache
	fake   *tu.FakeOpenAI
	client *chat.Client
	svc    *chat.Service
	reg    *prometheus.Registry
}

type harnessOpts struct {
	memory     bool // memory thread store instead of Redis
	threads    threads.Config
	client     chat.Config
	service    chat.ServiceConfig
	cache      contextcache.Config
	fake       tu.OpenAIConfig
	noRegistry bool
}

const (
	course = "go-101"
	video1 = "https://videos.example/go-101/1"
	video2 = "https://videos.example/go-101/2"
)

func newHarness(t *testing.T, o harnessOpts) *harness {
	t.Helper()
	h := &harness{t: t, src: &source{}}
	h.src.put(video1, contextcache.Document{Title: "Goroutines", Text: "Goroutines are functions that run concurrently."})
	h.src.put(video2, contextcache.Document{Title: "Channels", Text: "Channels connect goroutines."})
	if o.memory {
		st, err := threads.NewMemory(threads.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		h.store = st
	} else {
		h.env = tu.Redis(t)
		tc := o.threads
		tc.Prefix = h.env.Prefix
		st, err := threads.NewRedis(h.env.Client, tc)
		if err != nil {
			t.Fatal(err)
		}
		h.store = st
		o.cache.Redis = h.env.Client
		o.cache.Prefix = h.env.Prefix
	}
	cache, err := contextcache.New(h.src, o.cache)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cache.Close() })
	h.cache = cache
	h.fake = tu.OpenAI(t, o.fake)
	if h.env != nil && o.client.Redis == nil {
		o.client.Redis = h.env.Client
		o.client.Prefix = h.env.Prefix
	}
	if o.client.BaseDelay == 0 {
		o.client.BaseDelay = time.Millisecond
	}
	client, err := chat.NewClient(chat.NewOpenAI(h.fake.URL, "sk-test", 16), o.client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	h.client = client
	sc := o.service
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
	if !o.noRegistry && sc.Registerer == nil {
		h.reg = prometheus.NewRegistry()
		sc.Registerer = h.reg
	}
	svc, err := chat.NewService(sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := svc.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	h.svc = svc
	return h
}

func (h *harness) ask(user, videoURL, msg string) chat.Response {
	h.t.Helper()
	resp, err := h.svc.Ask(context.Background(), chat.Request{UserID: user, CourseID: course, VideoURL: videoURL, Message: msg})
	if err != nil {
		h.t.Fatalf("Ask(%q): %v", msg, err)
	}
	return resp
}

// lastRequest is the last request the fake upstream received.
func (h *harness) lastRequest() openai.ChatCompletionRequest {
	h.t.Helper()
	ev := h.fake.Events()
	if len(ev) == 0 {
		h.t.Fatal("the upstream received no request")
	}
	return ev[len(ev)-1].Request
}

// history returns the thread of (user, course) as "role: content" lines.
func (h *harness) history(user string) []string {
	h.t.Helper()
	ctx := context.Background()
	th, err := h.store.GetOrCreate(ctx, user, course)
	if err != nil {
		h.t.Fatal(err)
	}
	msgs, err := h.store.History(ctx, th.ID, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = string(m.Role) + ": " + m.Content
	}
	return out
}

// hasThread reports whether (user, course) has a thread, without making one.
func (h *harness) hasThread(user string) bool {
	h.t.Helper()
	n, err := h.store.ForgetUser(context.Background(), user)
	if err != nil {
		h.t.Fatal(err)
	}
	return n > 0
}

func roles(msgs []openai.ChatCompletionMessage) string {
	rs := make([]string, len(msgs))
	for i, m := range msgs {
		rs[i] = m.Role
	}
	return strings.Join(rs, ",")
}

func forEachStore(t *testing.T, f func(t *testing.T, memory bool)) {
	t.Run("redis", func(t *testing.T) { f(t, false) })
	t.Run("memory", func(t *testing.T) { f(t, true) })
}

func TestServiceTurnsEndToEnd(t *testing.T) {
	forEachStore(t, func(t *testing.T, memory bool) {
		h := newHarness(t, harnessOpts{memory: memory})

		r1 := h.ask("ada", video1, "What is a goroutine?")
		req := h.lastRequest()
		if got := roles(req.Messages); got != "system,system,user" {
			t.Fatalf("first turn roles = %s, want system,system,user", got)
		}
		if sys := req.Messages[0].Content; !strings.Contains(sys, course) || !strings.Contains(sys, `"Goroutines"`) {
			t.Errorf("system prompt %q does not name the course and the video's title", sys)
		}
		if tr := req.Messages[1].Content; !strings.Contains(tr, "Goroutines are functions that run concurrently.") {
			t.Errorf("transcript message %q does not hold the transcript", tr)
		}
		if req.Messages[2].Content != "What is a goroutine?" || req.Model != "gpt-4o-mini" || req.MaxCompletionTokens != chat.DefaultMaxReplyTokens {
			t.Errorf("request = model %q max %d last %q", req.Model, req.MaxCompletionTokens, req.Messages[2].Content)
		}
		if !r1.Created || r1.ThreadID == "" || r1.Degraded || !r1.Stored || r1.VideoChanged {
			t.Errorf("first response = %+v", r1)
		}
		if r1.Reply != tu.Reply(req) {
			t.Errorf("Reply = %q, want the upstream's %q", r1.Reply, tu.Reply(req))
		}
		if r1.Usage.PromptTokens == 0 || r1.Usage.CompletionTokens == 0 || r1.PromptTokens == 0 {
			t.Errorf("usage = %+v, prompt tokens %d", r1.Usage, r1.PromptTokens)
		}
		if r1.TranscriptTier != contextcache.TierSource || r1.TranscriptCut || r1.TranscriptStale || r1.TranscriptMissing {
			t.Errorf("transcript flags = tier %v cut %v stale %v missing %v", r1.TranscriptTier, r1.TranscriptCut, r1.TranscriptStale, r1.TranscriptMissing)
		}

		r2 := h.ask("ada", video1, "And a channel?")
		req2 := h.lastRequest()
		if got := roles(req2.Messages); got != "system,system,user,assistant,user" {
			t.Fatalf("second turn roles = %s", got)
		}
		if req2.Messages[2].Content != "What is a goroutine?" || req2.Messages[3].Content != r1.Reply || req2.Messages[4].Content != "And a channel?" {
			t.Errorf("second turn history = %q / %q / %q", req2.Messages[2].Content, req2.Messages[3].Content, req2.Messages[4].Content)
		}
		if req2.Messages[0].Content != req.Messages[0].Content || req2.Messages[1].Content != req.Messages[1].Content {
			t.Error("the prompt's prefix changed between two turns on one video")
		}
		if r2.Created || r2.ThreadID != r1.ThreadID || r2.HistoryMessages != 2 || r2.TranscriptTier != contextcache.TierL1 {
			t.Errorf("second response = %+v", r2)
		}
		want := []string{"user: What is a goroutine?", "assistant: " + r1.Reply, "user: And a channel?", "assistant: " + r2.Reply}
		if got := h.history("ada"); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("thread holds\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		// Another learner has a thread of their own.
		if r := h.ask("bob", video1, "Hello?"); r.ThreadID == r1.ThreadID || !r.Created {
			t.Errorf("bob's turn = %+v, shares ada's thread or did not create one", r)
		}
	})
}

func TestServiceVideoSwitchNote(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.ask("ada", video1, "What is a goroutine?")
	r := h.ask("ada", video2, "What is a channel?")
	if !r.VideoChanged || r.PreviousVideo != video1 {
		t.Fatalf("VideoChanged %v PreviousVideo %q, want true %q", r.VideoChanged, r.PreviousVideo, video1)
	}
	req := h.lastRequest()
	if got := roles(req.Messages); got != "system,system,user,assistant,system,user" {
		t.Fatalf("roles = %s, want the switch note after the history", got)
	}
	note := req.Messages[4].Content
	if !strings.Contains(note, video1) || !strings.Contains(note, video2) || !strings.Contains(note, `"Channels"`) {
		t.Errorf("switch note %q does not name both videos and the new title", note)
	}
	if !strings.Contains(req.Messages[1].Content, "Channels connect goroutines.") {
		t.Errorf("transcript is not the new video's: %q", req.Messages[1].Content)
	}
	// The same video again is no switch.
	h.ask("ada", video2, "Thanks")
	if got := roles(h.lastRequest().Messages); strings.Count(got, "system") != 2 {
		t.Errorf("roles = %s: a note for a turn on the same video", got)
	}
}

// timedDoc is a transcript of n one-minute segments.
func timedDoc(n int) contextcache.Document {
	d := contextcache.Document{Title: "Long lecture"}
	var text strings.Builder
	for i := range n {
		seg := contextcache.Segment{
			Start: time.Duration(i) * time.Minute, End: time.Duration(i+1) * time.Minute,
			Text: fmt.Sprintf("Minute %d: %s", i, strings.Repeat("words about the topic ", 12)),
		}
		d.Segments = append(d.Segments, seg)
		text.WriteString(seg.Text + " ")
	}
	d.Text = text.String()
	return d
}

func TestServiceTranscriptWindowAroundPosition(t *testing.T) {
	h := newHarness(t, harnessOpts{service: chat.ServiceConfig{TranscriptTokens: 600}})
	h.src.put(video1, timedDoc(60))
	ask := func(pos time.Duration) openai.ChatCompletionRequest {
		t.Helper()
		_, err := h.svc.Ask(context.Background(), chat.Request{UserID: "ada", CourseID: course, VideoURL: video1,
			Message: "What is said here?", Position: pos, HasPosition: true})
		if err != nil {
			t.Fatal(err)
		}
		return h.lastRequest()
	}
	a := ask(20*time.Minute + 10*time.Second)
	b := ask(21*time.Minute + 50*time.Second) // same 2-minute chunk: 20:00-22:00
	c := ask(45 * time.Minute)
	if a.Messages[1].Content != b.Messages[1].Content || a.Messages[0].Content != b.Messages[0].Content {
		t.Error("the prompt prefix differs for two positions in one chunk")
	}
	if !strings.Contains(a.Messages[1].Content, "Minute 20:") || !strings.Contains(a.Messages[1].Content, "Minute 21:") {
		t.Errorf("excerpt around 20:10 lacks minutes 20 and 21: %.200q", a.Messages[1].Content)
	}
	if strings.Contains(a.Messages[1].Content, "Minute 0:") || strings.Contains(a.Messages[1].Content, "Minute 59:") {
		t.Error("excerpt around 20:10 holds the whole transcript")
	}
	if c.Messages[1].Content == a.Messages[1].Content || !strings.Contains(c.Messages[1].Content, "Minute 45:") {
		t.Errorf("excerpt around 45:00 is not its own: %.200q", c.Messages[1].Content)
	}
	// The position reaches the model in a note after the history, not in
	// the prefix.
	last := b.Messages[len(b.Messages)-2]
	if last.Role != openai.ChatMessageRoleSystem || !strings.Contains(last.Content, "21:50") {
		t.Errorf("position note = %+v", last)
	}
	// Without a position: the beginning.
	r := h.ask("bob", video1, "Summary?")
	if !r.TranscriptCut || !strings.Contains(h.lastRequest().Messages[1].Content, "Minute 0:") {
		t.Errorf("no position: cut %v, excerpt %.120q", r.TranscriptCut, h.lastRequest().Messages[1].Content)
	}
}

func TestServiceHistoryNewestThatFit(t *testing.T) {
	h := newHarness(t, harnessOpts{service: chat.ServiceConfig{HistoryTokens: 60, HistoryMessages: 50}})
	ctx := context.Background()
	th, err := h.store.GetOrCreate(ctx, "ada", course)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		role := threads.RoleUser
		if i%2 == 1 {
			role = threads.RoleAssistant
		}
		if err := h.store.Append(ctx, th.ID, threads.Message{Role: role, Content: fmt.Sprintf("message number %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	r := h.ask("ada", video1, "Next?")
	req := h.lastRequest()
	hist := req.Messages[2 : len(req.Messages)-1]
	if len(hist) == 0 || len(hist) >= 30 || r.HistoryMessages != len(hist) {
		t.Fatalf("%d history messages sent (Response says %d), want some but not all of 30", len(hist), r.HistoryMessages)
	}
	for i, m := range hist {
		want := fmt.Sprintf("message number %d", 30-len(hist)+i)
		if m.Content != want {
			t.Errorf("history[%d] = %q, want %q (the newest, oldest first)", i, m.Content, want)
		}
	}
}

func TestServiceValidation(t *testing.T) {
	h := newHarness(t, harnessOpts{service: chat.ServiceConfig{
		MaxMessageBytes: 1000, MaxMessageTokens: 50,
		UserRequests: mustLocal(t, ratelimit.PerMinute(100)),
	}})
	long := strings.Repeat("x", chat.MaxIDBytes+1)
	ok := chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "Hi"}
	cases := []struct {
		name  string
		edit  func(r *chat.Request)
		field string
	}{
		{"empty user", func(r *chat.Request) { r.UserID = "" }, "UserID"},
		{"long user", func(r *chat.Request) { r.UserID = long }, "UserID"},
		{"bad utf8 user", func(r *chat.Request) { r.UserID = "a\xffb" }, "UserID"},
		{"empty course", func(r *chat.Request) { r.CourseID = "" }, "CourseID"},
		{"long course", func(r *chat.Request) { r.CourseID = long }, "CourseID"},
		{"bad utf8 course", func(r *chat.Request) { r.CourseID = "\xc3" }, "CourseID"},
		{"empty video", func(r *chat.Request) { r.VideoURL = "" }, "VideoURL"},
		{"long video", func(r *chat.Request) { r.VideoURL = "https://v/" + strings.Repeat("v", chat.MaxVideoURLBytes) }, "VideoURL"},
		{"bad utf8 video", func(r *chat.Request) { r.VideoURL = "https://v/\xff" }, "VideoURL"},
		{"empty message", func(r *chat.Request) { r.Message = "" }, "Message"},
		{"blank message", func(r *chat.Request) { r.Message = " \n\t " }, "Message"},
		{"bad utf8 message", func(r *chat.Request) { r.Message = "hi \xff" }, "Message"},
		{"message over bytes", func(r *chat.Request) { r.Message = strings.Repeat("a ", 501) }, "Message"},
		{"message over tokens", func(r *chat.Request) { r.Message = strings.Repeat("token ", 60) }, "Message"},
		{"negative position", func(r *chat.Request) { r.Position, r.HasPosition = -time.Second, true }, "Position"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := ok
			c.edit(&r)
			_, err := h.svc.Ask(context.Background(), r)
			var ve *chat.ValidationError
			if !errors.As(err, &ve) || ve.Field != c.field {
				t.Fatalf("err = %v, want a *ValidationError for %s", err, c.field)
			}
			if !errors.Is(err, chat.ErrInvalidRequest) || !errors.Is(err, chatscale.ErrInvalidInput) {
				t.Errorf("err %v does not match ErrInvalidRequest and chatscale.ErrInvalidInput", err)
			}
			_, err = h.svc.Stream(context.Background(), r, func(string) error { return nil })
			if !errors.As(err, &ve) || ve.Field != c.field {
				t.Errorf("Stream err = %v, want a *ValidationError for %s", err, c.field)
			}
		})
	}
	if n := h.fake.Requests(); n != 0 {
		t.Errorf("the upstream received %d requests for invalid turns", n)
	}
	if r := h.ask("ada", video1, "Hi"); !r.Created {
		t.Error("an invalid turn created ada's thread")
	}
	if got := metricValue(t, h.reg, "ai_chat_requests_total", "status", "invalid"); got != 2*float64(len(cases)) {
		t.Errorf("requests_total{status=invalid} = %v, want %d", got, 2*len(cases))
	}
}

func TestServicePromptOverContextWindow(t *testing.T) {
	h := newHarness(t, harnessOpts{service: chat.ServiceConfig{ContextWindow: 400, MaxReplyTokens: 200, MaxMessageTokens: 1000}})
	_, err := h.svc.Ask(context.Background(), chat.Request{UserID: "ada", CourseID: course, VideoURL: video1,
		Message: strings.Repeat("question ", 150)})
	var ve *chat.ValidationError
	if !errors.As(err, &ve) || ve.Field != "Message" {
		t.Fatalf("err = %v, want a *ValidationError for Message", err)
	}
	if h.fake.Requests() != 0 || h.hasThread("ada") {
		t.Error("a turn that cannot fit was sent or stored")
	}
	// A turn that fits only without all of its transcript is trimmed, not
	// refused, and never exceeds the window.
	h.src.put(video2, timedDoc(60))
	r, err := h.svc.Ask(context.Background(), chat.Request{UserID: "ada", CourseID: course, VideoURL: video2, Message: "Short?"})
	if err != nil {
		t.Fatal(err)
	}
	if !r.TranscriptCut || r.PromptTokens+200 > 400 {
		t.Errorf("cut %v, prompt %d tokens + 200 reply > window 400", r.TranscriptCut, r.PromptTokens)
	}
}

func mustLocal(t *testing.T, l ratelimit.Limit) *ratelimit.Local {
	t.Helper()
	lim, err := ratelimit.NewLocal(l, ratelimit.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return lim
}

// metricValue returns the value of the counter or gauge series of name
// with label=value ("" label: the series without labels) in reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					match = true
				}
			}
			if !match {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	t.Fatalf("no series %s{%s=%q}", name, label, value)
	return 0
}

func TestServiceHistoryAndForget(t *testing.T) {
	forEachStore(t, func(t *testing.T, memory bool) {
		h := newHarness(t, harnessOpts{memory: memory})
		ctx := context.Background()
		r := h.ask("ada", video1, "What is a goroutine?")
		h.ask("bob", video1, "Hi")
		hist, err := h.svc.History(ctx, "ada", course, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(hist) != 2 || hist[0].Role != threads.RoleUser || hist[0].Content != "What is a goroutine?" ||
			hist[1].Role != threads.RoleAssistant || hist[1].Content != r.Reply || hist[1].Time.IsZero() {
			t.Fatalf("History = %+v", hist)
		}
		if hist, err := h.svc.History(ctx, "cyd", course, 0); err != nil || len(hist) != 0 {
			t.Errorf("History of a learner without a thread = %v, %v", hist, err)
		}
		if n, err := h.store.ForgetUser(ctx, "cyd"); err != nil || n != 0 {
			t.Errorf("History created %d threads for a learner without one (%v)", n, err)
		}
		if _, err := h.svc.History(ctx, "", course, 0); !errors.Is(err, chat.ErrInvalidRequest) {
			t.Errorf("History with an empty user: %v", err)
		}
		n, err := h.svc.Forget(ctx, "ada")
		if err != nil || n != 1 {
			t.Fatalf("Forget = %d, %v; want 1 thread", n, err)
		}
		if hist, _ := h.svc.History(ctx, "ada", course, 0); len(hist) != 0 {
			t.Errorf("after Forget ada's history holds %d messages", len(hist))
		}
		if hist, _ := h.svc.History(ctx, "bob", course, 0); len(hist) != 2 {
			t.Errorf("Forget of ada touched bob's thread: %d messages", len(hist))
		}
	})
}
