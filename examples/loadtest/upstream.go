package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sashabaranov/go-openai"
)

// upstreamConfig configures the fake upstream.
type upstreamConfig struct {
	// RPM and TPM are its limits over a sliding 60 s window; zero means
	// none.
	RPM, TPM int
	// Median and P99 shape the lognormal latency of an answer; a zero
	// Median answers at once.
	Median, P99 time.Duration
	// MaxLatency caps one answer's latency.
	MaxLatency time.Duration
	// ReplyTokens is the completion size of every answer.
	ReplyTokens int
	// Seed seeds the latency draws.
	Seed uint64
	// Window is the limits' window; zero means 60 s (tests shorten it).
	Window time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// upstream is an OpenAI-compatible Chat Completions fake over HTTP on
// loopback: lognormal latency, RPM and TPM enforced over an exact sliding
// window (a log of admissions, not a bucket), 429 with Retry-After,
// retry-after-ms and x-ratelimit-* headers when a request would exceed
// either, and per-second counts of what it admitted and refused.
type upstream struct {
	cfg   upstreamConfig
	sigma float64
	srv   *http.Server
	ln    net.Listener
	URL   string // the base URL, ".../v1"

	mu     sync.Mutex
	rng    *rand.Rand
	reqLog []time.Time // admissions within the window, oldest first
	tokLog []tokEntry  // admissions' tokens within the window
	tokSum int
	secs   map[int64]*upSecond
	last   []byte // the last request body, for the closed loop's floor

	inflight atomic.Int64
}

type tokEntry struct {
	t time.Time
	n int
}

// upSecond is one second of the upstream's counts.
type upSecond struct {
	Requests, Tokens, Rejected int
}

// z99 is the 99th percentile of the standard normal distribution.
const z99 = 2.326348

func newUpstream(cfg upstreamConfig) (*upstream, error) {
	if cfg.Window == 0 {
		cfg.Window = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ReplyTokens == 0 {
		cfg.ReplyTokens = 60
	}
	if cfg.MaxLatency == 0 {
		cfg.MaxLatency = 25 * time.Second
	}
	u := &upstream{cfg: cfg, secs: map[int64]*upSecond{}, rng: rand.New(rand.NewPCG(cfg.Seed, 7))}
	if cfg.Median > 0 && cfg.P99 > cfg.Median {
		u.sigma = math.Log(float64(cfg.P99)/float64(cfg.Median)) / z99
	}
	return u, nil
}

// start serves on addr ("127.0.0.1:0" picks a port).
func (u *upstream) start(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	u.ln = ln
	u.URL = "http://" + ln.Addr().String() + "/v1"
	u.srv = &http.Server{Handler: u, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = u.srv.Serve(ln) }()
	return nil
}

func (u *upstream) close() {
	if u.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if u.srv.Shutdown(ctx) != nil {
			_ = u.srv.Close()
		}
	}
}

// latency draws one answer's latency.
func (u *upstream) latency() time.Duration {
	if u.cfg.Median <= 0 {
		return 0
	}
	u.mu.Lock()
	z := u.rng.NormFloat64()
	u.mu.Unlock()
	d := time.Duration(float64(u.cfg.Median) * math.Exp(u.sigma*z))
	return min(d, u.cfg.MaxLatency)
}

// promptTokens estimates a request's prompt the way chat.Client does: one
// token per 4 bytes of content plus 4 per message.
func promptTokens(req *openai.ChatCompletionRequest) int {
	n := 0
	for _, m := range req.Messages {
		n += 4 + (len(m.Content)+3)/4
	}
	return n
}

// admit decides a request of tokens at now: ok, or how long until it
// would fit, with the remaining budgets for the headers.
func (u *upstream) admit(now time.Time, tokens int) (ok bool, wait time.Duration, remReq, remTok int, resetReq, resetTok time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	cut := now.Add(-u.cfg.Window)
	i := 0
	for i < len(u.reqLog) && !u.reqLog[i].After(cut) {
		i++
	}
	u.reqLog = u.reqLog[i:]
	j := 0
	for j < len(u.tokLog) && !u.tokLog[j].t.After(cut) {
		u.tokSum -= u.tokLog[j].n
		j++
	}
	u.tokLog = u.tokLog[j:]
	sec := u.second(now)
	reqOK := u.cfg.RPM <= 0 || len(u.reqLog)+1 <= u.cfg.RPM
	tokOK := u.cfg.TPM <= 0 || u.tokSum+tokens <= u.cfg.TPM
	if reqOK && tokOK {
		u.reqLog = append(u.reqLog, now)
		u.tokLog = append(u.tokLog, tokEntry{now, tokens})
		u.tokSum += tokens
		sec.Requests++
		sec.Tokens += tokens
		ok = true
	} else {
		sec.Rejected++
	}
	if u.cfg.RPM > 0 {
		remReq = max(0, u.cfg.RPM-len(u.reqLog))
		if len(u.reqLog) > 0 {
			resetReq = u.reqLog[0].Add(u.cfg.Window).Sub(now)
		}
		if !reqOK {
			// The oldest admission leaves the window then.
			wait = max(wait, resetReq)
		}
	}
	if u.cfg.TPM > 0 {
		remTok = max(0, u.cfg.TPM-u.tokSum)
		if len(u.tokLog) > 0 {
			resetTok = u.tokLog[0].t.Add(u.cfg.Window).Sub(now)
		}
		if !tokOK {
			// Until enough of the oldest admissions leave the window.
			need, w := u.tokSum+tokens-u.cfg.TPM, time.Duration(0)
			for _, e := range u.tokLog {
				need -= e.n
				w = e.t.Add(u.cfg.Window).Sub(now)
				if need <= 0 {
					break
				}
			}
			wait = max(wait, w)
		}
	}
	return ok, max(wait, time.Millisecond), remReq, remTok, resetReq, resetTok
}

func (u *upstream) second(t time.Time) *upSecond {
	k := t.Unix()
	s := u.secs[k]
	if s == nil {
		s = &upSecond{}
		u.secs[k] = s
	}
	return s
}

// lastRequest returns the body of the last request answered.
func (u *upstream) lastRequest() []byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/chat/completions") {
		http.NotFound(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req openai.ChatCompletionRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeAPIError(w, http.StatusBadRequest, "invalid_request_error", "bad json")
		return
	}
	if req.Stream {
		writeAPIError(w, http.StatusBadRequest, "invalid_request_error", "this fake does not stream")
		return
	}
	u.inflight.Add(1)
	defer u.inflight.Add(-1)
	prompt := promptTokens(&req)
	reply := u.cfg.ReplyTokens
	now := u.cfg.Now()
	ok, wait, remReq, remTok, resetReq, resetTok := u.admit(now, prompt+reply)
	h := w.Header()
	if u.cfg.RPM > 0 {
		h.Set("x-ratelimit-limit-requests", strconv.Itoa(u.cfg.RPM))
		h.Set("x-ratelimit-remaining-requests", strconv.Itoa(remReq))
		h.Set("x-ratelimit-reset-requests", fmtReset(resetReq))
	}
	if u.cfg.TPM > 0 {
		h.Set("x-ratelimit-limit-tokens", strconv.Itoa(u.cfg.TPM))
		h.Set("x-ratelimit-remaining-tokens", strconv.Itoa(remTok))
		h.Set("x-ratelimit-reset-tokens", fmtReset(resetTok))
	}
	if !ok {
		h.Set("Retry-After", strconv.FormatInt(int64(math.Ceil(wait.Seconds())), 10))
		h.Set("retry-after-ms", strconv.FormatInt(wait.Milliseconds(), 10))
		writeAPIError(w, http.StatusTooManyRequests, "rate_limit_exceeded", "Rate limit reached for requests")
		return
	}
	u.mu.Lock()
	u.last = body
	u.mu.Unlock()
	if d := u.latency(); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	resp := openai.ChatCompletionResponse{
		ID: "chatcmpl-loadtest", Object: "chat.completion", Created: now.Unix(), Model: req.Model,
		Choices: []openai.ChatCompletionChoice{{
			Message:      openai.ChatCompletionMessage{Role: "assistant", Content: replyText(reply)},
			FinishReason: openai.FinishReasonStop,
		}},
		Usage: openai.Usage{PromptTokens: prompt, CompletionTokens: reply, TotalTokens: prompt + reply},
	}
	h.Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

var replyCache sync.Map

// replyText is a reply of about n tokens (4 bytes each).
func replyText(n int) string {
	if v, ok := replyCache.Load(n); ok {
		return v.(string)
	}
	s := strings.Repeat("Goroutines are cheap. ", (4*n+21)/22)[:4*n]
	replyCache.Store(n, s)
	return s
}

func fmtReset(d time.Duration) string {
	if d <= 0 {
		return "0s"
	}
	return fmt.Sprintf("%.3fs", d.Seconds())
}

func writeAPIError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"message": msg, "type": code, "code": code,
	}})
}

// upstreamTotals are the upstream's counts over a run.
type upstreamTotals struct {
	Requests, Tokens, Rejected int
	// BusiestRequests and BusiestTokens are the most admitted in any 60
	// consecutive seconds (whole seconds), and when that window began.
	BusiestRequests, BusiestTokens int
	BusiestRequestsAt              time.Time
	// BusiestSent is the most requests received (admitted or refused)
	// in any 60 consecutive seconds: what the clients sent.
	BusiestSent int
}

// totals sums the per-second counts and finds the busiest windows of
// window seconds.
func (u *upstream) totals(window int) upstreamTotals {
	u.mu.Lock()
	defer u.mu.Unlock()
	var t upstreamTotals
	if len(u.secs) == 0 {
		return t
	}
	lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
	for k, s := range u.secs {
		lo, hi = min(lo, k), max(hi, k)
		t.Requests += s.Requests
		t.Tokens += s.Tokens
		t.Rejected += s.Rejected
	}
	get := func(k int64) upSecond {
		if s := u.secs[k]; s != nil {
			return *s
		}
		return upSecond{}
	}
	var rq, tk, sent int
	for k := lo; k <= hi; k++ {
		s := get(k)
		rq += s.Requests
		tk += s.Tokens
		sent += s.Requests + s.Rejected
		if k-int64(window) >= lo {
			o := get(k - int64(window))
			rq -= o.Requests
			tk -= o.Tokens
			sent -= o.Requests + o.Rejected
		}
		t.BusiestSent = max(t.BusiestSent, sent)
		if rq > t.BusiestRequests {
			t.BusiestRequests = rq
			t.BusiestRequestsAt = time.Unix(max(lo, k-int64(window)+1), 0)
		}
		t.BusiestTokens = max(t.BusiestTokens, tk)
	}
	return t
}

// at returns the counts of the second starting at unix second k.
func (u *upstream) at(k int64) upSecond {
	u.mu.Lock()
	defer u.mu.Unlock()
	if s := u.secs[k]; s != nil {
		return *s
	}
	return upSecond{}
}
