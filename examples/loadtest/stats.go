package main

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatscale/chatscale/chat"
)

// outcome is what a learner got for one question.
type outcome int

const (
	outOK          outcome = iota // the model's answer
	outDegraded                   // an answer marked degraded (fallback, or without a part)
	outRateLimited                // a 429 with Retry-After
	outTimeout                    // nothing within the learner's timeout
	outError                      // any other error
)

// turnRecord is one asked question.
type turnRecord struct {
	asked    time.Duration // since the run's start
	queued   time.Duration // between its arrival and when it was asked
	took     time.Duration // end to end, as the learner saw it
	upstream time.Duration // inside the upstream HTTP calls (in process only)
	budget   time.Duration // waiting for the shared budgets (in process only)
	attempts int
	out      outcome
	reasons  []string
	kind     string        // error kind
	retry    time.Duration // Retry-After of a 429
	hasRetry bool
	first    bool       // the learner's first turn on its course
	common   bool       // asking one of the commonQuestions
	cached   bool       // answered from the answer cache (in process only)
	saved    chat.Usage // the hit's Response.SavedUsage
}

// collector gathers the run's figures.
type collector struct {
	start    time.Time
	inflight atomic.Int64
	asked    atomic.Int64
	done     atomic.Int64
	degraded atomic.Int64
	failed   atomic.Int64 // rate limited, timeouts and errors

	mu      sync.Mutex
	records []turnRecord
	// inflightAt[s] is the number of turns in flight at the end of second s.
	inflightAt []int64
}

func newCollector(start time.Time) *collector {
	return &collector{start: start}
}

func (c *collector) add(r turnRecord) {
	c.done.Add(1)
	switch r.out {
	case outDegraded:
		c.degraded.Add(1)
	case outRateLimited, outTimeout, outError:
		c.failed.Add(1)
	}
	c.mu.Lock()
	c.records = append(c.records, r)
	c.mu.Unlock()
}

// sampleInflight records the turns in flight for the second just ended.
func (c *collector) sampleInflight(sec int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.inflightAt) <= sec {
		c.inflightAt = append(c.inflightAt, 0)
	}
	c.inflightAt[sec] = c.inflight.Load()
}

// percentilesSoFar returns the p50 and p99 of the answered turns so far.
func (c *collector) percentilesSoFar() (p50, p99 time.Duration) {
	c.mu.Lock()
	ds := make([]float64, 0, len(c.records))
	for _, r := range c.records {
		if r.out == outOK || r.out == outDegraded {
			ds = append(ds, float64(r.took))
		}
	}
	c.mu.Unlock()
	if len(ds) == 0 {
		return 0, 0
	}
	slices.Sort(ds)
	return time.Duration(quantile(ds, 0.5)), time.Duration(quantile(ds, 0.99))
}

// quantile of sorted xs, nearest rank.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(xs)))) - 1
	return xs[max(0, min(i, len(xs)-1))]
}

// Dist is a distribution in milliseconds.
type Dist struct {
	N    int     `json:"n"`
	Mean float64 `json:"mean_ms"`
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
}

func dist(ds []time.Duration) Dist {
	if len(ds) == 0 {
		return Dist{}
	}
	xs := make([]float64, len(ds))
	sum := 0.0
	for i, d := range ds {
		xs[i] = float64(d) / float64(time.Millisecond)
		sum += xs[i]
	}
	slices.Sort(xs)
	r := func(v float64) float64 { return math.Round(v*1000) / 1000 }
	return Dist{N: len(xs), Mean: r(sum / float64(len(xs))), P50: r(quantile(xs, .5)), P90: r(quantile(xs, .9)), P99: r(quantile(xs, .99)), Max: r(xs[len(xs)-1])}
}

func (d Dist) String() string {
	if d.N == 0 {
		return "n=0"
	}
	return fmt.Sprintf("n=%d p50 %s p90 %s p99 %s max %s", d.N, fmtMs(d.P50), fmtMs(d.P90), fmtMs(d.P99), fmtMs(d.Max))
}

func fmtMs(ms float64) string {
	switch {
	case ms >= 1000:
		return fmt.Sprintf("%.2fs", ms/1000)
	case ms >= 10:
		return fmt.Sprintf("%.0fms", ms)
	default:
		return fmt.Sprintf("%.2fms", ms)
	}
}

// Report is the run's report, as -json writes it.
type Report struct {
	Mode     string         `json:"mode"`
	Settings map[string]any `json:"settings"`
	Started  time.Time      `json:"started"`
	Seconds  float64        `json:"seconds"`
	Stopped  string         `json:"stopped"` // "duration" or "interrupted"

	Turns struct {
		Offered     int `json:"offered"`
		Asked       int `json:"asked"`
		AskedLate   int `json:"asked_late"` // arrived while the learner's previous question was unanswered
		Completed   int `json:"completed"`  // answered: ok + degraded
		OK          int `json:"ok"`
		Degraded    int `json:"degraded"`
		RateLimited int `json:"rate_limited"` // 429 seen by learners
		Timeouts    int `json:"timeouts"`
		Errors      int `json:"errors"`
		Unasked     int `json:"unasked"` // arrived but still waiting for the previous answer when the run stopped
	} `json:"turns"`
	DegradedByReason map[string]int `json:"degraded_by_reason"`
	ErrorsByKind     map[string]int `json:"errors_by_kind"`
	RetryAfter       Dist           `json:"retry_after_429"` // the Retry-After learners were given

	// Latency is end to end as learners saw it, by outcome.
	Latency    map[string]Dist `json:"latency"`
	QueueDelay Dist            `json:"queue_delay"` // arrival to asked, for questions asked late

	// Overhead, over the turns the model answered (in process only):
	// upstream is the time inside the upstream HTTP calls, budget_wait the
	// wait for the shared budgets; minus_upstream is end to end minus
	// upstream; library is end to end minus upstream minus budget_wait.
	Overhead map[string]Dist `json:"overhead,omitempty"`

	Upstream struct {
		URL             string  `json:"url"`
		RPMLimit        int     `json:"rpm_limit"`
		TPMLimit        int     `json:"tpm_limit"`
		Requests        int     `json:"requests_admitted"`
		Tokens          int     `json:"tokens_admitted"`
		Rejected429     int     `json:"rejected_429"`
		BusiestRequests int     `json:"busiest_60s_requests"`
		BusiestTokens   int     `json:"busiest_60s_tokens"`
		BusiestAt       float64 `json:"busiest_60s_requests_starts_at_s"`
		BusiestSent     int     `json:"busiest_60s_requests_sent"` // admitted or refused
	} `json:"upstream"`
	Budget struct {
		Requests string `json:"requests"`
		Tokens   string `json:"tokens"`
		MaxIn60s int    `json:"requests_max_in_60s"` // burst + rate per minute
	} `json:"budget"`

	Transcripts struct {
		Loads                int     `json:"loads"`
		Per1000Turns         float64 `json:"per_1000_turns"`
		LoadsAfterFirstMin   int     `json:"loads_after_first_minute"`
		TurnsAfterFirstMin   int     `json:"turns_after_first_minute"`
		Per1000AfterFirstMin float64 `json:"per_1000_turns_after_first_minute"`
		// Videos is how many distinct videos were loaded (a first load
		// of each is unavoidable); Repeats the loads of a video loaded
		// before (what caching should avoid).
		Videos  int `json:"distinct_videos_loaded"`
		Repeats int `json:"repeat_loads"`
	} `json:"transcripts"`

	Redis struct {
		Server              string  `json:"server"`
		CommandsPerTurn     float64 `json:"commands_per_turn"` // sent by the instances (go-redis hook)
		ServerCallsPerTurn  float64 `json:"server_calls_per_turn,omitempty"`
		ServerUsecPerTurn   float64 `json:"server_cpu_us_per_turn,omitempty"` // INFO commandstats usec
		CommandstatsCaveats string  `json:"commandstats_note,omitempty"`
	} `json:"redis"`

	// Answers is the question mix and the answer cache (in process).
	Answers *AnswersReport `json:"answers,omitempty"`

	Closed *ClosedReport `json:"closed,omitempty"`
	Checks []Check       `json:"checks"`
}

// Check is one of the scenario's targets.
type Check struct {
	Name  string `json:"name"`
	Want  string `json:"want"`
	Got   string `json:"got"`
	Pass  bool   `json:"pass"`
	Notes string `json:"notes,omitempty"`
}

// fill computes the turn figures from the records.
func (c *collector) fill(rep *Report) {
	c.mu.Lock()
	recs := slices.Clone(c.records)
	c.mu.Unlock()
	rep.DegradedByReason = map[string]int{}
	rep.ErrorsByKind = map[string]int{}
	by := map[string][]time.Duration{}
	var queued, retry, up, bw, minusUp, lib []time.Duration
	for _, r := range recs {
		if r.queued > time.Millisecond {
			rep.Turns.AskedLate++
			queued = append(queued, r.queued)
		}
		switch r.out {
		case outOK:
			rep.Turns.OK++
			by["ok"] = append(by["ok"], r.took)
			by["answered"] = append(by["answered"], r.took)
			if r.attempts > 0 {
				up = append(up, r.upstream)
				bw = append(bw, r.budget)
				minusUp = append(minusUp, r.took-r.upstream)
				lib = append(lib, r.took-r.upstream-r.budget)
			}
		case outDegraded:
			rep.Turns.Degraded++
			by["degraded"] = append(by["degraded"], r.took)
			by["answered"] = append(by["answered"], r.took)
			for _, why := range r.reasons {
				rep.DegradedByReason[why]++
			}
		case outRateLimited:
			rep.Turns.RateLimited++
			by["rate_limited"] = append(by["rate_limited"], r.took)
			if r.hasRetry {
				retry = append(retry, r.retry)
			} else {
				rep.ErrorsByKind["429 without Retry-After"]++
			}
		case outTimeout:
			rep.Turns.Timeouts++
		case outError:
			rep.Turns.Errors++
			rep.ErrorsByKind[r.kind]++
			by["error"] = append(by["error"], r.took)
		}
		if r.cached {
			by["cached"] = append(by["cached"], r.took)
		}
		if r.out != outTimeout {
			by["every_reply"] = append(by["every_reply"], r.took)
		}
	}
	rep.Turns.Asked = len(recs)
	fillMix(rep, recs)
	rep.Turns.Completed = rep.Turns.OK + rep.Turns.Degraded
	rep.Latency = map[string]Dist{}
	for k, v := range by {
		rep.Latency[k] = dist(v)
	}
	rep.QueueDelay = dist(queued)
	rep.RetryAfter = dist(retry)
	if len(up) > 0 {
		rep.Overhead = map[string]Dist{
			"upstream": dist(up), "budget_wait": dist(bw),
			"minus_upstream": dist(minusUp), "library": dist(lib),
		}
	}
}

// timeline is the per-second CSV.
type timelineRow struct {
	Second, Offered, Completed, Failed int
	P99ms                              float64
	InFlight                           int64
	UpRequests, Up429                  int
}

func (c *collector) timeline(offered []int, up func(sec int) upSecond, seconds int) []timelineRow {
	c.mu.Lock()
	recs := slices.Clone(c.records)
	inflight := slices.Clone(c.inflightAt)
	c.mu.Unlock()
	rows := make([]timelineRow, seconds)
	lat := make([][]float64, seconds)
	for i := range rows {
		rows[i].Second = i
		if i < len(offered) {
			rows[i].Offered = offered[i]
		}
		if i < len(inflight) {
			rows[i].InFlight = inflight[i]
		}
		if up != nil {
			s := up(i)
			rows[i].UpRequests, rows[i].Up429 = s.Requests, s.Rejected
		}
	}
	for _, r := range recs {
		sec := int((r.asked + r.took) / time.Second)
		if sec < 0 || sec >= seconds {
			continue
		}
		if r.out == outOK || r.out == outDegraded {
			rows[sec].Completed++
			lat[sec] = append(lat[sec], float64(r.took)/float64(time.Millisecond))
		} else {
			rows[sec].Failed++
		}
	}
	for i := range rows {
		sort.Float64s(lat[i])
		rows[i].P99ms = math.Round(quantile(lat[i], .99)*10) / 10
	}
	return rows
}

var csvHeader = []string{"second", "offered", "completed", "failed", "p99_ms", "in_flight", "upstream_requests", "upstream_429"}

func writeCSV(w io.Writer, rows []timelineRow) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return err
	}
	for _, r := range rows {
		rec := []string{
			strconv.Itoa(r.Second), strconv.Itoa(r.Offered), strconv.Itoa(r.Completed), strconv.Itoa(r.Failed),
			strconv.FormatFloat(r.P99ms, 'f', 1, 64), strconv.FormatInt(r.InFlight, 10),
			strconv.Itoa(r.UpRequests), strconv.Itoa(r.Up429),
		}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

func readCSV(r io.Reader) ([]timelineRow, error) {
	recs, err := csv.NewReader(r).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 || !slices.Equal(recs[0], csvHeader) {
		return nil, fmt.Errorf("not a loadtest timeline: header %v", firstOr(recs))
	}
	rows := make([]timelineRow, 0, len(recs)-1)
	for i, rec := range recs[1:] {
		var row timelineRow
		ints := []*int{&row.Second, &row.Offered, &row.Completed, &row.Failed}
		for j, p := range ints {
			v, err := strconv.Atoi(rec[j])
			if err != nil {
				return nil, fmt.Errorf("line %d: %s: %w", i+2, csvHeader[j], err)
			}
			*p = v
		}
		var err error
		if row.P99ms, err = strconv.ParseFloat(rec[4], 64); err != nil {
			return nil, fmt.Errorf("line %d: p99_ms: %w", i+2, err)
		}
		if row.InFlight, err = strconv.ParseInt(rec[5], 10, 64); err != nil {
			return nil, fmt.Errorf("line %d: in_flight: %w", i+2, err)
		}
		if row.UpRequests, err = strconv.Atoi(rec[6]); err != nil {
			return nil, fmt.Errorf("line %d: upstream_requests: %w", i+2, err)
		}
		if row.Up429, err = strconv.Atoi(rec[7]); err != nil {
			return nil, fmt.Errorf("line %d: upstream_429: %w", i+2, err)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func firstOr(recs [][]string) []string {
	if len(recs) == 0 {
		return nil
	}
	return recs[0]
}

func writeJSONFile(path string, rep *Report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// print writes the human-readable report.
func (rep *Report) print(w io.Writer) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	if rep.Closed != nil {
		rep.Closed.print(w)
		rep.printChecks(w)
		return
	}
	t := rep.Turns
	p("== loadtest report (%s, %.0f s, stopped by %s)", rep.Mode, rep.Seconds, rep.Stopped)
	p("turns: offered %d, asked %d (%d late: arrived while the previous was unanswered), unasked at stop %d", t.Offered, t.Asked, t.AskedLate, t.Unasked)
	p("       completed %d (ok %d, degraded %d), 429 to learners %d, timeouts %d, errors %d", t.Completed, t.OK, t.Degraded, t.RateLimited, t.Timeouts, t.Errors)
	if len(rep.DegradedByReason) > 0 {
		p("degraded by reason: %s", fmtMap(rep.DegradedByReason))
	}
	if len(rep.ErrorsByKind) > 0 {
		p("errors by kind: %s", fmtMap(rep.ErrorsByKind))
	}
	for _, k := range []string{"answered", "ok", "degraded", "rate_limited", "error", "every_reply", "cached"} {
		if d, ok := rep.Latency[k]; ok {
			p("latency %-12s %s", k+":", d)
		}
	}
	if rep.RetryAfter.N > 0 {
		p("Retry-After given with 429s: %s", rep.RetryAfter)
	}
	if rep.QueueDelay.N > 0 {
		p("queue delay of late questions: %s", rep.QueueDelay)
	}
	for _, k := range []string{"upstream", "budget_wait", "minus_upstream", "library"} {
		if d, ok := rep.Overhead[k]; ok {
			p("overhead %-15s %s", k+":", d)
		}
	}
	u := rep.Upstream
	p("upstream: admitted %d requests, %d tokens; 429s %d; busiest 60 s: %d requests admitted (limit %d) at +%.0f s, %d sent (admitted or refused), %d tokens (limit %d)",
		u.Requests, u.Tokens, u.Rejected429, u.BusiestRequests, u.RPMLimit, u.BusiestAt, u.BusiestSent, u.BusiestTokens, u.TPMLimit)
	if rep.Budget.Requests != "" {
		p("shared budgets: requests %s (at most %d in any 60 s), tokens %s", rep.Budget.Requests, rep.Budget.MaxIn60s, rep.Budget.Tokens)
	}
	tr := rep.Transcripts
	if tr.Loads > 0 || rep.Mode == "in-process" {
		p("transcript loads: %d (%.2f per 1000 turns); after the first minute %d in %d turns (%.3f per 1000); %d distinct videos, %d repeat loads",
			tr.Loads, tr.Per1000Turns, tr.LoadsAfterFirstMin, tr.TurnsAfterFirstMin, tr.Per1000AfterFirstMin, tr.Videos, tr.Repeats)
	}
	r := rep.Redis
	if r.Server != "" {
		line := fmt.Sprintf("redis (%s): %.2f commands per turn sent", r.Server, r.CommandsPerTurn)
		if r.ServerCallsPerTurn > 0 {
			line += fmt.Sprintf("; server: %.2f calls, %.1f µs CPU per turn (INFO commandstats, %s)", r.ServerCallsPerTurn, r.ServerUsecPerTurn, r.CommandstatsCaveats)
		}
		p("%s", line)
	}
	if rep.Answers != nil {
		rep.Answers.print(w, rep.Turns.Asked)
	}
	rep.printChecks(w)
}

func (rep *Report) printChecks(w io.Writer) {
	for _, c := range rep.Checks {
		mark := "PASS"
		if !c.Pass {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "%s  %s: want %s, got %s%s\n", mark, c.Name, c.Want, c.Got, suffix(c.Notes))
	}
}

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

func fmtMap(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
