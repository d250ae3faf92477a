package chat_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/sashabaranov/go-openai"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
	tu "github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
	"github.com/chatscale/chatscale/threads"
)

// instant is a Completer that answers at once in process: the upstream
// with zero latency, so that a benchmark measures the Service alone.
type instant struct{ reply string }

func (c instant) CreateChatCompletion(_ context.Context, req openai.ChatCompletionRequest) (openai.ChatCompletionResponse, error) {
	return openai.ChatCompletionResponse{
		Choices: []openai.ChatCompletionChoice{{Message: openai.ChatCompletionMessage{Role: "assistant", Content: c.reply}}},
		Usage:   openai.Usage{PromptTokens: 5000, CompletionTokens: 50, TotalTokens: 5050},
	}, nil
}

func (c instant) CreateChatCompletionStream(context.Context, openai.ChatCompletionRequest) (*openai.ChatCompletionStream, error) {
	return nil, fmt.Errorf("not streamed")
}

// benchTranscript is a 20 KB transcript of 200 timed segments.
func benchTranscript() contextcache.Document {
	d := contextcache.Document{Title: "Concurrency in Go", UpdatedAt: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	var text strings.Builder
	for i := range 200 {
		s := contextcache.Segment{
			Start: time.Duration(i) * 15 * time.Second, End: time.Duration(i+1) * 15 * time.Second,
			Text: fmt.Sprintf("%03d ", i) + strings.Repeat("channels and goroutines ", 4)[:96],
		}
		d.Segments = append(d.Segments, s)
		text.WriteString(s.Text)
	}
	d.Text = text.String()
	return d
}

// questions returns n distinct questions of about 100 bytes, so that
// every turn counts the tokens of a question it has not seen.
func questions(n int) []string {
	qs := make([]string, n)
	for i := range qs {
		qs[i] = fmt.Sprintf("Question %d: how does the scheduler decide which goroutine runs next on a busy processor?", i)
	}
	return qs
}

// seed gives (user, course) a thread of 20 messages of 200 bytes.
func seed(b *testing.B, st threads.Store, user string) {
	ctx := context.Background()
	th, err := st.GetOrCreate(ctx, user, course)
	if err != nil {
		b.Fatal(err)
	}
	msgs := make([]threads.Message, 20)
	for i := range msgs {
		role := threads.RoleUser
		if i%2 == 1 {
			role = threads.RoleAssistant
		}
		msgs[i] = threads.Message{Role: role, Content: strings.Repeat(strconv.Itoa(i%10), 200)}
	}
	if err := st.Append(ctx, th.ID, msgs...); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkServiceAskMemory is the Service's own cost: a typical turn (20
// history messages of 200 B, a 20 KB transcript, a new 100 B question)
// with every part in memory (memory thread store, contextcache L1, a
// Completer that answers at once). Variants: the Completer bare, and
// behind a *chat.Client with local budgets.
func BenchmarkServiceAskMemory(b *testing.B) {
	for _, viaClient := range []bool{false, true} {
		name := map[bool]string{false: "completer", true: "client"}[viaClient]
		b.Run(name, func(b *testing.B) {
			st, err := threads.NewMemory(threads.Config{})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			doc := benchTranscript()
			cache, err := contextcache.New(contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
				return doc, nil
			}), contextcache.Config{})
			if err != nil {
				b.Fatal(err)
			}
			defer cache.Close()
			var completer chat.Completer = instant{reply: strings.Repeat("r", 200)}
			if viaClient {
				reqs, _ := ratelimit.NewLocal(ratelimit.PerSecond(1e9), ratelimit.Config{})
				toks, _ := ratelimit.NewLocal(ratelimit.PerSecond(1e9), ratelimit.Config{})
				c, err := chat.NewClient(completer, chat.Config{Requests: reqs, Tokens: toks})
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				completer = c
			}
			svc, err := chat.NewService(chat.ServiceConfig{Threads: st, Transcripts: cache, Completer: completer,
				Model: "gpt-4o-mini", Registerer: prometheus.NewRegistry()})
			if err != nil {
				b.Fatal(err)
			}
			defer svc.Close(context.Background())
			seed(b, st, "ada")
			ctx := context.Background()
			req := chat.Request{UserID: "ada", CourseID: course, VideoURL: video1, Message: "warm up"}
			if _, err := svc.Ask(ctx, req); err != nil {
				b.Fatal(err)
			}
			qs := questions(b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				req.Message = qs[i]
				r, err := svc.Ask(ctx, req)
				if err != nil || !r.Stored {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkServiceRedis runs, against the Redis at $CHATSCALE_REDIS_URL,
// 256 concurrent callers through two loops in one run, on the same Redis
// and the same zero-latency fake upstream over HTTP, in alternating
// rounds of 1024 turns:
//
//   - floor: 3 plain GETs and one go-openai call carrying the same
//     request messages as a turn: the work of a turn minus the library;
//   - service: Service.Ask with a Redis thread store, contextcache with
//     Redis, a *chat.Client with shared Redis request and token budgets.
//
// It reports each loop's turns/s, their ratio (service over floor) and
// the Redis server's CPU per turn of each (INFO cpu, user + system: the
// commands and the network work of their round trips). b.N counts turns
// of each loop, rounded up to whole rounds.
func BenchmarkServiceRedis(b *testing.B) {
	if os.Getenv(tu.EnvRedisURL) == "" {
		b.Skip("set " + tu.EnvRedisURL + " to run against a real Redis")
	}
	const callers = 256
	doc := benchTranscript()
	fake := tu.OpenAI(b, tu.OpenAIConfig{})
	env := tu.Redis(b)
	ctx := context.Background()

	st, err := threads.NewRedis(env.Client, threads.Config{Prefix: env.Prefix})
	if err != nil {
		b.Fatal(err)
	}
	cache, err := contextcache.New(contextcache.SourceFunc(func(context.Context, string, string) (contextcache.Document, error) {
		return doc, nil
	}), contextcache.Config{Redis: env.Client, Prefix: env.Prefix})
	if err != nil {
		b.Fatal(err)
	}
	defer cache.Close()
	lim := func(name string, l ratelimit.Limit) *ratelimit.Redis {
		r, err := ratelimit.NewRedis(env.Client, l, ratelimit.Config{Name: name, HashTag: "openai", Prefix: env.Prefix})
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	client, err := chat.NewClient(chat.NewOpenAI(fake.URL, "sk", 2*callers), chat.Config{
		Requests: lim("requests", ratelimit.PerSecond(1_000_000)),
		Tokens:   lim("tokens", ratelimit.PerSecond(10_000_000)),
		Redis:    env.Client, Prefix: env.Prefix, MaxInFlight: 2 * callers,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	svc, err := chat.NewService(chat.ServiceConfig{Threads: st, Transcripts: cache, Completer: client, Model: "gpt-4o-mini"})
	if err != nil {
		b.Fatal(err)
	}
	defer svc.Close(ctx)
	for _, l := range []interface{ LoadScripts(context.Context) error }{st, cache, client} {
		if err := l.LoadScripts(ctx); err != nil {
			b.Fatal(err)
		}
	}
	// A turn's request, as the floor loop sends it.
	var turnReq openai.ChatCompletionRequest
	capture := tu.OpenAI(b, tu.OpenAIConfig{})
	{
		c, _ := chat.NewClient(chat.NewOpenAI(capture.URL, "sk", 4), chat.Config{})
		s, _ := chat.NewService(chat.ServiceConfig{Threads: st, Transcripts: cache, Completer: c, Model: "gpt-4o-mini"})
		seed(b, st, "capture")
		if _, err := s.Ask(ctx, chat.Request{UserID: "capture", CourseID: course, VideoURL: video1, Message: questions(1)[0]}); err != nil {
			b.Fatal(err)
		}
		_ = s.Close(ctx)
		_ = c.Close()
		turnReq = capture.Events()[0].Request
	}
	bare := chat.NewOpenAI(fake.URL, "sk", 2*callers)
	for i := range 3 {
		if err := env.Client.Set(ctx, env.Prefix+"floor:"+strconv.Itoa(i), strings.Repeat("v", 200), time.Hour).Err(); err != nil {
			b.Fatal(err)
		}
	}
	for u := range callers {
		seed(b, st, "learner-"+strconv.Itoa(u))
	}

	floor := func(_ int, q string) error {
		for i := range 3 {
			if err := env.Client.Get(ctx, env.Prefix+"floor:"+strconv.Itoa(i)).Err(); err != nil {
				return err
			}
		}
		req := turnReq
		req.Messages = append(append([]openai.ChatCompletionMessage(nil), turnReq.Messages[:len(turnReq.Messages)-1]...),
			openai.ChatCompletionMessage{Role: "user", Content: q})
		_, err := bare.CreateChatCompletion(ctx, req)
		return err
	}
	service := func(caller int, q string) error {
		r, err := svc.Ask(ctx, chat.Request{UserID: "learner-" + strconv.Itoa(caller), CourseID: course, VideoURL: video1, Message: q})
		if err == nil && !r.Stored {
			err = fmt.Errorf("turn not stored: %+v", r.Reasons)
		}
		return err
	}
	// round runs n turns of one loop on 256 goroutines and returns how
	// long they took and the Redis CPU they cost (INFO cpu, user + sys).
	var seq atomic.Int64
	round := func(n int, turn func(caller int, q string) error) (time.Duration, float64) {
		var next atomic.Int64
		cpu0 := redisCPU(b, env.Client)
		start := time.Now()
		done := make(chan error, callers)
		for c := range callers {
			go func() {
				for next.Add(1) <= int64(n) {
					if err := turn(c, "Question "+strconv.FormatInt(seq.Add(1), 10)+": how does the scheduler decide which goroutine runs next?"); err != nil {
						done <- err
						return
					}
				}
				done <- nil
			}()
		}
		for range callers {
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start), redisCPU(b, env.Client) - cpu0
	}
	round(2*callers, floor) // warm both loops' connections
	round(2*callers, service)
	// Rounds of 1024 turns alternate between the loops, and so does which
	// goes first, so that the machine's other load hits both alike.
	const perRound = 1024
	var tFloor, tService time.Duration
	var cFloor, cService float64
	turns := 0
	b.ResetTimer()
	for i := 0; turns < b.N; i++ {
		if i%2 == 0 {
			d, c := round(perRound, floor)
			tFloor, cFloor = tFloor+d, cFloor+c
			d, c = round(perRound, service)
			tService, cService = tService+d, cService+c
		} else {
			d, c := round(perRound, service)
			tService, cService = tService+d, cService+c
			d, c = round(perRound, floor)
			tFloor, cFloor = tFloor+d, cFloor+c
		}
		turns += perRound
	}
	b.StopTimer()
	b.ReportMetric(float64(turns)/tFloor.Seconds(), "floor-turns/s")
	b.ReportMetric(float64(turns)/tService.Seconds(), "service-turns/s")
	b.ReportMetric(tFloor.Seconds()/tService.Seconds(), "ratio")
	b.ReportMetric(cFloor/float64(turns)*1e6, "floor-redis-cpu-µs/turn")
	b.ReportMetric(cService/float64(turns)*1e6, "service-redis-cpu-µs/turn")
}

// redisCPU returns the CPU the Redis server has used, user and system, in
// seconds (INFO cpu).
func redisCPU(b *testing.B, rdb redis.UniversalClient) float64 {
	b.Helper()
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatal(err)
			}
			total += f
		}
	}
	return total
}
