package chat_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
	tu "github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/threads"
)

// BenchmarkAnswers compares a learner's first turn (a new learner each
// iteration, a 20 KB transcript in the contextcache's L1, a Completer
// that answers at once) with the answer cache off and on:
//
//   - off: the turn without the cache, the baseline;
//   - off-http: the same through a *chat.Client over go-openai to the
//     fake OpenAI server on loopback, answering at once: the least a
//     real upstream call adds (HTTP, JSON, the Client's steps);
//   - miss: the cache on, a new question each time: the lookup, the
//     upstream call and the write of the answer;
//   - hit-l1: the cache on, the same question each time, from process
//     memory;
//   - hit-l2 (Redis only): the same, with L1Size -1, from Redis.
//
// "memory" runs with the memory thread store and no Redis for the cache;
// "redis" with the Redis thread store and the cache on the Redis of
// internal/testutil (miniredis, or $CHATSCALE_REDIS_URL). Since the
// Completer costs nothing, a hit saves only the Service's own work of a
// call here; against a real model it saves the call's seconds and tokens.
func BenchmarkAnswers(b *testing.B) {
	for _, backend := range []string{"memory", "redis"} {
		b.Run(backend, func(b *testing.B) {
			variants := []string{"off", "off-http", "miss", "hit-l1"}
			if backend == "redis" {
				variants = append(variants, "hit-l2")
			}
			for _, v := range variants {
				b.Run(v, func(b *testing.B) {
					turn := answersBench(b, backend == "redis", v)
					b.ReportAllocs()
					b.ResetTimer()
					for i := range b.N {
						turn(i)
					}
				})
			}
		})
	}
}

// BenchmarkAnswersRounds runs the variants of BenchmarkAnswers in one
// benchmark, in alternating rounds of 200 turns (the order rotating each
// round), so that the machine's other load hits them alike, and reports
// each one's mean time per turn and its ratio to "off". b.N counts the
// rounds: run it with a small -benchtime such as 10x (and an anchored
// -bench pattern, so that BenchmarkAnswers's -benchtime does not apply to
// it), as each round is 200 turns per variant and the fake upstream keeps
// every request it received.
func BenchmarkAnswersRounds(b *testing.B) {
	const perRound = 200
	for _, backend := range []string{"memory", "redis"} {
		b.Run(backend, func(b *testing.B) {
			variants := []string{"off", "off-http", "miss", "hit-l1"}
			if backend == "redis" {
				variants = append(variants, "hit-l2")
			}
			turns := make([]func(int), len(variants))
			for i, v := range variants {
				turns[i] = answersBench(b, backend == "redis", v)
			}
			spent := make([]time.Duration, len(variants))
			next := make([]int, len(variants))
			b.ResetTimer()
			for r := range b.N {
				for k := range variants {
					v := (r + k) % len(variants)
					start := time.Now()
					for range perRound {
						turns[v](next[v])
						next[v]++
					}
					spent[v] += time.Since(start)
				}
			}
			b.StopTimer()
			for v, name := range variants {
				b.ReportMetric(float64(spent[v].Nanoseconds())/float64(b.N*perRound), name+"-ns/turn")
				if v > 0 {
					b.ReportMetric(float64(spent[v])/float64(spent[0]), name+"/off")
				}
			}
		})
	}
}

// answersBench sets a Service up for a variant of BenchmarkAnswers and
// returns its i-th turn: learner i's first question.
func answersBench(b *testing.B, onRedis bool, variant string) func(i int) {
	ctx := context.Background()
	doc := benchTranscript()
	cacheCfg := contextcache.Config{}
	var (
		st  threads.Store
		err error
		env *tu.RedisEnv
	)
	if onRedis {
		env = tu.Redis(b)
		st, err = threads.NewRedis(env.Client, threads.Config{Prefix: env.Prefix})
		cacheCfg.Redis, cacheCfg.Prefix = env.Client, env.Prefix
	} else {
		var m *threads.MemoryStore
		m, err = threads.NewMemory(threads.Config{})
		if err == nil {
			b.Cleanup(func() { _ = m.Close() })
		}
		st = m
	}
	if err != nil {
		b.Fatal(err)
	}
	tc, err := contextcache.New(contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
		return doc, nil
	}), cacheCfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = tc.Close() })
	sc := chat.ServiceConfig{Threads: st, Transcripts: tc, Completer: instant{reply: strings.Repeat("r", 200)},
		Model: "gpt-4o-mini", Registerer: prometheus.NewRegistry()}
	if variant == "off-http" {
		fake := tu.OpenAI(b, tu.OpenAIConfig{})
		c, err := chat.NewClient(chat.NewOpenAI(fake.URL, "sk", 4), chat.Config{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Close() })
		sc.Completer = c
	}
	if !strings.HasPrefix(variant, "off") {
		sc.Answers.Courses = allCourses
		if onRedis {
			sc.Answers.Redis, sc.Answers.Prefix = env.Client, env.Prefix
		}
		if variant == "hit-l2" {
			sc.Answers.L1Size = -1
		}
	}
	svc, err := chat.NewService(sc)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = svc.Close(ctx) })
	if err := svc.LoadScripts(ctx); err != nil {
		b.Fatal(err)
	}
	const q = "What is this video about? Give me the three key points, briefly."
	ask := func(user, msg string) chat.Response {
		r, err := svc.Ask(ctx, chat.Request{UserID: user, CourseID: course, VideoURL: video1, Message: msg})
		if err != nil || !r.Stored {
			b.Fatalf("Ask: %v (stored %v)", err, r.Stored)
		}
		return r
	}
	ask("warm-up", q) // fills the transcript cache and, when on, the answer cache
	hit := strings.HasPrefix(variant, "hit")
	return func(i int) {
		msg := q
		if !hit {
			msg = "Question " + strconv.Itoa(i) + ": " + q
		}
		r := ask(variant+"-learner-"+strconv.Itoa(i), msg)
		if r.Cached != hit {
			b.Fatalf("%s: Cached %v", variant, r.Cached)
		}
	}
}
