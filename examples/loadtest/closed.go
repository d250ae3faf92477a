package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale/chat"
)

// ClosedReport is the closed loop's result.
type ClosedReport struct {
	Callers  int `json:"callers"`
	Rounds   int `json:"rounds_per_loop"`
	PerRound int `json:"turns_per_round"`
	// Turns per second of each loop over all its rounds, and the
	// service's over the floor's.
	FloorTurnsPerSec   float64 `json:"floor_turns_per_s"`
	ServiceTurnsPerSec float64 `json:"service_turns_per_s"`
	Ratio              float64 `json:"ratio"`
	// RoundRatios are the ratios of each pair of rounds.
	RoundRatios []float64 `json:"round_ratios"`
	// Redis CPU per turn: the usec of INFO commandstats over the loop's
	// rounds, divided by its turns: the whole server's, each command that
	// clients sent counted once (see commandStats.topLevelUsec).
	FloorRedisUsPerTurn   float64 `json:"floor_redis_cpu_us_per_turn"`
	ServiceRedisUsPerTurn float64 `json:"service_redis_cpu_us_per_turn"`
	FloorCallsPerTurn     float64 `json:"floor_redis_calls_per_turn"`
	ServiceCallsPerTurn   float64 `json:"service_redis_calls_per_turn"`
	// Per round of each loop: turns/s, and, from INFO commandstats and
	// the client's own hook, the server's calls and CPU per turn and the
	// commands this process sent; a round whose server calls exceed what
	// this process sent had other clients' commands in it.
	FloorRounds   []ClosedRound `json:"floor_rounds"`
	ServiceRounds []ClosedRound `json:"service_rounds"`
	// CleanServiceRounds counts the service rounds without errors whose
	// server calls per turn (commandstats counts the commands a script
	// runs, too) were within 10 % of the median round's: rounds without
	// other clients' commands in them, on a shared Redis. Their Redis CPU
	// per turn is the figure to read there.
	CleanServiceRounds    int            `json:"clean_service_rounds"`
	CleanServiceUsPerTurn float64        `json:"clean_service_redis_cpu_us_per_turn"`
	MinServiceUsPerTurn   float64        `json:"min_service_redis_cpu_us_per_turn"`
	ServiceErrorKinds     map[string]int `json:"service_error_kinds,omitempty"`
	ServiceErrors         int            `json:"service_errors"`
	FloorErrors           int            `json:"floor_errors"`
	PromptBytes           int            `json:"prompt_bytes"`
}

func (c *ClosedReport) print(w io.Writer) {
	fmt.Fprintf(w, "closed loop, %d callers, %d rounds of %d turns per loop, alternating; same request messages (%d bytes) in both loops\n",
		c.Callers, c.Rounds, c.PerRound, c.PromptBytes)
	fmt.Fprintf(w, "  floor   %.1f turns/s, Redis CPU %.1f µs/turn (%.2f calls)\n", c.FloorTurnsPerSec, c.FloorRedisUsPerTurn, c.FloorCallsPerTurn)
	fmt.Fprintf(w, "  service %.1f turns/s, Redis CPU %.1f µs/turn (%.2f calls)\n", c.ServiceTurnsPerSec, c.ServiceRedisUsPerTurn, c.ServiceCallsPerTurn)
	rr := make([]string, len(c.RoundRatios))
	for i, r := range c.RoundRatios {
		rr[i] = fmt.Sprintf("%.3f", r)
	}
	fmt.Fprintf(w, "  ratio %.3f (per pair of rounds: %s); errors: service %d, floor %d %v\n", c.Ratio, strings.Join(rr, " "), c.ServiceErrors, c.FloorErrors, c.ServiceErrorKinds)
	fmt.Fprintf(w, "  service Redis CPU per turn: %d clean rounds (no other client's commands) %.1f µs; lowest round %.1f µs\n",
		c.CleanServiceRounds, c.CleanServiceUsPerTurn, c.MinServiceUsPerTurn)
}

// ClosedRound is one round of one loop.
type ClosedRound struct {
	TurnsPerSec float64 `json:"turns_per_s"`
	// RedisUsPerTurn counts each command clients sent once (a script's or
	// a transaction's time includes the commands it ran);
	// RedisAllCommandsUsPerTurn sums every commandstats entry, which
	// counts those commands twice.
	RedisUsPerTurn            float64 `json:"redis_cpu_us_per_turn"`
	RedisAllCommandsUsPerTurn float64 `json:"redis_all_commands_us_per_turn"`
	ServerCallsPerTurn        float64 `json:"server_calls_per_turn"`
	SentPerTurn               float64 `json:"sent_per_turn"`
	Errors                    int     `json:"errors"`
}

// runClosed is -closed N: N callers in a closed loop, one instance, an
// upstream answering at once, in alternating rounds of the library's turn
// and of a floor loop (3 plain GETs and one go-openai call carrying the
// same request messages, against the same fake).
func runClosed(ctx context.Context, o options) (*Report, error) {
	up, err := newUpstream(upstreamConfig{ReplyTokens: o.ReplyTokens})
	if err != nil {
		return nil, err
	}
	if err := up.start(o.UpstreamAddress); err != nil {
		return nil, err
	}
	defer up.close()
	o.Instances = 1
	o.NoTiming = true
	o.LearnerRPM = 0
	// Budgets that never make anyone wait, as the upstream has no limit.
	o.BudgetRPM, o.BudgetBurst = 60_000_000, 1_000_000
	o.BudgetTPM, o.BudgetTokBurst = 600_000_000, 10_000_000
	src := &source{}
	cl, err := newCluster(ctx, o, src, up.URL)
	if err != nil {
		return nil, err
	}
	defer cl.close(context.WithoutCancel(ctx))
	server := "redis " + cl.admin.Options().Addr
	if cl.mini != nil {
		server = "miniredis (embedded: its figures say little; set REDIS_URL)"
	}
	fmt.Fprintf(o.Out, "closed loop: %d callers, %s, %d rounds of %d turns per loop\n", o.Closed, server, o.ClosedRounds, o.ClosedPerRound)
	svc := cl.svcs[0]
	rdb := cl.rdbs[0]
	cat := newCatalog(1, 1, o.ZipfS)
	course, video := cat.courseID(0), cat.videoURL(0, 0)
	var seq atomic.Int64
	question := func() string {
		return "Question " + strconv.FormatInt(seq.Add(1), 10) + ": how does the scheduler decide which goroutine runs next?"
	}
	kinds := map[string]int{}
	var kmu sync.Mutex
	service := func(caller int) error {
		r, err := svc.Ask(ctx, chat.Request{UserID: "closed-" + strconv.Itoa(caller), CourseID: course, VideoURL: video, Message: question(),
			Position: 2 * time.Minute, HasPosition: true})
		kind := ""
		switch {
		case err != nil:
			kind = errorKind(err)
		case !r.Stored:
			kind = fmt.Sprintf("not stored: %v", r.Reasons)
		default:
			return nil
		}
		kmu.Lock()
		kinds[kind]++
		kmu.Unlock()
		return errors.New(kind)
	}
	// Warm up the service (threads get their history), then take a
	// turn's request as the floor's payload.
	if _, errs := closedRound(ctx, o.Closed, 4*o.Closed, service); errs > 0 {
		return nil, fmt.Errorf("closed loop: %d service errors while warming up", errs)
	}
	var turnReq openai.ChatCompletionRequest
	if err := json.Unmarshal(up.lastRequest(), &turnReq); err != nil || len(turnReq.Messages) == 0 {
		return nil, fmt.Errorf("closed loop: no request captured: %v", err)
	}
	promptBytes := 0
	for _, m := range turnReq.Messages {
		promptBytes += len(m.Content)
	}
	for i := range 3 {
		if err := rdb.Set(ctx, cl.prefix+"floor:"+strconv.Itoa(i), strings.Repeat("v", 200), time.Hour).Err(); err != nil {
			return nil, err
		}
	}
	bare := newOpenAIClient(up.URL, 2*o.Closed)
	floor := func(int) error {
		for i := range 3 {
			if err := rdb.Get(ctx, cl.prefix+"floor:"+strconv.Itoa(i)).Err(); err != nil {
				return err
			}
		}
		req := turnReq
		req.Messages = append(append([]openai.ChatCompletionMessage(nil), turnReq.Messages[:len(turnReq.Messages)-1]...),
			openai.ChatCompletionMessage{Role: "user", Content: question()})
		_, err := bare.CreateChatCompletion(ctx, req)
		return err
	}
	closedRound(ctx, o.Closed, 2*o.Closed, floor)

	rep := &Report{Mode: "closed", Started: time.Now(), Stopped: "rounds"}
	cr := &ClosedReport{Callers: o.Closed, Rounds: o.ClosedRounds, PerRound: o.ClosedPerRound, PromptBytes: promptBytes}
	var tF, tS time.Duration
	var csF, csS commandStats
	measure := func(turn func(int) error, errs *int, rounds *[]ClosedRound) (time.Duration, commandStats) {
		c0, s0, t0 := readCommandStats(ctx, cl.admin), cl.commands(), cl.topLevel()
		d, e := closedRound(ctx, o.Closed, o.ClosedPerRound, turn)
		*errs += e
		cs, sent := readCommandStats(ctx, cl.admin).minus(c0), cl.commands()-s0
		top := cl.topLevel()
		for name, n := range t0 {
			top[name] -= n
		}
		n := float64(o.ClosedPerRound)
		all := cs.Usec
		cs.Usec = cs.topLevelUsec(top)
		*rounds = append(*rounds, ClosedRound{TurnsPerSec: round3(n / d.Seconds()), RedisUsPerTurn: round3(float64(cs.Usec) / n),
			RedisAllCommandsUsPerTurn: round3(float64(all) / n),
			// INFO itself is one call the hook also counts.
			ServerCallsPerTurn: round3(float64(cs.Calls-1) / n), SentPerTurn: round3(float64(sent-1) / n), Errors: e})
		return d, cs
	}
	for i := 0; i < o.ClosedRounds && ctx.Err() == nil; i++ {
		var dF, dS time.Duration
		var cF, cS commandStats
		if i%2 == 0 {
			dF, cF = measure(floor, &cr.FloorErrors, &cr.FloorRounds)
			dS, cS = measure(service, &cr.ServiceErrors, &cr.ServiceRounds)
		} else {
			dS, cS = measure(service, &cr.ServiceErrors, &cr.ServiceRounds)
			dF, cF = measure(floor, &cr.FloorErrors, &cr.FloorRounds)
		}
		tF, tS = tF+dF, tS+dS
		csF.Calls, csF.Usec, csF.OK = csF.Calls+cF.Calls, csF.Usec+cF.Usec, cF.OK && (i == 0 || csF.OK)
		csS.Calls, csS.Usec, csS.OK = csS.Calls+cS.Calls, csS.Usec+cS.Usec, cS.OK && (i == 0 || csS.OK)
		cr.RoundRatios = append(cr.RoundRatios, round3(dF.Seconds()/dS.Seconds()))
		fmt.Fprintf(o.Out, "round %d: floor %.0f turns/s, service %.0f turns/s, ratio %.3f, Redis CPU µs/turn floor %.1f service %.1f\n",
			i+1, float64(o.ClosedPerRound)/dF.Seconds(), float64(o.ClosedPerRound)/dS.Seconds(), dF.Seconds()/dS.Seconds(),
			float64(cF.Usec)/float64(o.ClosedPerRound), float64(cS.Usec)/float64(o.ClosedPerRound))
	}
	rounds := len(cr.RoundRatios)
	if rounds == 0 {
		return nil, ctx.Err()
	}
	cr.Rounds = rounds
	turns := float64(rounds * o.ClosedPerRound)
	cr.FloorTurnsPerSec = round3(turns / tF.Seconds())
	cr.ServiceTurnsPerSec = round3(turns / tS.Seconds())
	cr.Ratio = round3(tF.Seconds() / tS.Seconds())
	cr.FloorRedisUsPerTurn = round3(float64(csF.Usec) / turns)
	cr.ServiceRedisUsPerTurn = round3(float64(csS.Usec) / turns)
	cr.FloorCallsPerTurn = round3(float64(csF.Calls) / turns)
	cr.ServiceCallsPerTurn = round3(float64(csS.Calls) / turns)
	var cleanUs float64
	cr.MinServiceUsPerTurn = -1
	calls := make([]float64, 0, len(cr.ServiceRounds))
	for _, r := range cr.ServiceRounds {
		calls = append(calls, r.ServerCallsPerTurn)
	}
	slices.Sort(calls)
	median := calls[len(calls)/2]
	for _, r := range cr.ServiceRounds {
		if r.Errors == 0 && r.ServerCallsPerTurn <= median*1.1 {
			cr.CleanServiceRounds++
			cleanUs += r.RedisUsPerTurn
		}
		if cr.MinServiceUsPerTurn < 0 || r.RedisUsPerTurn < cr.MinServiceUsPerTurn {
			cr.MinServiceUsPerTurn = r.RedisUsPerTurn
		}
	}
	if cr.CleanServiceRounds > 0 {
		cr.CleanServiceUsPerTurn = round3(cleanUs / float64(cr.CleanServiceRounds))
	}
	if len(kinds) > 0 {
		cr.ServiceErrorKinds = kinds
	}
	rep.Closed = cr
	rep.Seconds = time.Since(rep.Started).Seconds()
	rep.Redis.Server = server
	rep.Settings = map[string]any{"callers": o.Closed, "rounds": o.ClosedRounds, "turns_per_round": o.ClosedPerRound,
		"transcript_tokens": o.TranscriptToks, "history_tokens": o.HistoryToks, "max_reply_tokens": o.MaxReply, "reply_tokens": o.ReplyTokens}
	rep.Checks = []Check{
		{Name: "closed loop: service over floor", Want: ">= 0.85", Got: fmt.Sprintf("%.3f", cr.Ratio), Pass: cr.Ratio >= 0.85},
		{Name: "closed loop: Redis CPU per turn (service, all rounds)", Want: "< 45µs", Got: fmt.Sprintf("%.1fµs", cr.ServiceRedisUsPerTurn),
			Pass: csS.OK && cr.ServiceRedisUsPerTurn < 45, Notes: "INFO commandstats usec of the whole server during the service rounds, other clients included, each command sent counted once"},
		{Name: "closed loop: Redis CPU per turn (service, clean rounds)", Want: "< 45µs", Got: fmt.Sprintf("%.1fµs", cr.CleanServiceUsPerTurn),
			Pass: cr.CleanServiceRounds > 0 && cr.CleanServiceUsPerTurn < 45, Notes: fmt.Sprintf("%d of %d rounds without other clients' commands", cr.CleanServiceRounds, rounds)},
		{Name: "closed loop: errors", Want: "0", Got: strconv.Itoa(cr.ServiceErrors + cr.FloorErrors), Pass: cr.ServiceErrors+cr.FloorErrors == 0},
	}
	return rep, nil
}

// closedRound runs n turns on callers goroutines and returns how long
// they took and how many failed.
func closedRound(ctx context.Context, callers, n int, turn func(caller int) error) (time.Duration, int) {
	var next, errs atomic.Int64
	start := time.Now()
	done := make(chan struct{}, callers)
	for c := range callers {
		go func() {
			defer func() { done <- struct{}{} }()
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				if turn(c) != nil {
					errs.Add(1)
				}
			}
		}()
	}
	for range callers {
		<-done
	}
	return time.Since(start), int(errs.Load())
}
