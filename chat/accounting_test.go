package chat

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
)

// budgets returns a request budget of 100 and a token budget of tokens
// per minute, on clk.
func budgets(t *testing.T, clk *testutil.Clock, tokens int) (reqs, toks *ratelimit.Local) {
	t.Helper()
	var err error
	if reqs, err = ratelimit.NewLocal(ratelimit.PerMinute(100), ratelimit.Config{Now: clk.Now}); err != nil {
		t.Fatal(err)
	}
	if toks, err = ratelimit.NewLocal(ratelimit.PerMinute(tokens), ratelimit.Config{Now: clk.Now}); err != nil {
		t.Fatal(err)
	}
	return reqs, toks
}

// left returns what remains of key's budget in lim, leaving it as it was.
func left(t *testing.T, lim ratelimit.Limiter, key string) int {
	t.Helper()
	ctx := context.Background()
	d, err := lim.Allow(ctx, key, 1)
	if err != nil || !d.Allowed {
		t.Fatalf("probing %s: %+v %v", key, d, err)
	}
	if err := lim.Adjust(ctx, key, -1); err != nil {
		t.Fatal(err)
	}
	return d.Remaining + 1
}

// breakerCounts returns the outcomes the local gobreaker counted.
func breakerCounts(c *Client) (successes, failures uint32) {
	n := c.br.cb.Load().Counts()
	return n.TotalSuccesses, n.TotalFailures
}

// hiddenLimit is a Limiter that does not expose its Limit and, as the
// conventions ask of every Limiter, refuses a cost over its burst with a
// *chatscale.InputError.
type hiddenLimit struct {
	ratelimit.Limiter
	burst int
}

func (h hiddenLimit) check(n int) error {
	if n > h.burst {
		return &chatscale.InputError{Package: "ratelimit", Field: "N", Reason: "over the burst"}
	}
	return nil
}

func (h hiddenLimit) Allow(ctx context.Context, key string, n int) (ratelimit.Decision, error) {
	if err := h.check(n); err != nil {
		return ratelimit.Decision{}, err
	}
	return h.Limiter.Allow(ctx, key, n)
}

func (h hiddenLimit) Wait(ctx context.Context, key string, n int) error {
	if err := h.check(n); err != nil {
		return err
	}
	return h.Limiter.Wait(ctx, key, n)
}

// A reservation that can never fit the token budget fails at once with a
// typed error, spending nothing, and is never answered by the fallback.
func TestTooLargeRequestSpendsNothing(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	reqs, toks := budgets(t, clk, 1000)
	big := request("big")
	big.MaxCompletionTokens = 5000

	check := func(t *testing.T, c *Client, wantBurst int) {
		t.Helper()
		reserve := c.reservation(big)
		resp, err := c.CreateChatCompletion(context.Background(), big)
		s, serr := c.CreateChatCompletionStream(context.Background(), big)
		for _, err := range []error{err, serr} {
			if !errors.Is(err, chatscale.ErrInvalidInput) || errors.Is(err, ErrUnavailable) {
				t.Fatalf("err %v: want ErrInvalidInput, not ErrUnavailable", err)
			}
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("err %v: want ErrTooLarge", err)
			}
			var tl *TooLargeError
			if !errors.As(err, &tl) || tl.Tokens != reserve || tl.Burst != wantBurst {
				t.Fatalf("err %v: want *TooLargeError{%d, %d}", err, reserve, wantBurst)
			}
		}
		if IsDegraded(resp) || s != nil {
			t.Fatal("a request too large was answered by the fallback")
		}
		if got := left(t, reqs, "openai:requests"); got != 100 {
			t.Errorf("request budget %d, want 100", got)
		}
		if got := left(t, toks, "openai:tokens"); got != 1000 {
			t.Errorf("token budget %d, want 1000", got)
		}
		if st := c.Stats(); st.Attempts != 0 || st.Errors != 2 || st.Fallbacks != 0 {
			t.Errorf("stats %+v", st)
		}
		if ok, fail := breakerCounts(c); ok+fail != 0 {
			t.Errorf("breaker counted %d successes, %d failures", ok, fail)
		}
		if n := fake.Requests(); n != 0 {
			t.Errorf("upstream saw %d calls", n)
		}
	}
	t.Run("limit known", func(t *testing.T) {
		c := newTestClient(t, fake, Config{Requests: reqs, Tokens: toks, Now: clk.Now}, false)
		check(t, c, 1000)
		// Even with the breaker open: no fallback hides it.
		c.br.trip(context.Background(), "test", "")
		_, err := c.CreateChatCompletion(context.Background(), big)
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("breaker open: err %v", err)
		}
	})
	t.Run("limit hidden", func(t *testing.T) {
		c := newTestClient(t, fake, Config{Requests: reqs, Tokens: hiddenLimit{toks, 1000}, Now: clk.Now}, false)
		check(t, c, 0)
	})
	t.Run("limit hidden, the limiter's own error", func(t *testing.T) {
		// Only the Limiter interface of a *ratelimit.Local: WaitAll cannot
		// check the burst up front, Local.Allow refuses the cost.
		hidden := struct{ ratelimit.Limiter }{toks}
		c := newTestClient(t, fake, Config{Requests: reqs, Tokens: hidden, Now: clk.Now}, false)
		check(t, c, 0)
	})
}

// A request go-openai refuses before sending is no upstream attempt: no
// attempt, no breaker count, and its budget is given back.
func TestLocallyRefusedRequestIsNoAttempt(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	streaming := request("stream flag on a unary call")
	streaming.Stream = true
	reasoning := request("max_tokens on a reasoning model")
	reasoning.Model, reasoning.MaxCompletionTokens = "o3-mini", 0
	//lint:ignore SA1019 the deprecated field is what go-openai refuses here.
	reasoning.MaxTokens = 64

	plain := openai.DefaultConfig("sk-test")
	plain.BaseURL = fake.URL
	plain.HTTPClient = &http.Client{} // no Transport
	for name, inner := range map[string]Completer{
		"with Transport":    NewOpenAI(fake.URL, "sk-test", 4),
		"without Transport": openai.NewClientWithConfig(plain),
	} {
		t.Run(name, func(t *testing.T) {
			clk := newClock()
			reqs, toks := budgets(t, clk, 100000)
			c, err := NewClient(inner, Config{Requests: reqs, Tokens: toks, Now: clk.Now})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			_, err = c.CreateChatCompletion(ctx, streaming)
			if !errors.Is(err, openai.ErrChatCompletionStreamNotSupported) {
				t.Fatalf("Stream on a unary call: %v", err)
			}
			_, err = c.CreateChatCompletion(ctx, reasoning)
			if !errors.Is(err, openai.ErrReasoningModelMaxTokensDeprecated) {
				t.Fatalf("MaxTokens on o3-mini: %v", err)
			}
			s, err := c.CreateChatCompletionStream(ctx, reasoning)
			if !errors.Is(err, openai.ErrReasoningModelMaxTokensDeprecated) || s != nil {
				t.Fatalf("MaxTokens on o3-mini, streamed: %v", err)
			}
			if st := c.Stats(); st.Attempts != 0 || st.Errors != 3 || st.Fallbacks != 0 {
				t.Errorf("stats %+v", st)
			}
			if ok, fail := breakerCounts(c); ok+fail != 0 {
				t.Errorf("breaker counted %d successes, %d failures", ok, fail)
			}
			if got := left(t, reqs, "openai:requests"); got != 100 {
				t.Errorf("request budget %d, want 100", got)
			}
			if got := left(t, toks, "openai:tokens"); got != 100000 {
				t.Errorf("token budget %d, want 100000", got)
			}
			if n := fake.Requests(); n != 0 {
				t.Errorf("upstream saw %d calls", n)
			}
		})
	}
}

// refuseAfterFirst sends its first call through inner and refuses the
// next ones itself with an error go-openai does not export, as go-openai
// does for some malformed requests.
type refuseAfterFirst struct {
	Completer
	calls int
}

var errUnexported = errors.New("tool parameters cannot override type or function")

func (r *refuseAfterFirst) CreateChatCompletion(ctx context.Context, req openai.ChatCompletionRequest) (openai.ChatCompletionResponse, error) {
	if r.calls++; r.calls > 1 {
		return openai.ChatCompletionResponse{}, errUnexported
	}
	return r.Completer.CreateChatCompletion(ctx, req)
}

// Once the Transport has carried an attempt, an attempt that does not
// reach it was not sent, whatever its error.
func TestNotSentWhenTransportNotReached(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	reqs, toks := budgets(t, clk, 100000)
	inner := &refuseAfterFirst{Completer: NewOpenAI(fake.URL, "sk-test", 4)}
	c, err := NewClient(inner, Config{Requests: reqs, Tokens: toks, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	resp, err := c.CreateChatCompletion(ctx, request("sent"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.CreateChatCompletion(ctx, request("refused"))
	if !errors.Is(err, errUnexported) {
		t.Fatalf("err %v", err)
	}
	if st := c.Stats(); st.Attempts != 1 || st.OK != 1 || st.Errors != 1 {
		t.Errorf("stats %+v", st)
	}
	if ok, fail := breakerCounts(c); ok != 1 || fail != 0 {
		t.Errorf("breaker counted %d successes, %d failures; want 1, 0", ok, fail)
	}
	if got := left(t, reqs, "openai:requests"); got != 99 {
		t.Errorf("request budget %d, want 99", got)
	}
	if got := left(t, toks, "openai:tokens"); got != 100000-resp.Usage.TotalTokens {
		t.Errorf("token budget %d, want %d", got, 100000-resp.Usage.TotalTokens)
	}
}

// Each outcome spends and gives back what the package doc's Accounting
// section says.
func TestAccountingByOutcome(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	refusedURL := closed.URL + "/v1"
	closed.Close()

	for _, tc := range []struct {
		name       string
		step       *testutil.FakeStep
		url        string // instead of the fake's
		cfg        Config
		reqsLeft   int
		keepTokens bool // the reservation stays spent
		failures   uint32
		attempts   uint64
	}{
		{name: "400 gives tokens back", step: &testutil.FakeStep{Status: 400}, reqsLeft: 99, attempts: 1},
		{name: "404 gives tokens back", step: &testutil.FakeStep{Status: 404}, reqsLeft: 99, attempts: 1},
		{name: "429 gives tokens back", step: &testutil.FakeStep{Status: 429}, reqsLeft: 99, attempts: 1},
		{name: "insufficient_quota gives tokens back", step: &testutil.FakeStep{Status: 429, Code: "insufficient_quota"}, reqsLeft: 99, attempts: 1},
		{name: "409 gives tokens back, no breaker failure", step: &testutil.FakeStep{Status: 409}, reqsLeft: 99, attempts: 1},
		{name: "408 is a breaker failure", step: &testutil.FakeStep{Status: 408}, reqsLeft: 99, failures: 1, attempts: 1},
		{name: "5xx keeps both", step: &testutil.FakeStep{Status: 503}, reqsLeft: 99, keepTokens: true, failures: 1, attempts: 1},
		{name: "connection refused gives both back", url: refusedURL, reqsLeft: 100, failures: 1, attempts: 1},
		{name: "timeout before the first byte gives tokens back", step: &testutil.FakeStep{Hang: true},
			cfg: Config{AttemptTimeout: 50 * time.Millisecond}, reqsLeft: 99, failures: 1, attempts: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
			if tc.step != nil {
				fake.Script(*tc.step)
			}
			url := fake.URL
			if tc.url != "" {
				url = tc.url
			}
			clk := newClock()
			reqs, toks := budgets(t, clk, 100000)
			cfg := tc.cfg
			cfg.Requests, cfg.Tokens, cfg.Now, cfg.MaxAttempts = reqs, toks, clk.Now, 1
			c, err := NewClient(NewOpenAI(url, "sk-test", 4), cfg)
			if err != nil {
				t.Fatal(err)
			}
			req := request("account")
			_, _ = c.CreateChatCompletion(context.Background(), req)
			if got := left(t, reqs, "openai:requests"); got != tc.reqsLeft {
				t.Errorf("request budget %d, want %d", got, tc.reqsLeft)
			}
			want := 100000
			if tc.keepTokens {
				want -= c.reservation(req)
			}
			if got := left(t, toks, "openai:tokens"); got != want {
				t.Errorf("token budget %d, want %d", got, want)
			}
			if _, fail := breakerCounts(c); fail != tc.failures {
				t.Errorf("breaker failures %d, want %d", fail, tc.failures)
			}
			if st := c.Stats(); st.Attempts != tc.attempts {
				t.Errorf("attempts %d, want %d", st.Attempts, tc.attempts)
			}
		})
	}
}

// A stream asks for its usage and settles the reservation against it; a
// stream that ends without a reply gives the reservation back.
func TestStreamTokensSettled(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	reqs, toks := budgets(t, clk, 100000)
	c := newTestClient(t, fake, Config{Requests: reqs, Tokens: toks, MaxAttempts: 1, Now: clk.Now}, false)
	ctx := context.Background()
	req := request("stream my tokens")

	// Usage asked for and settled when its chunk passes.
	s, err := c.CreateChatCompletionStream(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var usage *openai.Usage
	for {
		chunk, err := s.Recv()
		if err != nil {
			break
		}
		if chunk.Usage != nil {
			usage = chunk.Usage
		}
	}
	_ = s.Close()
	if ev := fake.Events(); ev[0].Request.StreamOptions == nil || !ev[0].Request.StreamOptions.IncludeUsage {
		t.Fatalf("stream_options not set: %+v", ev[0].Request.StreamOptions)
	}
	if usage == nil || c.reservation(req) <= usage.TotalTokens {
		t.Fatalf("usage %+v, reservation %d", usage, c.reservation(req))
	}
	spent := usage.TotalTokens
	if got := left(t, toks, "openai:tokens"); got != 100000-spent {
		t.Fatalf("token budget %d, want %d", got, 100000-spent)
	}

	// The caller's StreamOptions are kept: no usage, the reservation stays.
	own := req
	own.StreamOptions = &openai.StreamOptions{IncludeUsage: false}
	s, err = c.CreateChatCompletionStream(ctx, own)
	if err != nil {
		t.Fatal(err)
	}
	if got := readStream(t, s); got != testutil.Reply(req) {
		t.Fatalf("stream %q", got)
	}
	if ev := fake.Events(); ev[1].Request.StreamOptions == nil || ev[1].Request.StreamOptions.IncludeUsage {
		t.Fatalf("caller's stream_options changed: %+v", ev[1].Request.StreamOptions)
	}
	spent += c.reservation(own)
	if got := left(t, toks, "openai:tokens"); got != 100000-spent {
		t.Fatalf("token budget %d, want %d", got, 100000-spent)
	}

	// The stream fails before any reply: the reservation comes back, the
	// request stays spent.
	fake.Script(testutil.FakeStep{StreamError: true})
	s, err = c.CreateChatCompletionStream(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err == nil {
		t.Fatal("stream error not reported")
	}
	_ = s.Close()
	if got := left(t, toks, "openai:tokens"); got != 100000-spent {
		t.Fatalf("token budget %d after a stream with no reply, want %d", got, 100000-spent)
	}
	if got := left(t, reqs, "openai:requests"); got != 97 {
		t.Fatalf("request budget %d, want 97", got)
	}
}

// A 429 that says when to come back pauses every instance until then and
// never trips the breaker.
func TestRateLimited429PausesEveryoneWithoutTripping(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	fake.Always(&testutil.FakeStep{Status: 429, RetryAfter: 10 * time.Second})
	clk := newClock()
	a, b := twoInstances(t, env, fake, Config{MaxAttempts: 2, BreakerMinRequests: 4, Now: clk.Now, DisableFallback: true})
	ctx := context.Background()
	for range 10 {
		_, err := a.CreateChatCompletion(ctx, request("burst"))
		var u *UnavailableError
		if !errors.As(err, &u) || u.StatusCode != 429 {
			t.Fatalf("err %v", err)
		}
	}
	if n := fake.Requests(); n != 20 {
		t.Fatalf("upstream saw %d attempts, want 20 (each call retried once)", n)
	}
	if st := a.Stats(); st.Trips != 0 || st.Breaker != "closed" || st.Pauses == 0 {
		t.Fatalf("429s tripped the breaker or set no pause: %+v", st)
	}
	if _, fail := breakerCounts(a); fail != 0 {
		t.Fatalf("breaker counted %d failures", fail)
	}
	// b has seen no 429 itself, but waits for the shared pause: here
	// longer than its deadline allows, so it gives up without a call.
	bctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := b.CreateChatCompletion(bctx, request("other instance"))
	var u *UnavailableError
	if !errors.As(err, &u) || u.Reason != ReasonRateLimited || u.RetryAfter < 9*time.Second {
		t.Fatalf("b: %v", err)
	}
	if n := fake.Requests(); n != 20 {
		t.Fatalf("b called the upstream during the pause (%d calls)", n)
	}
}

// Stats counts one probe per half-open period across instances: an
// instance whose cached deadline passed does not probe once another
// instance's probe has closed (or re-opened) the breaker.
func TestOneProbePerHalfOpenPeriod(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	const openFor = 5 * time.Second
	a, b := twoInstances(t, env, fake, Config{MaxAttempts: 1, BreakerMinRequests: 2, OpenFor: openFor, Now: clk.Now})
	ctx := context.Background()
	trip := func() {
		t.Helper()
		fake.Always(&testutil.FakeStep{Status: 502})
		for range 2 {
			_, _ = a.CreateChatCompletion(ctx, request("fail"))
		}
		if a.Stats().Breaker != "open" {
			t.Fatalf("a did not trip: %+v", a.Stats())
		}
		// b loads the open state just before the deadline.
		clk.Advance(openFor - 50*time.Millisecond)
		refreshed(t, b)
		resp, _ := b.CreateChatCompletion(ctx, request("b while open"))
		if DegradedReason(resp.Header()) != ReasonBreakerOpen {
			t.Fatalf("b while open: %q", DegradedReason(resp.Header()))
		}
		// Past the deadline, with b's cache still fresh.
		clk.Advance(60 * time.Millisecond)
	}

	// a's probe closes the breaker; b then makes an ordinary call.
	trip()
	fake.Always(nil)
	if resp, err := a.CreateChatCompletion(ctx, request("probe")); err != nil || IsDegraded(resp) {
		t.Fatalf("a's probe: %v, degraded %v", err, IsDegraded(resp))
	}
	resp, err := b.CreateChatCompletion(ctx, request("b after close"))
	if err != nil || IsDegraded(resp) {
		t.Fatalf("b after close: %v, degraded %v", err, IsDegraded(resp))
	}
	if pa, pb := a.Stats().Probes, b.Stats().Probes; pa != 1 || pb != 0 {
		t.Fatalf("probes: a %d, b %d; want 1, 0", pa, pb)
	}
	if st := b.Stats(); st.Breaker != "closed" {
		t.Fatalf("b: %+v", st)
	}

	// a's probe fails and re-opens it; b falls back without probing.
	trip()
	if resp, _ := a.CreateChatCompletion(ctx, request("probe fails")); DegradedReason(resp.Header()) != ReasonRetriesSpent {
		t.Fatalf("a's failed probe: %q", DegradedReason(resp.Header()))
	}
	upstream := fake.Requests()
	resp, _ = b.CreateChatCompletion(ctx, request("b after reopen"))
	if DegradedReason(resp.Header()) != ReasonBreakerOpen || fake.Requests() != upstream {
		t.Fatalf("b after reopen: %q, upstream %d -> %d", DegradedReason(resp.Header()), upstream, fake.Requests())
	}
	if pa, pb := a.Stats().Probes, b.Stats().Probes; pa != 2 || pb != 0 {
		t.Fatalf("probes: a %d, b %d; want 2, 0", pa, pb)
	}
}

// A 429 answering a half-open probe closes the breaker: the upstream is
// up. Before, the probe was released as if it had no outcome and every
// retry of the call probed again within one half-open period.
func TestRateLimitedProbeClosesBreaker(t *testing.T) {
	env := testutil.Redis(t)
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	const openFor = 5 * time.Second
	a, _ := twoInstances(t, env, fake, Config{MaxAttempts: 3, BaseDelay: time.Millisecond, BreakerMinRequests: 2, OpenFor: openFor, Now: clk.Now})
	ctx := context.Background()
	fake.Always(&testutil.FakeStep{Status: 502})
	for range 2 {
		_, _ = a.CreateChatCompletion(ctx, request("fail"))
	}
	if a.Stats().Breaker != "open" {
		t.Fatalf("a did not trip: %+v", a.Stats())
	}
	clk.Advance(openFor + 10*time.Millisecond)
	fake.Always(&testutil.FakeStep{Status: 429})
	before := fake.Requests()
	_, _ = a.CreateChatCompletion(ctx, request("probe"))
	if st := a.Stats(); st.Probes != 1 || st.Breaker != "closed" {
		t.Fatalf("after a 429 probe: probes %d, breaker %s; want 1, closed", st.Probes, st.Breaker)
	}
	if n := fake.Requests() - before; n < 1 {
		t.Fatalf("the probe sent %d requests", n)
	}
}

// The stream accounting reads events however the body is split.
func TestStreamAccountEvents(t *testing.T) {
	const (
		role   = `data: {"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}` + "\n\n"
		word   = `data: {"id":"x","choices":[{"index":0,"delta":{"content":"\"usage\": {} choices"}}],"usage":null}` + "\n\n"
		usage  = `data: {"id":"x","choices": [ ],"usage" : {"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}` + "\n\n"
		done   = "data: [DONE]\n\n"
		errEvt = `data: {"error":{"message":"boom","type":"server_error"}}` + "\n\n"
		ping   = ": keep-alive\n\n"
		empty  = `data: {"id":"x","choices":[]}` + "\n\n"
	)
	for _, tc := range []struct {
		name   string
		body   string
		closed bool // closed by the caller after body, before its end
		want   string
	}{
		{"usage then done", role + word + usage + done, false, "settle 12"},
		{"usage without done, end of body", role + word + usage, false, "settle 12"},
		{"closed after the usage", role + usage, true, "settle 12"},
		{"reply without usage", role + word + done, false, ""},
		{"no reply", ping + empty + done, false, "refund"},
		{"error event first", ping + errEvt, false, "refund"},
		{"error event after a reply", role + errEvt, false, ""},
		{"cut before any reply", ping, false, "refund"},
		{"closed before the end", ping, true, ""},
		{"closed after a reply", role + word, true, ""},
		{"huge line then usage", "data: " + strings.Repeat("x", maxEventLine+10) + "\n\n" + usage + done, false, "settle 12"},
	} {
		for _, step := range []int{1, 7, len(tc.body) + 1} {
			var got []string
			acct := &streamAccount{
				settle: func(n int) { got = append(got, fmt.Sprintf("settle %d", n)) },
				refund: func() { got = append(got, "refund") },
			}
			b := []byte(tc.body)
			for len(b) > 0 {
				n := min(step, len(b))
				acct.read(b[:n], false)
				b = b[n:]
			}
			if tc.closed {
				acct.close()
			} else {
				acct.read(nil, true) // io.EOF
			}
			acct.close()                  // a Close after the end does nothing
			acct.read([]byte(done), true) // nor does anything read after
			if w := strings.Join(got, ","); w != tc.want {
				t.Errorf("%s, %d bytes per read: %q, want %q", tc.name, step, w, tc.want)
			}
		}
	}
}

func TestResetWaitOf429(t *testing.T) {
	for _, tc := range []struct {
		h    http.Header
		want time.Duration
	}{
		{http.Header{"X-Ratelimit-Remaining-Requests": {"0"}, "X-Ratelimit-Reset-Requests": {"2s"},
			"X-Ratelimit-Remaining-Tokens": {"500"}, "X-Ratelimit-Reset-Tokens": {"9s"}}, 2 * time.Second},
		{http.Header{"X-Ratelimit-Remaining-Tokens": {"0"}, "X-Ratelimit-Reset-Tokens": {"1m0s"}}, time.Minute},
		{http.Header{"X-Ratelimit-Reset-Requests": {"3s"}}, 3 * time.Second}, // remaining unknown
		{http.Header{}, 0},
		{nil, 0},
	} {
		if got := resetWait(tc.h); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.h, got, tc.want)
		}
	}
}

// With DisableStreamUsage the request goes as the caller wrote it, and
// the stream keeps its reservation.
func TestDisableStreamUsage(t *testing.T) {
	fake := testutil.OpenAI(t, testutil.OpenAIConfig{})
	clk := newClock()
	_, toks := budgets(t, clk, 100000)
	c := newTestClient(t, fake, Config{Tokens: toks, DisableStreamUsage: true, Now: clk.Now}, false)
	req := request("no usage")
	s, err := c.CreateChatCompletionStream(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if got := readStream(t, s); got != testutil.Reply(req) {
		t.Fatalf("stream %q", got)
	}
	if ev := fake.Events(); ev[0].Request.StreamOptions != nil {
		t.Fatalf("stream_options sent: %+v", ev[0].Request.StreamOptions)
	}
	if got := left(t, toks, "openai:tokens"); got != 100000-c.reservation(req) {
		t.Fatalf("token budget %d, want %d", got, 100000-c.reservation(req))
	}
}
