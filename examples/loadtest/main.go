// Command loadtest measures chatscale in the scenario it was built for:
// N learners (default 1000) each asking M questions a minute (default 10)
// about the course videos they watch, against an OpenAI-compatible
// upstream with a latency distribution and its own rate limits.
//
//	go run ./examples/loadtest                                   # in process, 3 minutes
//	REDIS_URL=redis://127.0.0.1:6379 go run ./examples/loadtest -json out.json -csv out.csv -plot out.png
//	go run ./examples/loadtest -rpm 3000                         # demand over supply
//	REDIS_URL=redis://127.0.0.1:6379 go run ./examples/loadtest -closed 256
//	go run ./examples/loadtest -serve-upstream 127.0.0.1:18080   # the fake upstream alone
//	go run ./examples/loadtest -target http://127.0.0.1:8080,http://127.0.0.1:8081
//	go run ./examples/loadtest plot -csv out.csv -o out.png
//
// # In process (the default)
//
// K chat.Service instances (-instances, default 4) run in this process,
// each with what a separate process would have: its own go-redis client,
// its own HTTP client and connection pool for the upstream, its own
// contextcache L1, its own chat.Client (breaker, bulkhead, settlements).
// They share one Redis (REDIS_URL, else an embedded miniredis, which is
// single-threaded Go: the figures that matter are on real Redis) and one
// transcript Source: generated transcripts of about 6.4 KB (40 timed
// segments, 10 minutes of video), with a simulated latency per load
// (-source-latency, default 5 ms), counting its loads. Every key of a run
// starts with a prefix of its own ("loadtest-<random>:"), deleted with
// SCAN and UNLINK at the end; nothing is flushed.
//
// Each turn goes to the next instance, round robin, as a load balancer
// without sticky sessions would send it.
//
// # Budgets
//
// The shared request and token budgets are ratelimit.NewRedis limiters
// with one HashTag, so that a turn spends both in one script. GCRA with
// rate r a minute and burst b admits at most b + r requests in any 60 s,
// so the budget is sized to keep that at the upstream's limit L: b = L/100
// and r = L - b - L/100 (the last 1 % covers the time between the budget
// decision and the request's arrival at the upstream, which varies: a
// pause of the sender of 0.6 s shifts some requests later than others,
// and a 60 s window at the upstream then holds 60.6 s of budget). For the
// default 10,000 RPM: burst 100, rate 9,800 a minute; the tokens alike
// (10 M TPM: burst 100,000, rate 9,800,000). -budget-rpm, -budget-burst,
// -budget-tpm and -budget-token-burst override them. The limiters'
// ExpectedInstances is -instances, so that while Redis fails each
// instance's local fallback budget is its share of the limit, not the
// whole of it.
//
// With demand at the limit (the default scenario: 1000 x 10 a minute is
// 10,000 a minute, Poisson), a budget at or under the limit must make
// turns wait: the report's budget_wait says how long.
//
// The per-learner quota (ServiceConfig.UserRequests) is off by default: the
// default scenario wants no 429 seen by a learner. -learner-rpm X turns it
// on: X turns a minute per learner, without burst (one turn per 60/X s),
// on a Redis limiter keyed by learner; over it a learner gets a 429 with
// Retry-After at once.
//
// How long a turn waits for the shared budget: chat.Config.MaxBudgetWait
// (-max-budget-wait, default 5 s, as the example server's
// UPSTREAM_MAX_WAIT). ratelimit.WaitAll reserves budget when the wait fits
// within it (and the call's deadline) and refuses at once otherwise; the
// Client then answers with its fallback, degraded with reason
// rate_limited. With -max-budget-wait 0 the bound is the learner's
// deadline (-learner-timeout, 30 s) or ServiceConfig.TurnTimeout
// (-turn-timeout).
//
// # The upstream
//
// An OpenAI-compatible Chat Completions fake served over HTTP on
// 127.0.0.1. Latency is lognormal (-latency-median 800ms, -latency-p99 3s,
// capped at 25 s). It enforces -rpm (default 10,000) and -tpm (default
// 10,000,000) over an exact sliding 60 s window (a log of its admissions,
// not a bucket): a request that would exceed either is answered 429 with
// Retry-After, retry-after-ms and x-ratelimit-{limit,remaining,reset}-
// {requests,tokens} headers; every answer carries the x-ratelimit headers.
// A request counts its prompt (one token per 4 bytes plus 4 per message,
// the chat.Client's own estimate) plus the reply (-reply-tokens, 60) at
// admission. It counts admissions, tokens and 429s per second, from which
// the report takes the busiest 60 s.
//
// # Learners
//
// Each learner asks questions at Poisson arrival times (exponential gaps,
// -per-minute a minute), follows one course and watches one video at a
// time, both drawn with Zipf popularity (s = -zipf, 1.1) over -courses
// (20) and -videos (30 a course); before a question it moves on to another
// video with probability 0.1 (half the time the next one in the course,
// half a popular one), and its playback position advances. Its user ID,
// and so its thread, stays the same across its turns. A learner has at
// most one question in flight: one that arrives while the previous is
// unanswered is asked right after that answer, never dropped, as a person
// typing in a chat box would (the report counts them as asked late, with
// their queue delay). When the run stops, questions still waiting for
// their learner's previous answer are counted as unasked. A turn not
// answered within -learner-timeout (30 s) counts as a timeout.
//
// The prompt budgets are set so that the default scenario fits the
// upstream's token limit as well as its request limit: at 10,000 requests
// a minute, 10 M TPM leaves 1,000 tokens a request. -transcript-tokens
// (400), -history-tokens (300) and -max-reply (200, the reservation's reply
// part) set the Service's budgets.
//
// # Question mix and answer cache
//
// -common S makes a share S of the learners' first turns on their course
// (the turns whose thread holds no message yet) one of 5 common opening
// questions ("What is this video about?", "Summarise this video", "What
// are the key points?", "Can you explain this simply?", "What should I
// learn first?"), drawn uniformly, typed with varied casing, spacing and
// trailing punctuation. Such a question carries no playback position: it
// is about the whole video, and a position would enter the answer
// cache's key. Every other turn, the other first turns included, asks a
// question of its own with the learner's position, as without -common;
// the draw uses the learner's random stream only when S > 0, so a run
// without the mix asks what it always asked, and two runs with the same
// -seed and -common ask the same questions.
//
// -answers turns on the Service's answer cache (ServiceConfig.Answers)
// for every course, L2 on the run's Redis under the run's prefix, and
// gives each instance a metrics registry of its own. A learner follows
// one course, so it has one first turn: in a run of D minutes at M
// questions a minute, about 1/(D x M) of the turns (3.3 % for the default
// 3 minutes at 10), and only those can be served from the cache.
//
// The report's "answers" part gives the first turns, those asking a
// common question, the hits (Response.Cached; by tier l1/l2 from
// ai_chat_answer_cache_hits_total), the misses and eligible turns (from
// the metrics), the hit ratio over eligible turns and over all turns, the
// tokens saved (the sum of Response.SavedUsage, and the metric), and the
// upstream requests per turn (requests the fake received, admitted or
// refused, over turns asked), with what they would be with one request
// per hit. -baseline FILE reads the -json report of the same setup
// without -answers and gives its requests per turn and the ratio:
//
//	REDIS_URL=redis://127.0.0.1:6379 go run ./examples/loadtest -common 0.3 -json base.json
//	REDIS_URL=redis://127.0.0.1:6379 go run ./examples/loadtest -common 0.3 -answers -baseline base.json
//
// -common, -answers and -baseline are for the in-process mode only.
//
// # What is measured
//
// End to end is the time of Service.Ask (in process) or of the HTTP
// request (-target), as the learner sees it. In process, each turn also
// records the time inside the upstream HTTP calls (an http.RoundTripper
// under chat.Transport: from the request handed to the network to its body
// read) and the time waiting for the shared budgets (the chat.budget spans
// of the Client, through a minimal TracerProvider that only times them).
// The report gives two overheads over the turns the model answered:
// "minus_upstream" = end to end - upstream time (everything the library
// adds, any wait for budget included), and "library" = end to end -
// upstream time - budget wait.
//
// Redis commands per turn are counted by a go-redis hook on every
// instance's client (each command of a pipeline counts); on a real Redis
// the report also gives INFO commandstats calls and CPU µs per turn, for
// the whole server (other clients' commands included).
//
// Progress is printed every -progress (5 s). -json writes the report,
// -csv a per-second timeline (offered, completed, failed, p99 of the turns
// completed that second, in flight, upstream requests, upstream 429s),
// -plot a PNG of it. The run stops by itself after -duration (3m); Ctrl-C
// stops it early and it still reports (turns in flight get 5 s).
//
// # -target
//
// The same learners over HTTP, POST /v1/chat, round robin over running
// examples/server processes. Learners are identified by the server's
// anonymous cookie, or, with -auth-secret (the servers' AUTH_SECRET), by a
// signed bearer token per learner. Courses and videos are those the
// server lists in GET /v1/config (its samples), else generated IDs. With
// -serve-upstream ADDR in the same command the fake upstream runs in the
// process and the report has its figures; point the servers at it with
// OPENAI_BASE_URL=http://ADDR/v1 and OPENAI_API_KEY set to anything, and
// set their UPSTREAM_REQUESTS_PER_MINUTE below the fake's -rpm. Without
// -target, -serve-upstream serves the fake alone until Ctrl-C or
// -duration.
//
// # -closed N
//
// A closed loop of N callers, one instance, an upstream without latency
// or limits, and budgets that never wait, in alternating rounds
// (-closed-rounds, -closed-turns each): the library's turn, and a floor
// loop doing 3 plain Redis GETs and one go-openai call carrying the same
// request messages (a turn's request, taken at the fake after a warm-up,
// with the question replaced). It reports each loop's turns/s, their
// ratio, and Redis CPU per turn from INFO commandstats (the usec of every
// command during the loop's rounds over its turns). Run it on a real Redis.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) > 0 && args[0] == "plot" {
		return plotCmd(args[1:])
	}
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, rows, err := execute(ctx, o)
	if err != nil || rep == nil {
		return err
	}
	return output(o, rep, rows)
}

// execute runs the mode the options name.
func execute(ctx context.Context, o options) (*Report, []timelineRow, error) {
	switch {
	case o.Closed > 0:
		rep, err := runClosed(ctx, o)
		return rep, nil, err
	case o.ServeUpstream != "" && len(o.Targets) == 0:
		return nil, nil, serveUpstream(ctx, o)
	case len(o.Targets) > 0:
		var up *upstream
		if o.ServeUpstream != "" {
			u, err := newUpstream(upstreamConfig{RPM: o.RPM, TPM: o.TPM, Median: o.Median, P99: o.P99, ReplyTokens: o.ReplyTokens, Seed: o.Seed})
			if err != nil {
				return nil, nil, err
			}
			if err := u.start(o.ServeUpstream); err != nil {
				return nil, nil, err
			}
			defer u.close()
			up = u
		}
		return runTarget(ctx, o, up)
	}
	return runInProcess(ctx, o)
}

// output prints the report and writes the files asked for.
func output(o options, rep *Report, rows []timelineRow) error {
	rep.print(o.Out)
	if o.JSONPath != "" {
		if err := writeJSONFile(o.JSONPath, rep); err != nil {
			return err
		}
	}
	if o.CSVPath != "" && rows != nil {
		f, err := os.Create(o.CSVPath)
		if err != nil {
			return err
		}
		if err := errors.Join(writeCSV(f, rows), f.Close()); err != nil {
			return err
		}
	}
	if o.PlotPath != "" && rows != nil {
		f, err := os.Create(o.PlotPath)
		if err != nil {
			return err
		}
		title := fmt.Sprintf("%d learners x %g/min, upstream %d RPM, %s", o.Learners, o.PerMinute, o.RPM, rep.Mode)
		if err := errors.Join(plotPNG(f, rows, title), f.Close()); err != nil {
			return err
		}
	}
	return nil
}

// serveUpstream serves the fake upstream alone.
func serveUpstream(ctx context.Context, o options) error {
	u, err := newUpstream(upstreamConfig{RPM: o.RPM, TPM: o.TPM, Median: o.Median, P99: o.P99, ReplyTokens: o.ReplyTokens, Seed: o.Seed})
	if err != nil {
		return err
	}
	if err := u.start(o.ServeUpstream); err != nil {
		return err
	}
	defer u.close()
	fmt.Fprintf(o.Out, "upstream fake on %s (%d RPM, %d TPM, latency median %s p99 %s) until Ctrl-C or %s\n", u.URL, o.RPM, o.TPM, o.Median, o.P99, o.Duration)
	t := time.NewTimer(o.Duration)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	tot := u.totals(60)
	fmt.Fprintf(o.Out, "upstream: admitted %d requests, %d tokens, 429s %d; busiest 60 s %d requests, %d tokens\n",
		tot.Requests, tot.Tokens, tot.Rejected, tot.BusiestRequests, tot.BusiestTokens)
	return nil
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.IntVar(&o.Learners, "learners", 1000, "simulated learners")
	fs.Float64Var(&o.PerMinute, "per-minute", 10, "questions a minute per learner (Poisson)")
	fs.IntVar(&o.Instances, "instances", 4, "Service instances in process")
	fs.DurationVar(&o.Duration, "duration", 3*time.Minute, "how long questions arrive")
	fs.Uint64Var(&o.Seed, "seed", 1, "seed of the learners, arrivals and latencies")
	fs.IntVar(&o.Courses, "courses", 20, "courses")
	fs.IntVar(&o.Videos, "videos", 30, "videos per course")
	fs.Float64Var(&o.ZipfS, "zipf", 1.1, "Zipf exponent of course and video popularity")
	fs.Float64Var(&o.Common, "common", 0, "share of first turns asking one of 5 common opening questions (in process)")
	fs.BoolVar(&o.Answers, "answers", false, "turn the answer cache on for every course (in process)")
	fs.StringVar(&o.BaselinePath, "baseline", "", "the -json report of the same setup without -answers, to compare upstream requests per turn")
	fs.IntVar(&o.RPM, "rpm", 10_000, "the upstream's requests per minute (sliding 60 s)")
	fs.IntVar(&o.TPM, "tpm", 10_000_000, "the upstream's tokens per minute (sliding 60 s)")
	fs.DurationVar(&o.Median, "latency-median", 800*time.Millisecond, "median upstream latency (lognormal)")
	fs.DurationVar(&o.P99, "latency-p99", 3*time.Second, "99th percentile upstream latency (lognormal)")
	fs.IntVar(&o.ReplyTokens, "reply-tokens", 60, "tokens of every upstream reply")
	fs.DurationVar(&o.LearnerTimeout, "learner-timeout", 30*time.Second, "a turn not answered by then is a timeout")
	fs.DurationVar(&o.SourceLatency, "source-latency", 5*time.Millisecond, "latency of one transcript load from the Source")
	fs.IntVar(&o.BudgetRPM, "budget-rpm", 0, "shared request budget, a minute (0: rpm - burst - rpm/100)")
	fs.IntVar(&o.BudgetBurst, "budget-burst", 0, "its burst (0: rpm/100)")
	fs.IntVar(&o.BudgetTPM, "budget-tpm", 0, "shared token budget, a minute (0: tpm - burst - tpm/100)")
	fs.IntVar(&o.BudgetTokBurst, "budget-token-burst", 0, "its burst (0: tpm/100)")
	fs.Float64Var(&o.LearnerRPM, "learner-rpm", 0, "per-learner quota, turns a minute, no burst (0: none)")
	fs.DurationVar(&o.TurnTimeout, "turn-timeout", 0, "ServiceConfig.TurnTimeout (0: the library's 60 s)")
	fs.IntVar(&o.TranscriptToks, "transcript-tokens", 400, "ServiceConfig.TranscriptTokens")
	fs.IntVar(&o.HistoryToks, "history-tokens", 300, "ServiceConfig.HistoryTokens")
	fs.IntVar(&o.MaxReply, "max-reply", 200, "ServiceConfig.MaxReplyTokens")
	fs.IntVar(&o.MaxInFlight, "max-in-flight", 1024, "chat.Config.MaxInFlight of each instance")
	fs.DurationVar(&o.MaxBudgetWait, "max-budget-wait", 5*time.Second, "chat.Config.MaxBudgetWait: the longest a turn waits for the shared budgets before the fallback (0: until its deadline)")
	fs.StringVar(&o.RedisURL, "redis", os.Getenv("REDIS_URL"), "Redis URL (default $REDIS_URL; empty: embedded miniredis)")
	fs.DurationVar(&o.Progress, "progress", 5*time.Second, "progress line interval (0: none)")
	targets := fs.String("target", "", "comma-separated base URLs of running examples/server processes")
	fs.StringVar(&o.AuthSecret, "auth-secret", os.Getenv("AUTH_SECRET"), "the servers' AUTH_SECRET, for bearer tokens (-target)")
	fs.StringVar(&o.ServeUpstream, "serve-upstream", "", "serve the fake upstream on this address (alone, or with -target)")
	fs.IntVar(&o.Closed, "closed", 0, "closed loop with this many callers")
	fs.IntVar(&o.ClosedRounds, "closed-rounds", 10, "closed loop: rounds of each loop")
	fs.IntVar(&o.ClosedPerRound, "closed-turns", 2048, "closed loop: turns per round")
	fs.StringVar(&o.JSONPath, "json", "", "write the report as JSON to this file")
	fs.StringVar(&o.CSVPath, "csv", "", "write the per-second timeline as CSV to this file")
	fs.StringVar(&o.PlotPath, "plot", "", "draw the timeline as PNG to this file")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *targets != "" {
		for _, t := range strings.Split(*targets, ",") {
			if t = strings.TrimRight(strings.TrimSpace(t), "/"); t != "" {
				o.Targets = append(o.Targets, t)
			}
		}
	}
	switch {
	case o.Learners <= 0 || o.PerMinute <= 0 || o.Instances <= 0 || o.Duration <= 0:
		return o, errors.New("-learners, -per-minute, -instances and -duration must be positive")
	case o.RPM < 0 || o.TPM < 0:
		return o, errors.New("-rpm and -tpm must not be negative")
	case o.Duration > 24*time.Hour:
		return o, errors.New("-duration: at most 24h")
	case o.Common < 0 || o.Common > 1:
		return o, errors.New("-common: a share, 0 to 1")
	case (o.Answers || o.Common > 0 || o.BaselinePath != "") && (len(o.Targets) > 0 || o.Closed > 0):
		return o, errors.New("-answers, -common and -baseline: in process only (the servers' configuration decides their cache)")
	}
	o.defaults()
	return o, nil
}

// plotCmd is "loadtest plot -csv FILE -o FILE".
func plotCmd(args []string) error {
	fs := flag.NewFlagSet("loadtest plot", flag.ContinueOnError)
	in := fs.String("csv", "", "the timeline CSV written by -csv")
	out := fs.String("o", "", "the PNG to write")
	title := fs.String("title", "loadtest", "the plot's title")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *in == "" || *out == "" {
		return errors.New("plot: -csv and -o are required")
	}
	f, err := os.Open(*in)
	if err != nil {
		return err
	}
	rows, err := readCSV(f)
	_ = f.Close()
	if err != nil {
		return err
	}
	w, err := os.Create(*out)
	if err != nil {
		return err
	}
	return errors.Join(plotPNG(w, rows, *title), w.Close())
}
