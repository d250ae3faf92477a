package chat

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sashabaranov/go-openai"
	"go.uber.org/goleak"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

const failoverOpenFor = 10 * time.Second

// failoverPair is a two-member chain over two fake upstreams, on a
// manual clock.
type failoverPair struct {
	clk                  *testutil.Clock
	primary, secondary   *testutil.FakeOpenAI
	pClient, sClient     *Client
	f                    *Failover
	registry             *prometheus.Registry
	primaryM, secondaryM Member
}

func newFailoverPair(t *testing.T, fcfg FailoverConfig, edit func(name string, c *Config)) *failoverPair {
	t.Helper()
	p := &failoverPair{clk: testutil.NewClock(time.Now()), registry: prometheus.NewRegistry()}
	p.primary = testutil.OpenAI(t, testutil.OpenAIConfig{})
	p.secondary = testutil.OpenAI(t, testutil.OpenAIConfig{})
	member := func(name, model string, fake *testutil.FakeOpenAI) (*Client, Member) {
		cfg := Config{
			Name: name, DisableFallback: true, MaxAttempts: 1, BaseDelay: time.Millisecond,
			BreakerMinRequests: 2, OpenFor: failoverOpenFor, Now: p.clk.Now, Registerer: p.registry,
		}
		if edit != nil {
			edit(name, &cfg)
		}
		c, err := NewClient(NewOpenAI(fake.URL, "sk-"+name, 4), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c, Member{Name: name, Completer: c, Model: model}
	}
	p.pClient, p.primaryM = member("primary", "model-a", p.primary)
	p.sClient, p.secondaryM = member("secondary", "model-b", p.secondary)
	if fcfg.Now == nil {
		fcfg.Now = p.clk.Now
	}
	if fcfg.Registerer == nil {
		fcfg.Registerer = p.registry
	}
	f, err := NewFailover([]Member{p.primaryM, p.secondaryM}, fcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	p.f = f
	return p
}

func failoverReq(msg string) openai.ChatCompletionRequest {
	return openai.ChatCompletionRequest{
		Model:    "caller-model",
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: msg}},
	}
}

// ask makes one unary call and returns the member that answered.
func (p *failoverPair) ask(t *testing.T) string {
	t.Helper()
	resp, err := p.f.CreateChatCompletion(context.Background(), failoverReq("hi"))
	if err != nil {
		t.Fatal(err)
	}
	if IsDegraded(resp) {
		t.Fatal("degraded reply")
	}
	return AnsweredBy(resp.Header())
}

func TestFailoverPrimaryDownThenBack(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	p := newFailoverPair(t, FailoverConfig{}, nil)
	p.primary.Always(&testutil.FakeStep{Status: http.StatusServiceUnavailable})

	// Two failures trip the primary's breaker; both calls are answered by
	// the secondary.
	for range 2 {
		if got := p.ask(t); got != "secondary" {
			t.Fatalf("answered by %q", got)
		}
	}
	if st := p.pClient.Stats(); st.Breaker != "open" || p.primary.Requests() != 2 {
		t.Fatalf("primary breaker %s after %d requests", st.Breaker, p.primary.Requests())
	}
	// Open: the primary gets no request at all.
	for range 20 {
		if got := p.ask(t); got != "secondary" {
			t.Fatalf("answered by %q", got)
		}
	}
	if n := p.primary.Requests(); n != 2 {
		t.Fatalf("primary got %d requests while open, want 2", n)
	}
	if st := p.f.Stats(); st.Members[0].Skipped != 20 || st.Members[1].OK != 22 || st.Failovers != 22 {
		t.Fatalf("stats %+v", st)
	}

	// Half-open: one probe, which fails; the call still gets an answer.
	p.clk.Advance(failoverOpenFor + time.Millisecond)
	if got := p.ask(t); got != "secondary" {
		t.Fatalf("answered by %q", got)
	}
	if n := p.primary.Requests(); n != 3 {
		t.Fatalf("primary got %d requests, want 3 (one probe)", n)
	}
	for range 5 {
		p.ask(t)
	}
	if n := p.primary.Requests(); n != 3 {
		t.Fatalf("primary got %d requests after its failed probe, want 3", n)
	}

	// The primary is back: one probe closes its breaker and traffic
	// returns to it.
	p.primary.Always(nil)
	p.clk.Advance(failoverOpenFor + time.Millisecond)
	secondBefore := p.secondary.Requests()
	for range 10 {
		if got := p.ask(t); got != "primary" {
			t.Fatalf("answered by %q after the primary came back", got)
		}
	}
	if n := p.secondary.Requests(); n != secondBefore {
		t.Fatalf("secondary got %d more requests", n-secondBefore)
	}
	if st := p.pClient.Stats(); st.Probes != 2 || st.Breaker != "closed" {
		t.Fatalf("primary stats %+v", st)
	}
	// Each member is sent its own model.
	for _, e := range p.primary.Events() {
		if e.Request.Model != "model-a" {
			t.Fatalf("primary was sent model %q", e.Request.Model)
		}
	}
	for _, e := range p.secondary.Events() {
		if e.Request.Model != "model-b" {
			t.Fatalf("secondary was sent model %q", e.Request.Model)
		}
	}
}

func TestFailoverRetryAfterGoesToSecondaryAtOnce(t *testing.T) {
	p := newFailoverPair(t, FailoverConfig{}, func(name string, c *Config) { c.MaxAttempts = 3 })
	p.primary.Script(testutil.FakeStep{Status: http.StatusTooManyRequests, RetryAfter: time.Hour})
	if got := p.ask(t); got != "secondary" {
		t.Fatalf("answered by %q", got)
	}
	// No retry: a Retry-After over MaxDelay ends the primary's call at
	// once, and its pause (up to MaxPause) then skips it without a call.
	st := p.pClient.Stats()
	if st.Attempts != 1 || st.Retries != 0 || st.Pauses != 1 || st.LimiterWait != 0 {
		t.Fatalf("primary stats %+v", st)
	}
	for range 5 {
		if got := p.ask(t); got != "secondary" {
			t.Fatalf("answered by %q", got)
		}
	}
	if n := p.primary.Requests(); n != 1 {
		t.Fatalf("primary got %d requests, want 1", n)
	}
	if fs := p.f.Stats(); fs.Members[0].Skipped != 5 || fs.Members[0].Unavailable != 1 {
		t.Fatalf("stats %+v", fs)
	}
	// The pause over, the primary answers again.
	p.clk.Advance(time.Hour)
	if got := p.ask(t); got != "primary" {
		t.Fatalf("answered by %q", got)
	}
}

func TestFailoverMaxWaitLetsAShortPauseThrough(t *testing.T) {
	p := newFailoverPair(t, FailoverConfig{MaxWait: time.Minute}, nil)
	// A member paused for less than MaxWait gets the call (its Client
	// waits the pause out); one paused for longer is skipped.
	p.pClient.br.pause(context.Background(), p.clk.Now().Add(30*time.Second).UnixMilli())
	if u := p.f.skip(&p.f.members[0], p.clk.Now()); u != nil {
		t.Fatalf("skipped with %v", u)
	}
	p.pClient.br.pause(context.Background(), p.clk.Now().Add(2*time.Minute).UnixMilli())
	if u := p.f.skip(&p.f.members[0], p.clk.Now()); u == nil || u.Reason != ReasonRateLimited {
		t.Fatalf("skip = %v, want rate_limited", u)
	}
}

func TestFailoverBothOut(t *testing.T) {
	p := newFailoverPair(t, FailoverConfig{FallbackText: "later"}, nil)
	ctx := context.Background()
	p.pClient.br.trip(ctx, "test", "")
	p.sClient.br.trip(ctx, "test", "")

	resp, err := p.f.CreateChatCompletion(ctx, failoverReq("hi"))
	if err != nil || !IsDegraded(resp) || resp.Choices[0].Message.Content != "later" {
		t.Fatalf("resp %+v, err %v", resp, err)
	}
	if r := DegradedReason(resp.Header()); r != ReasonBreakerOpen {
		t.Fatalf("reason %q", r)
	}
	if m := AnsweredBy(resp.Header()); m != "" {
		t.Fatalf("fallback names member %q", m)
	}
	s, err := p.f.CreateChatCompletionStream(ctx, failoverReq("hi"))
	if err != nil || !IsDegradedStream(s) {
		t.Fatalf("stream %v, err %v", s, err)
	}
	text := readStream(t, s)
	if text != "later" {
		t.Fatalf("fallback stream %q", text)
	}
	if p.primary.Requests()+p.secondary.Requests() != 0 {
		t.Fatal("an upstream was called")
	}
	if st := p.f.Stats(); st.Fallbacks != 2 {
		t.Fatalf("stats %+v", st)
	}

	// DisableFallback: the last member's error.
	f, err := NewFailover([]Member{p.primaryM, p.secondaryM}, FailoverConfig{DisableFallback: true, Now: p.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.CreateChatCompletion(ctx, failoverReq("hi"))
	var u *UnavailableError
	if !errors.As(err, &u) || u.Reason != ReasonBreakerOpen || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err %v", err)
	}
	if _, err := f.CreateChatCompletionStream(ctx, failoverReq("hi")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("stream err %v", err)
	}
}

func TestFailoverStreamBeforeFirstByteOnly(t *testing.T) {
	p := newFailoverPair(t, FailoverConfig{}, nil)
	ctx := context.Background()

	// Before the first byte: the primary's 503 moves the stream on.
	p.primary.Script(testutil.FakeStep{Status: http.StatusServiceUnavailable})
	s, err := p.f.CreateChatCompletionStream(ctx, failoverReq("one"))
	if err != nil {
		t.Fatal(err)
	}
	if m := AnsweredBy(s.Header()); m != "secondary" {
		t.Fatalf("stream answered by %q", m)
	}
	if text := readStream(t, s); !strings.Contains(text, "model model-b") {
		t.Fatalf("stream %q", text)
	}

	// After the first byte: the primary's stream breaks off; the error
	// reaches the caller and nothing is sent again.
	p.primary.Script(testutil.FakeStep{CutAfter: 1})
	before := p.secondary.Requests()
	s, err = p.f.CreateChatCompletionStream(ctx, failoverReq("two"))
	if err != nil {
		t.Fatal(err)
	}
	if m := AnsweredBy(s.Header()); m != "primary" {
		t.Fatalf("stream answered by %q", m)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatalf("first chunk: %v", err)
	}
	var recvErr error
	for recvErr == nil {
		_, recvErr = s.Recv()
	}
	_ = s.Close()
	if errors.Is(recvErr, io.EOF) {
		t.Fatal("a cut stream ended cleanly")
	}
	if p.primary.Requests() != 2 || p.secondary.Requests() != before {
		t.Fatalf("requests: primary %d, secondary %d (was %d)", p.primary.Requests(), p.secondary.Requests(), before)
	}
}

func TestFailoverAnswerIsFinal(t *testing.T) {
	p := newFailoverPair(t, FailoverConfig{}, nil)
	p.primary.Script(testutil.FakeStep{Status: http.StatusBadRequest})
	_, err := p.f.CreateChatCompletion(context.Background(), failoverReq("hi"))
	var apiErr *openai.APIError
	if !errors.As(err, &apiErr) || apiErr.HTTPStatusCode != http.StatusBadRequest {
		t.Fatalf("err %v", err)
	}
	if p.secondary.Requests() != 0 {
		t.Fatal("a client error was sent to the secondary")
	}
	if st := p.f.Stats(); st.Members[0].Errors != 1 || st.Failovers != 0 {
		t.Fatalf("stats %+v", st)
	}

	// A canceled ctx is returned as it is, and moves no call on.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.f.CreateChatCompletion(ctx, failoverReq("hi")); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	if p.secondary.Requests() != 0 {
		t.Fatal("a canceled call was sent to the secondary")
	}
}

// TestFailoverQuotaSpentOnce: a learner's quota carried by ctx is spent by
// the first member that reaches the upstream, not once per member.
func TestFailoverQuotaSpentOnce(t *testing.T) {
	for _, tc := range []struct {
		name string
		out  func(p *failoverPair)
	}{
		{"primary fails upstream", func(p *failoverPair) {
			p.primary.Script(testutil.FakeStep{Status: http.StatusServiceUnavailable})
		}},
		{"primary open", func(p *failoverPair) { p.pClient.br.trip(context.Background(), "test", "") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newFailoverPair(t, FailoverConfig{}, nil)
			tc.out(p)
			quota, err := ratelimit.NewLocal(ratelimit.PerHour(2), ratelimit.Config{})
			if err != nil {
				t.Fatal(err)
			}
			ctx := withQuota(context.Background(), ratelimit.Cost{Limiter: quota, Key: "ada", N: 1}, ratelimit.Cost{})
			resp, err := p.f.CreateChatCompletion(ctx, failoverReq("hi"))
			if err != nil || AnsweredBy(resp.Header()) != "secondary" {
				t.Fatalf("answered by %q, err %v", AnsweredBy(resp.Header()), err)
			}
			if d, _ := quota.Allow(context.Background(), "ada", 1); !d.Allowed {
				t.Fatal("quota spent twice")
			}
			if d, _ := quota.Allow(context.Background(), "ada", 1); d.Allowed {
				t.Fatal("quota not spent")
			}
		})
	}
}

func TestFailoverWeights(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	stub := stubCompleter{resp: openai.ChatCompletionResponse{ID: "x"}}
	members := []Member{
		{Name: "east", Completer: stub, Weight: 80},
		{Name: "west", Completer: stub, Weight: 20},
	}
	f, err := NewFailover(members, FailoverConfig{Intn: rng.IntN})
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	got := map[string]int{}
	for range n {
		resp, err := f.CreateChatCompletion(context.Background(), failoverReq("hi"))
		if err != nil {
			t.Fatal(err)
		}
		got[AnsweredBy(resp.Header())]++
	}
	if e := got["east"]; e < n*75/100 || e > n*85/100 || got["east"]+got["west"] != n {
		t.Fatalf("split %v", got)
	}
	if st := f.Stats(); st.Failovers != 0 {
		t.Fatalf("stats %+v", st)
	}

	// A weighted start still fails over in the chain's order.
	f3 := &Failover{members: make([]failoverMember, 3)}
	order := func(start int) []int {
		var o []int
		for i := f3.next(start, -1); i >= 0; i = f3.next(start, i) {
			o = append(o, i)
		}
		return o
	}
	for start, want := range [][]int{{0, 1, 2}, {1, 0, 2}, {2, 0, 1}} {
		if got := order(start); !equalInts(got, want) {
			t.Fatalf("order from %d = %v, want %v", start, got, want)
		}
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestFailoverConfigErrors(t *testing.T) {
	stub := stubCompleter{}
	for _, tc := range []struct {
		field   string
		members []Member
		cfg     FailoverConfig
	}{
		{"members", nil, FailoverConfig{}},
		{"members[0].Name", []Member{{Completer: stub}}, FailoverConfig{}},
		{"members[1].Name", []Member{{Name: "a", Completer: stub}, {Name: "a", Completer: stub}}, FailoverConfig{}},
		{"members[0].Completer", []Member{{Name: "a"}}, FailoverConfig{}},
		{"members[0].Weight", []Member{{Name: "a", Completer: stub, Weight: -1}}, FailoverConfig{}},
		{"FailoverConfig.MaxWait", []Member{{Name: "a", Completer: stub}}, FailoverConfig{MaxWait: -1}},
		{"FailoverConfig.ConstLabels", []Member{{Name: "a", Completer: stub}}, FailoverConfig{ConstLabels: prometheus.Labels{"member": "x"}}},
	} {
		_, err := NewFailover(tc.members, tc.cfg)
		var ce *chatscale.ConfigError
		if !errors.As(err, &ce) || ce.Field != tc.field || !errors.Is(err, chatscale.ErrInvalidConfig) {
			t.Errorf("%s: err %v", tc.field, err)
		}
	}
}

func TestFailoverMetricsAndClose(t *testing.T) {
	p := newFailoverPair(t, FailoverConfig{}, nil)
	p.primary.Script(testutil.FakeStep{Status: http.StatusServiceUnavailable})
	p.ask(t)
	p.ask(t)
	mfs, err := p.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]float64{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "ai_chat_failover_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				if l.GetName() != "failover" {
					key += "," + l.GetName() + "=" + l.GetValue()
				}
			}
			values[key] = m.GetCounter().GetValue()
		}
	}
	for key, want := range map[string]float64{
		"ai_chat_failover_calls_total,member=primary,outcome=unavailable": 1,
		"ai_chat_failover_calls_total,member=secondary,outcome=ok":        1,
		"ai_chat_failover_calls_total,member=primary,outcome=ok":          1,
		"ai_chat_failover_failovers_total,from=primary,to=secondary":      1,
		"ai_chat_failover_fallbacks_total":                                0,
	} {
		if got, ok := values[key]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", key, got, ok, want)
		}
	}
	if err := p.f.Close(); err != nil {
		t.Fatal(err)
	}
	_ = p.f.Close()
	// Unregistered: a second Failover with the same labels registers.
	f2, err := NewFailover([]Member{p.primaryM}, FailoverConfig{Registerer: p.registry})
	if err != nil {
		t.Fatal(err)
	}
	_ = f2.Close()
	// A Failover keeps working after Close.
	if got := p.ask(t); got != "primary" {
		t.Fatalf("answered by %q", got)
	}
}
