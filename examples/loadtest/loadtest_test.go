package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/examples/server/app"
	tu "github.com/chatscale/chatscale/internal/testutil"
)

// post sends one Chat Completions request to the fake.
func post(t *testing.T, url, content string) *http.Response {
	t.Helper()
	body := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":` + strconv.Quote(content) + `}]}`
	resp, err := http.Post(url+"/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp
}

func startUpstream(t *testing.T, cfg upstreamConfig) *upstream {
	t.Helper()
	u, err := newUpstream(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.close)
	return u
}

func TestUpstreamEnforcesRPMWithRetryAfter(t *testing.T) {
	clock := tu.NewClock(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	u := startUpstream(t, upstreamConfig{RPM: 5, Now: clock.Now})
	for i := range 5 {
		if resp := post(t, u.URL, "hello"); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: status %d, want 200", i+1, resp.StatusCode)
		}
		clock.Advance(time.Second)
	}
	resp := post(t, u.URL, "hello")
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("6th request within the minute: status %d, want 429", resp.StatusCode)
	}
	// The first admission (at 0 s) leaves the window at 60 s: 55 s from now.
	if got := resp.Header.Get("Retry-After"); got != "55" {
		t.Errorf("Retry-After %q, want 55", got)
	}
	if got := resp.Header.Get("retry-after-ms"); got != "55000" {
		t.Errorf("retry-after-ms %q, want 55000", got)
	}
	if got := resp.Header.Get("x-ratelimit-remaining-requests"); got != "0" {
		t.Errorf("x-ratelimit-remaining-requests %q, want 0", got)
	}
	if resp.Header.Get("x-ratelimit-reset-requests") == "" || resp.Header.Get("x-ratelimit-limit-requests") != "5" {
		t.Errorf("x-ratelimit headers missing: %v", resp.Header)
	}
	// The window slides: once the first admission is 60 s old, one more fits.
	clock.Advance(55 * time.Second)
	if resp := post(t, u.URL, "hello"); resp.StatusCode != http.StatusOK {
		t.Fatalf("after the oldest left the window: status %d, want 200", resp.StatusCode)
	}
	if resp := post(t, u.URL, "hello"); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("window full again: status %d, want 429", resp.StatusCode)
	}
	tot := u.totals(60)
	if tot.Requests != 6 || tot.Rejected != 2 || tot.BusiestRequests != 5 {
		t.Errorf("totals %+v, want 6 admitted, 2 rejected, busiest 60 s 5", tot)
	}
}

func TestUpstreamEnforcesTPM(t *testing.T) {
	clock := tu.NewClock(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	// A request of 400 bytes is 4+100 prompt tokens, plus a 60-token reply.
	u := startUpstream(t, upstreamConfig{TPM: 400, ReplyTokens: 60, Now: clock.Now})
	msg := strings.Repeat("x", 400)
	for i := range 2 {
		if resp := post(t, u.URL, msg); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d (%d tokens in all): status %d, want 200", i+1, 164*(i+1), resp.StatusCode)
		}
		clock.Advance(10 * time.Second)
	}
	resp := post(t, u.URL, msg)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third request, 492 tokens over 400: status %d, want 429", resp.StatusCode)
	}
	if got := resp.Header.Get("Retry-After"); got != "40" {
		t.Errorf("Retry-After %q, want 40 (the first admission leaves the window)", got)
	}
	if got := resp.Header.Get("x-ratelimit-remaining-tokens"); got != strconv.Itoa(400-328) {
		t.Errorf("x-ratelimit-remaining-tokens %q, want %d", got, 400-328)
	}
	if tot := u.totals(60); tot.Tokens != 328 || tot.BusiestTokens != 328 {
		t.Errorf("totals %+v, want 328 tokens admitted", tot)
	}
}

func TestArrivalsArePoisson(t *testing.T) {
	r := rand.New(rand.NewPCG(42, 42))
	const perMinute, minutes = 10.0, 1000
	as := arrivals(r, perMinute, minutes*time.Minute)
	want := perMinute * minutes
	// A Poisson count has variance equal to its mean: 5 standard deviations.
	if d := math.Abs(float64(len(as)) - want); d > 5*math.Sqrt(want) {
		t.Fatalf("%d arrivals in %d minutes, want %v ± %.0f", len(as), minutes, want, 5*math.Sqrt(want))
	}
	// Gaps are exponential: mean 6 s and standard deviation equal to the mean.
	var sum, sq float64
	prev := time.Duration(0)
	for i, a := range as {
		if a < prev {
			t.Fatalf("arrival %d at %s before the previous at %s", i, a, prev)
		}
		g := (a - prev).Seconds()
		sum += g
		sq += g * g
		prev = a
	}
	n := float64(len(as))
	mean := sum / n
	sd := math.Sqrt(sq/n - mean*mean)
	if math.Abs(mean-6) > 5*6/math.Sqrt(n) {
		t.Errorf("mean gap %.3f s, want 6 s", mean)
	}
	if math.Abs(sd/mean-1) > 0.05 {
		t.Errorf("coefficient of variation of the gaps %.3f, want 1 (exponential)", sd/mean)
	}
}

func TestZipfShape(t *testing.T) {
	const n, s, draws = 20, 1.1, 200_000
	z := newZipf(n, s)
	// The probabilities are 1/(k+1)^s normalised.
	h := 0.0
	for k := range n {
		h += math.Pow(float64(k+1), -s)
	}
	for k := range n {
		if want := math.Pow(float64(k+1), -s) / h; math.Abs(z.p(k)-want) > 1e-12 {
			t.Fatalf("p(%d) = %v, want %v", k, z.p(k), want)
		}
	}
	r := rand.New(rand.NewPCG(7, 7))
	counts := make([]int, n)
	for range draws {
		counts[z.draw(r)]++
	}
	for k := range n {
		p := z.p(k)
		sigma := math.Sqrt(draws * p * (1 - p))
		if d := math.Abs(float64(counts[k]) - draws*p); d > 5*sigma {
			t.Errorf("rank %d drawn %d times, want %.0f ± %.0f", k, counts[k], draws*p, 5*sigma)
		}
	}
	if counts[0] < 5*counts[n-1] {
		t.Errorf("rank 0 drawn %d times, rank %d %d: not skewed", counts[0], n-1, counts[n-1])
	}
}

// shortOptions is a small in-process run: miniredis (or the Redis at
// CHATSCALE_REDIS_URL), a fast upstream, a few seconds.
func shortOptions(t *testing.T, out io.Writer) options {
	t.Helper()
	o := options{
		Learners: 20, PerMinute: 60, Instances: 2, Duration: 3 * time.Second, Seed: 3,
		Courses: 3, Videos: 4, ZipfS: 1.1,
		RPM: 10_000, TPM: 10_000_000, Median: 5 * time.Millisecond, P99: 20 * time.Millisecond, ReplyTokens: 60,
		LearnerTimeout: 10 * time.Second, SourceLatency: time.Millisecond,
		TranscriptToks: 400, HistoryToks: 300, MaxReply: 200, MaxInFlight: 64,
		RedisURL: os.Getenv(tu.EnvRedisURL), Out: out,
	}
	o.defaults()
	return o
}

func TestShortRunAddsUp(t *testing.T) {
	var log bytes.Buffer
	o := shortOptions(t, &log)
	dir := t.TempDir()
	o.JSONPath, o.CSVPath, o.PlotPath = filepath.Join(dir, "r.json"), filepath.Join(dir, "r.csv"), filepath.Join(dir, "r.png")
	rep, rows, err := runInProcess(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := output(o, rep, rows); err != nil {
		t.Fatal(err)
	}
	tr := rep.Turns
	if tr.Offered < 30 {
		t.Fatalf("only %d questions offered", tr.Offered)
	}
	if tr.Completed+tr.RateLimited+tr.Timeouts+tr.Errors+tr.Unasked != tr.Offered {
		t.Errorf("completed %d + 429 %d + timeouts %d + errors %d + unasked %d != offered %d",
			tr.Completed, tr.RateLimited, tr.Timeouts, tr.Errors, tr.Unasked, tr.Offered)
	}
	if tr.Asked != tr.Offered-tr.Unasked || tr.Completed != tr.OK+tr.Degraded {
		t.Errorf("turns do not add up: %+v", tr)
	}
	if tr.Completed != tr.Asked || tr.OK != tr.Completed {
		t.Errorf("not every asked turn answered by the model: %+v, degraded %v, errors %v\n%s", tr, rep.DegradedByReason, rep.ErrorsByKind, log.String())
	}
	if rep.Upstream.Requests != tr.OK || rep.Upstream.Rejected429 != 0 {
		t.Errorf("upstream admitted %d, 429 %d; want %d and 0", rep.Upstream.Requests, rep.Upstream.Rejected429, tr.OK)
	}
	if l := rep.Latency["ok"]; l.N != tr.OK || l.P50 > l.P99 || l.P99 > l.Max {
		t.Errorf("latency of ok turns %+v for %d turns", l, tr.OK)
	}
	if ov := rep.Overhead["upstream"]; ov.N != tr.OK || ov.P50 <= 0 {
		t.Errorf("upstream time %+v, want one per ok turn, positive", ov)
	}
	if ov := rep.Overhead["budget_wait"]; ov.N != tr.OK || ov.Max <= 0 {
		t.Errorf("budget wait %+v, want one per ok turn, measured", ov)
	}
	if rep.Transcripts.Loads < 1 || rep.Transcripts.Loads > o.Courses*o.Videos {
		t.Errorf("%d transcript loads for %d videos", rep.Transcripts.Loads, o.Courses*o.Videos)
	}
	if rep.Redis.CommandsPerTurn < 3 {
		t.Errorf("%.2f Redis commands per turn, want at least 3 (open, budgets, append)", rep.Redis.CommandsPerTurn)
	}

	// The JSON is the report.
	b, err := os.ReadFile(o.JSONPath)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("JSON: %v", err)
	}
	if back.Turns != rep.Turns || back.Upstream != rep.Upstream || len(back.Checks) != len(rep.Checks) {
		t.Errorf("JSON round trip: %+v, want %+v", back.Turns, rep.Turns)
	}
	// The CSV: one row per second, its counts those of the report.
	f, err := os.Open(o.CSVPath)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readCSV(f)
	_ = f.Close()
	if err != nil {
		t.Fatalf("CSV: %v", err)
	}
	if len(got) != int(math.Ceil(rep.Seconds)) {
		t.Errorf("%d CSV rows for %.2f s", len(got), rep.Seconds)
	}
	var offered, completed, up int
	for i, r := range got {
		if r.Second != i || r.P99ms < 0 || r.InFlight < 0 {
			t.Errorf("CSV row %d: %+v", i, r)
		}
		offered, completed, up = offered+r.Offered, completed+r.Completed, up+r.UpRequests
	}
	if offered != rep.Turns.Offered || completed != rep.Turns.Completed {
		t.Errorf("CSV sums: offered %d, completed %d; report %d, %d", offered, completed, rep.Turns.Offered, rep.Turns.Completed)
	}
	if up > rep.Upstream.Requests {
		t.Errorf("CSV upstream requests %d, more than the %d admitted", up, rep.Upstream.Requests)
	}
	// The plot.
	pf, err := os.Open(o.PlotPath)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(pf)
	_ = pf.Close()
	if err != nil {
		t.Fatalf("plot: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 960 || b.Dy() != 600 {
		t.Errorf("plot is %v", b)
	}
	if !strings.Contains(log.String(), "offered") {
		t.Errorf("no progress or report printed:\n%s", log.String())
	}
}

func TestBudgetKeepsUpstreamUnderItsLimit(t *testing.T) {
	// Demand of about 120 a second for 3 s against an upstream taking 60
	// in any 6 s window: without the shared budget it would refuse
	// hundreds. The budget, 6 a second with a burst of 2, lets about 20
	// through in the run, well under the upstream's 60, so that the
	// check does not depend on how late requests reach the upstream.
	var log bytes.Buffer
	o := shortOptions(t, &log)
	o.UpstreamWindow = 6 * time.Second
	o.Learners, o.PerMinute, o.Duration = 60, 120, 3*time.Second
	o.RPM, o.BudgetBurst = 60, 2
	o.BudgetRPM = 6 * 60
	o.LearnerTimeout = 2 * time.Second
	rep, _, err := runInProcess(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Upstream.Rejected429 != 0 || rep.Upstream.BusiestRequests > 60 {
		t.Errorf("upstream refused %d requests, busiest 6 s %d: the budget let more through than the limit of 60\n%s",
			rep.Upstream.Rejected429, rep.Upstream.BusiestRequests, log.String())
	}
	if rep.Turns.OK == 0 || rep.Turns.Degraded+rep.Turns.Timeouts == 0 {
		t.Errorf("demand over supply should both answer and hold back turns: %+v", rep.Turns)
	}
	if rep.DegradedByReason["rate_limited"] == 0 {
		t.Errorf("degraded by reason %v, want fallbacks for the budget (rate_limited)", rep.DegradedByReason)
	}
}

func TestClosedLoop(t *testing.T) {
	var log bytes.Buffer
	o := shortOptions(t, &log)
	o.Closed, o.ClosedRounds, o.ClosedPerRound = 8, 2, 64
	rep, err := runClosed(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	c := rep.Closed
	if c == nil || c.Rounds != 2 || len(c.RoundRatios) != 2 {
		t.Fatalf("closed report %+v", c)
	}
	if c.ServiceErrors != 0 || c.FloorErrors != 0 {
		t.Errorf("errors: service %d, floor %d\n%s", c.ServiceErrors, c.FloorErrors, log.String())
	}
	if c.FloorTurnsPerSec <= 0 || c.ServiceTurnsPerSec <= 0 || c.Ratio <= 0 || c.PromptBytes < 1000 {
		t.Errorf("closed figures %+v", c)
	}
}

func TestTargetAgainstExampleServer(t *testing.T) {
	up := startUpstream(t, upstreamConfig{RPM: 10_000, TPM: 10_000_000, Median: 2 * time.Millisecond, P99: 10 * time.Millisecond})
	ctx := context.Background()
	// The server on its embedded Redis: app.Config has no key prefix, and
	// a test must not write the default one into a shared Redis.
	a, err := app.New(ctx, app.Config{OpenAIBaseURL: up.URL, OpenAIAPIKey: "sk-test", LearnerTurnsPerMinute: -1}, app.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(context.Background()) })
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	var log bytes.Buffer
	o := shortOptions(t, &log)
	o.Targets = []string{srv.URL, srv.URL}
	o.Learners, o.Duration = 10, 2*time.Second
	rep, _, err := runTarget(ctx, o, up)
	if err != nil {
		t.Fatal(err)
	}
	tr := rep.Turns
	if tr.Offered == 0 || tr.OK != tr.Asked || tr.Completed+tr.Unasked != tr.Offered {
		t.Errorf("turns %+v, errors %v, degraded %v\n%s", tr, rep.ErrorsByKind, rep.DegradedByReason, log.String())
	}
	if rep.Upstream.Requests != tr.OK {
		t.Errorf("upstream admitted %d requests for %d answers", rep.Upstream.Requests, tr.OK)
	}
}

// Redis CPU per turn counts each command a client sent once: a script's
// time includes the commands it ran, which commandstats also counts under
// their own names, and so does a transaction's EXEC.
func TestTopLevelUsecCountsEachCommandOnce(t *testing.T) {
	st := commandStats{byName: map[string][2]int64{
		"evalsha": {10, 100}, // two scripts
		"hmget":   {10, 20},  // run by the scripts only
		"get":     {8, 8},    // 5 sent by the client, 3 run by the scripts
		"exec":    {2, 30},   // a transaction, its LRANGE inside
		"multi":   {2, 1},
		"lrange":  {2, 6},
	}}
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	cnt := &cmdCounter{}
	rdb.AddHook(cnt)
	ctx := context.Background()
	for range 5 {
		_ = rdb.Get(ctx, "k").Err()
	}
	for range 2 {
		if _, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error { p.LRange(ctx, "l", 0, -1); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	sent := cnt.topLevel()
	if sent["get"] != 5 || sent["multi"] != 2 || sent["exec"] != 2 || sent["lrange"] != 0 {
		t.Fatalf("top-level commands counted %v; want 5 get, 2 multi and exec, no lrange", sent)
	}
	if got, want := st.topLevelUsec(sent), int64(100+5+30+1); got != want {
		t.Fatalf("topLevelUsec = %d, want %d", got, want)
	}
}
