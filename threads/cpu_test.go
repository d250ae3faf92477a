package threads_test

import (
	"bufio"
	"context"
	_ "embed"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
	"github.com/chatscale/chatscale/threads"
)

// cmdStats are the calls and µs of each command in INFO commandstats.
type cmdStats map[string]struct{ calls, usec int64 }

// readCmdStats reads INFO commandstats.
func readCmdStats(ctx context.Context, rdb redis.UniversalClient) (cmdStats, error) {
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, err
	}
	st := cmdStats{}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		name, fields, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		name, isCmd := strings.CutPrefix(name, "cmdstat_")
		if !ok || !isCmd {
			continue
		}
		var c struct{ calls, usec int64 }
		for f := range strings.SplitSeq(fields, ",") {
			k, v, _ := strings.Cut(f, "=")
			n, _ := strconv.ParseInt(v, 10, 64)
			switch k {
			case "calls":
				c.calls = n
			case "usec":
				c.usec = n
			}
		}
		st[name] = c
	}
	return st, sc.Err()
}

// delta returns the calls and µs that names (summed) gained since before.
func (st cmdStats) delta(before cmdStats, names ...string) (calls, usec int64) {
	for _, n := range names {
		calls += st[n].calls - before[n].calls
		usec += st[n].usec - before[n].usec
	}
	return calls, usec
}

// redisCPU runs op n times and returns the µs of Redis time per op that
// INFO commandstats counted: for the whole op (its MULTI and EXEC, whose
// time includes what it runs, when op is a transaction; else its script),
// and for its script alone (EVALSHA and EVAL). Each op must run exactly one
// script, in a transaction or not. The server may be shared, so a batch
// during which other clients ran scripts or transactions (more calls
// counted than op made) is discarded; of 5 clean batches (at most 20
// tries) the best is returned, as the least disturbed by other load on the
// machine.
func redisCPU(b *testing.B, rdb redis.UniversalClient, n int, op func(i int) error) (perOp, script float64) {
	b.Helper()
	ctx := context.Background()
	perOp, script = -1, -1
	clean := 0
	for try := 0; try < 20 && clean < 5; try++ {
		before, err := readCmdStats(ctx, rdb)
		if err != nil {
			b.Fatal(err)
		}
		for i := range n {
			if err := op(i); err != nil {
				b.Fatal(err)
			}
		}
		after, err := readCmdStats(ctx, rdb)
		if err != nil {
			b.Fatal(err)
		}
		sc, su := after.delta(before, "eval", "evalsha")
		mc, mu := after.delta(before, "multi")
		ec, eu := after.delta(before, "exec")
		if sc != int64(n) || mc != ec || (ec != 0 && ec != int64(n)) {
			continue // another client ran scripts or transactions meanwhile
		}
		clean++
		tu := su
		if ec != 0 {
			tu = mu + eu
		}
		if us := float64(tu) / float64(n); perOp < 0 || us < perOp {
			perOp = us
		}
		if us := float64(su) / float64(n); script < 0 || us < script {
			script = us
		}
	}
	if clean == 0 {
		b.Fatalf("every batch was disturbed by other clients")
	}
	return perOp, script
}

// BenchmarkRedisCPU reports the Redis CPU of the scripts of one tutor turn,
// from INFO commandstats of a real server (it skips elsewhere):
//
//	CHATSCALE_REDIS_URL=redis://127.0.0.1:6379 go test -run '^$' -bench RedisCPU -benchtime=2000x -count=3 ./threads/
//
// The turn: Open (get the thread, record the video, read the newest 20
// of 50 messages of 200 bytes), WaitAll of 1 request and 6000 tokens on
// two ratelimit.Redis limiters sharing a hash tag (one script), Append of
// a question and an answer of 200 bytes, each with its ID. b.N turns are
// spread over 1000 threads in 1000 users' buckets. As in a real turn, each
// Open comes long after the thread's last write (the store's clock moves
// a minute ahead before each round of the 1000 threads), so it refreshes
// the thread's TTLs and indexes, and each Append comes right after its
// Open, so it does not (see the package documentation, "Time and TTL").
// The metrics are µs of script execution per call: open-µs, wait-µs,
// append-µs, their sum turn-µs, append-refresh-µs for an Append that
// refreshes (one long after the thread's last write, not part of the
// turn), and adjust-µs for the occasional settling of the token estimate
// (not part of the turn). Open is a MULTI holding its script and an
// LRANGE of the history: open-µs is the whole transaction (MULTI and
// EXEC, whose time includes the script's and the LRANGE's),
// open-script-µs the script alone. Each figure is the best of 5 batches
// of b.N calls. ns/op is meaningless here.
//
// Only the commands' own time is counted, not the reading of the requests
// and the writing of the replies around them.
func BenchmarkRedisCPU(b *testing.B) {
	env := testutil.Redis(b)
	if env.Backend != testutil.Server && env.Backend != testutil.Sentinel {
		b.Skip("needs INFO commandstats of one server: set CHATSCALE_REDIS_URL")
	}
	ctx := context.Background()
	clock := testutil.NewClock(time.Now())
	st := newRedis(b, env.Client, threads.Config{Prefix: env.Prefix, Now: clock.Now})
	hour := func(rate int) ratelimit.Limit { return ratelimit.Limit{Rate: rate, Period: time.Hour} }
	newLim := func(name string, l ratelimit.Limit) *ratelimit.Redis {
		lim, err := ratelimit.NewRedis(env.Client, l, ratelimit.Config{Prefix: env.Prefix, Name: name, HashTag: "openai"})
		if err != nil {
			b.Fatal(err)
		}
		return lim
	}
	// Budgets large enough never to hold a turn off, with keys that stay
	// (an hour to refill), as a busy organisation's would.
	req := newLim("requests", hour(100_000_000))
	tok := newLim("tokens", hour(1_000_000_000))
	if err := st.LoadScripts(ctx); err != nil {
		b.Fatal(err)
	}
	if err := req.LoadScripts(ctx); err != nil {
		b.Fatal(err)
	}
	users, ids := benchRedisThreads(b, st, "user-")
	costs := []ratelimit.Cost{
		{Limiter: req, Key: "org", N: 1},
		{Limiter: tok, Key: "org", N: 6000},
	}
	open := func(i int) error {
		if i%benchThreads == 0 {
			clock.Advance(time.Minute)
		}
		_, err := st.Open(ctx, threads.OpenRequest{
			UserID: users[i%benchThreads], CourseID: "course", VideoURL: "v", HistoryLimit: 20,
		})
		return err
	}
	wait := func(int) error { return ratelimit.WaitAll(ctx, costs...) }
	turn := 0
	appendTurn := func(i int) error {
		turn++
		q, a := benchMsg, benchMsg
		q.ID, a.ID = fmt.Sprint("q", turn), fmt.Sprint("a", turn)
		return st.Append(ctx, ids[i%benchThreads], q, a)
	}
	appendRefresh := func(i int) error {
		if i%benchThreads == 0 {
			clock.Advance(time.Minute)
		}
		return appendTurn(i)
	}
	adjust := func(int) error { return tok.Adjust(ctx, "org", -500) }

	b.ResetTimer()
	openUS, openScriptUS := redisCPU(b, env.Client, b.N, open)
	waitUS, _ := redisCPU(b, env.Client, b.N, wait)
	appendUS, _ := redisCPU(b, env.Client, b.N, appendTurn)
	appendRefreshUS, _ := redisCPU(b, env.Client, b.N, appendRefresh)
	adjustUS, _ := redisCPU(b, env.Client, b.N, adjust)
	b.StopTimer()
	b.ReportMetric(openUS, "open-µs")
	b.ReportMetric(openScriptUS, "open-script-µs")
	b.ReportMetric(waitUS, "wait-µs")
	b.ReportMetric(appendUS, "append-µs")
	b.ReportMetric(openUS+waitUS+appendUS, "turn-µs")
	b.ReportMetric(appendRefreshUS, "append-refresh-µs")
	b.ReportMetric(adjustUS, "adjust-µs")
}

// benchRedisThreads creates benchThreads threads of 50 messages of 200
// bytes, for users prefix0, prefix1, ...
func benchRedisThreads(b *testing.B, st *threads.RedisStore, prefix string) (users, ids []string) {
	b.Helper()
	ctx := context.Background()
	ids = make([]string, benchThreads)
	users = make([]string, benchThreads)
	for i := range ids {
		users[i] = fmt.Sprint(prefix, i)
		th, err := st.GetOrCreate(ctx, users[i], "course")
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = th.ID
		msgs := make([]threads.Message, 50)
		for j := range msgs {
			msgs[j] = benchMsg
		}
		if err := st.Append(ctx, th.ID, msgs...); err != nil {
			b.Fatal(err)
		}
	}
	return users, ids
}

var (
	//go:embed testdata/v1/open.lua
	v1OpenSrc string
	//go:embed testdata/v1/append.lua
	v1AppendSrc string
)

// BenchmarkRedisCPUScripts compares the Redis CPU of the current Open and
// Append with that of their previous scripts (testdata/v1: every write
// refreshed every TTL and index, no message IDs), alternating old and new
// three times in one run on the same server, on two sets of 1000 threads
// of 50 messages, as BenchmarkRedisCPU's turn does them (Open long after
// the last write, Append right after Open; the new Append with message
// IDs). It reports the median of the three rounds for each (each round
// the best of 5 batches of b.N calls), in µs per call: open-v1-µs,
// open-µs, append-v1-µs, append-µs, and their sums turn-v1-µs (Open and
// Append) and turn-µs; also open-norefresh-µs (an Open right after
// another write of its thread) and append-noid-µs (an Append without
// message IDs to a thread that never had one).
//
//	CHATSCALE_REDIS_URL=redis://127.0.0.1:6379 go test -run '^$' -bench RedisCPUScripts -benchtime=2000x -count=3 ./threads/
func BenchmarkRedisCPUScripts(b *testing.B) {
	env := testutil.Redis(b)
	if env.Backend != testutil.Server && env.Backend != testutil.Sentinel {
		b.Skip("needs INFO commandstats of one server: set CHATSCALE_REDIS_URL")
	}
	ctx := context.Background()
	clock := testutil.NewClock(time.Now())
	st := newRedis(b, env.Client, threads.Config{Prefix: env.Prefix, Now: clock.Now})
	if err := st.LoadScripts(ctx); err != nil {
		b.Fatal(err)
	}
	v1Open, v1Append := redis.NewScript(v1OpenSrc), redis.NewScript(v1AppendSrc)
	for _, sc := range []*redis.Script{v1Open, v1Append} {
		if err := sc.Load(ctx, env.Client).Err(); err != nil {
			b.Fatal(err)
		}
	}
	users, ids := benchRedisThreads(b, st, "user-")
	v1Users, v1IDs := benchRedisThreads(b, st, "v1-user-")
	ttl := strconv.FormatInt(threads.DefaultTTL.Milliseconds(), 10)
	keep := strconv.Itoa(threads.DefaultMaxMessages)

	open := func(i int) error {
		if i%benchThreads == 0 {
			clock.Advance(time.Minute)
		}
		_, err := st.Open(ctx, threads.OpenRequest{UserID: users[i%benchThreads], CourseID: "course", VideoURL: "v", HistoryLimit: 20})
		return err
	}
	turn := 0
	appendNew := func(i int) error {
		turn++
		q, a := benchMsg, benchMsg
		q.ID, a.ID = fmt.Sprint("q", turn), fmt.Sprint("a", turn)
		return st.Append(ctx, ids[i%benchThreads], q, a)
	}
	openNoRefresh := func(i int) error {
		_, err := st.Open(ctx, threads.OpenRequest{UserID: users[i%benchThreads], CourseID: "course", VideoURL: "v", HistoryLimit: 20})
		return err
	}
	// Append without IDs, on threads that never had one, right after
	// their Open (done outside the measurement).
	noIDUsers, noIDs := benchRedisThreads(b, st, "noid-user-")
	appendNoID := func(i int) error { return st.Append(ctx, noIDs[i%benchThreads], benchMsg, benchMsg) }
	openNoID := func() {
		for _, u := range noIDUsers {
			if _, err := st.Open(ctx, threads.OpenRequest{UserID: u, CourseID: "course", VideoURL: "v", HistoryLimit: 20}); err != nil {
				b.Fatal(err)
			}
		}
	}
	// The previous store's calls: open.lua v1 in a MULTI with the LRANGE,
	// append.lua v1 alone, with their argument layouts. Their clock, their
	// own, moves as the new Open's does: every write of a real turn comes
	// at a new time, which moves the thread's score in the activity set.
	v1Clock := testutil.NewClock(time.Now())
	openV1 := func(i int) error {
		if i%benchThreads == 0 {
			v1Clock.Advance(time.Minute)
		}
		user := v1Users[i%benchThreads]
		keys, pair := threads.ScriptKeysForTest(st, user, "course")
		_, err := env.Client.TxPipelined(ctx, func(p redis.Pipeliner) error {
			v1Open.EvalSha(ctx, p, keys, user, "course", pair, "rrrrrrrrrrrrrrrrrrrrrr", v1Clock.Now().UnixMilli(), ttl, "v")
			p.LRange(ctx, keys[1], -20, -1)
			return nil
		})
		return err
	}
	appendV1 := func(i int) error {
		if i%benchThreads == 0 {
			v1Clock.Advance(time.Minute)
		}
		keys, pair := threads.ScriptKeysForTest(st, v1Users[i%benchThreads], "course")
		rnd := v1IDs[i%benchThreads][len(pair)+1:]
		now := v1Clock.Now().UnixMilli()
		msg := threads.EncodeMessageForTest(benchMsg, now)
		return v1Append.EvalSha(ctx, env.Client, keys, rnd, pair, now, ttl, keep, "", msg, msg).Err()
	}

	var openV1US, openUS, appendV1US, appendUS, openNoRefreshUS, appendNoIDUS []float64
	b.ResetTimer()
	for range 3 {
		us, _ := redisCPU(b, env.Client, b.N, openV1)
		openV1US = append(openV1US, us)
		us, _ = redisCPU(b, env.Client, b.N, open)
		openUS = append(openUS, us)
		us, _ = redisCPU(b, env.Client, b.N, appendV1)
		appendV1US = append(appendV1US, us)
		us, _ = redisCPU(b, env.Client, b.N, appendNew)
		appendUS = append(appendUS, us)
		us, _ = redisCPU(b, env.Client, b.N, openNoRefresh)
		openNoRefreshUS = append(openNoRefreshUS, us)
		openNoID()
		us, _ = redisCPU(b, env.Client, b.N, appendNoID)
		appendNoIDUS = append(appendNoIDUS, us)
	}
	b.StopTimer()
	median := func(v []float64) float64 {
		slices.Sort(v)
		return v[len(v)/2]
	}
	b.ReportMetric(median(openV1US), "open-v1-µs")
	b.ReportMetric(median(openUS), "open-µs")
	b.ReportMetric(median(appendV1US), "append-v1-µs")
	b.ReportMetric(median(appendUS), "append-µs")
	b.ReportMetric(median(openNoRefreshUS), "open-norefresh-µs")
	b.ReportMetric(median(appendNoIDUS), "append-noid-µs")
	b.ReportMetric(median(openV1US)+median(appendV1US), "turn-v1-µs")
	b.ReportMetric(median(openUS)+median(appendUS), "turn-µs")
}
