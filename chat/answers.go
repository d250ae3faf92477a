package chat

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"
	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/keyspace"
	"github.com/chatscale/chatscale/internal/rediscall"
	"github.com/chatscale/chatscale/internal/scripts"
	"github.com/chatscale/chatscale/internal/timeutil"
	"github.com/chatscale/chatscale/ratelimit"
)

var (
	//go:embed answers_lookup.lua
	answersLookupSrc    string
	answersLookupScript = redis.NewScript(answersLookupSrc)
	//go:embed answers_fill.lua
	answersFillSrc    string
	answersFillScript = redis.NewScript(answersFillSrc)
)

// Defaults of AnswersConfig.
const (
	// DefaultAnswerTTL is the default AnswersConfig.TTL.
	DefaultAnswerTTL = time.Hour
	// DefaultAnswerL1Size is the default AnswersConfig.L1Size.
	DefaultAnswerL1Size = 10_000
	// DefaultAnswerLockTTL is the default AnswersConfig.LockTTL.
	DefaultAnswerLockTTL = 60 * time.Second
	// DefaultAnswerLockWait is the default AnswersConfig.LockWait.
	DefaultAnswerLockWait = 15 * time.Second
	// DefaultAnswerRedisTimeout is the default AnswersConfig.RedisTimeout.
	DefaultAnswerRedisTimeout = time.Second
)

// AnswersConfig configures the answer cache of a Service (see the package
// documentation, "Answer cache"). The zero value, with Courses nil, turns
// it off.
type AnswersConfig struct {
	// Courses says which courses use the cache; it is called once per
	// turn with Request.CourseID and must be safe for concurrent use. Nil
	// turns the cache off: no turn looks it up.
	Courses func(courseID string) bool
	// Redis, when set, holds the L2 copy of the answers and the lock that
	// lets one instance ask the upstream while the others wait for its
	// answer. Nil keeps the answers in process memory only, and one call
	// per question per process.
	Redis redis.UniversalClient
	// Prefix starts every Redis key. Empty means chatscale.DefaultPrefix.
	// The keys are <Prefix>chat:answers:{<digest>}:a and …:lock, the
	// digest being that of the cache key. It must not hold '{' or '}'.
	Prefix string
	// TTL is how long an answer is kept, in L2 and in L1 (an L1 copy
	// taken from L2 expires with it). Zero means DefaultAnswerTTL;
	// negative is refused.
	TTL time.Duration
	// L1Size bounds the answers kept in process memory (count). Zero
	// means DefaultAnswerL1Size; negative keeps none (every hit is read
	// from Redis).
	L1Size int
	// LockTTL is how long the lock lasts if its holder never releases it
	// (a crashed instance); the holder releases it as soon as its call
	// ends. Zero means DefaultAnswerLockTTL; negative is refused.
	LockTTL time.Duration
	// LockWait bounds how long a turn waits for the answer another turn
	// is getting (in this process, or under the lock in another); after
	// it, the turn asks the upstream itself. Zero means
	// DefaultAnswerLockWait; negative means no wait.
	LockWait time.Duration
	// RedisTimeout bounds each Redis call of the cache, whatever the
	// client's own timeouts: a Redis that hangs holds a turn for at most
	// this long per call, then the turn goes on without the cache. Zero
	// means DefaultAnswerRedisTimeout; negative means no bound of the
	// cache's own (the turn's ctx and the client's timeouts decide).
	RedisTimeout time.Duration
}

func (c AnswersConfig) withDefaults() (AnswersConfig, error) {
	const f = "ServiceConfig.Answers."
	for _, d := range [...]struct {
		field string
		v     time.Duration
	}{{"TTL", c.TTL}, {"LockTTL", c.LockTTL}} {
		if d.v < 0 {
			return c, configError(f+d.field, d.v.String()+": negative")
		}
	}
	if err := keyspace.Check("chat", f+"Prefix", c.Prefix); err != nil {
		return c, err
	}
	if c.Prefix == "" {
		c.Prefix = chatscale.DefaultPrefix
	}
	if c.TTL == 0 {
		c.TTL = DefaultAnswerTTL
	}
	if c.L1Size == 0 {
		c.L1Size = DefaultAnswerL1Size
	}
	if c.LockTTL == 0 {
		c.LockTTL = DefaultAnswerLockTTL
	}
	if c.LockWait == 0 {
		c.LockWait = DefaultAnswerLockWait
	}
	if c.RedisTimeout == 0 {
		c.RedisTimeout = DefaultAnswerRedisTimeout
	}
	return c, nil
}

// Polling of a wait for another instance's answer, and the pause of L2
// after a Redis failure.
const (
	answerMinPoll = 2 * time.Millisecond
	answerMaxPoll = 100 * time.Millisecond
	// answerFailMark is how long the '!' marker of a call that gave no
	// answer stays in the lock.
	answerFailMark = time.Second
	// answerRedisPause is how long the cache leaves Redis alone after a
	// failed call: turns then go to the upstream without waiting for it.
	answerRedisPause = time.Second
	// answerDeltaBytes is the size of the pieces in which Stream delivers
	// a cached reply.
	answerDeltaBytes = 256
	// answerKeyVersion starts every key digest; a change of what the
	// key covers gets a new one.
	answerKeyVersion = 1
)

// answerTier is where a cached answer came from: the tier label of
// ai_chat_answer_cache_hits_total.
type answerTier int

const (
	answerL1 answerTier = iota // process memory, or another turn of this process
	answerL2                   // Redis
	numAnswerTiers
)

var answerTierNames = [numAnswerTiers]string{"l1", "l2"}

// answerKey is the digest of what a first turn's reply depends on.
type answerKey [sha256.Size]byte

// answer is a cached reply and the usage of the call that produced it.
type answer struct {
	Reply        string `json:"r"`
	Prompt       int    `json:"p,omitempty"`
	CachedPrompt int    `json:"c,omitempty"`
	Completion   int    `json:"k,omitempty"`
	// Expires is when the answer leaves the cache, Unix milliseconds.
	Expires int64 `json:"x"`
}

// answerFlight is the lookup of one key by one turn of this process that
// the other turns asking the same question wait for.
type answerFlight struct {
	done chan struct{}
	ans  *answer // set before done is closed; nil: no answer to share
}

// answerCache is a Service's answer cache: L1 in process memory, L2 in
// Redis, one upstream call per key at a time across the cluster.
type answerCache struct {
	cfg       AnswersConfig
	now       func() time.Time
	log       *slog.Logger
	keyPrefix string
	bound     rediscall.Bound                  // of each Redis call: RedisTimeout
	l1        *otter.Cache[answerKey, *answer] // nil when L1Size < 0
	// sleep waits between polls of L2; tests may replace it.
	sleep func(ctx context.Context, d time.Duration) error

	mu      sync.Mutex
	flights map[answerKey]*answerFlight

	digestMu sync.RWMutex
	digests  map[string][sha256.Size]byte

	// redisPausedUntil is when L2 is used again after a failure, Unix
	// nanoseconds.
	redisPausedUntil atomic.Int64
	// onRedisError counts a failed Redis call (the Service's metric).
	onRedisError func()
}

func newAnswerCache(cfg AnswersConfig, now func() time.Time, log *slog.Logger) (*answerCache, error) {
	a := &answerCache{
		cfg:          cfg,
		now:          now,
		log:          log,
		keyPrefix:    cfg.Prefix + "chat:answers:",
		bound:        rediscall.New(cfg.RedisTimeout),
		sleep:        timeutil.Sleep,
		flights:      make(map[answerKey]*answerFlight),
		digests:      make(map[string][sha256.Size]byte),
		onRedisError: func() {},
	}
	if cfg.L1Size > 0 {
		var err error
		a.l1, err = otter.New(&otter.Options[answerKey, *answer]{
			MaximumSize: cfg.L1Size,
			ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[answerKey, *answer]) time.Duration {
				return time.Duration(e.Value.Expires-now().UnixMilli()) * time.Millisecond
			}),
			// As in contextcache: a clock that never ticks and maintenance
			// on the calling goroutine, so no goroutine outlives a call.
			Clock:    answerClock{now: now},
			Executor: func(fn func()) { fn() },
		})
		if err != nil {
			return nil, fmt.Errorf("chat: answer cache L1: %w", err)
		}
	}
	return a, nil
}

func (a *answerCache) close() {
	if a != nil && a.l1 != nil {
		a.l1.StopAllGoroutines()
	}
}

// redisKeys returns the answer and lock keys of k, which share the hash
// tag of k's digest.
func (a *answerCache) redisKeys(k answerKey) (value, lock string) {
	base := a.keyPrefix + "{" + hex.EncodeToString(k[:16]) + "}:"
	return base + "a", base + "lock"
}

// fromL1 returns the L1 copy of k, if fresh.
func (a *answerCache) fromL1(k answerKey) *answer {
	if a.l1 == nil {
		return nil
	}
	if ans, ok := a.l1.GetIfPresent(k); ok && ans.Expires > a.now().UnixMilli() {
		return ans
	}
	return nil
}

func (a *answerCache) toL1(k answerKey, ans *answer) {
	if a.l1 != nil && ans.Expires > a.now().UnixMilli() {
		a.l1.Set(k, ans)
	}
}

// redisUsable reports whether L2 is configured and not paused after a
// failure.
func (a *answerCache) redisUsable() bool {
	return a.cfg.Redis != nil && a.now().UnixNano() >= a.redisPausedUntil.Load()
}

func (a *answerCache) redisFailed(op string, err error) {
	a.redisPausedUntil.Store(a.now().Add(answerRedisPause).UnixNano())
	a.onRedisError()
	a.log.Warn("chat: answer cache: redis failed", "op", op, "err", err)
}

// answerState is a turn's part in the answer cache.
type answerState struct {
	on     bool // the turn looked the cache up: it fills it after its call
	key    answerKey
	flight *answerFlight // the flight this turn leads, until it ends it
	token  string        // the Redis lock token, when the turn holds the lock
	redis  bool          // the turn writes its answer to L2
}

// lookup finds the answer of st.key: in L1, from the turn of this
// process already getting it, or in L2, waiting up to LockWait for the
// instance holding the lock. It returns nil when the turn is to ask the
// upstream itself; st then says whether it holds the lock and leads this
// process's flight. It returns ctx's error when ctx ends.
func (a *answerCache) lookup(ctx context.Context, st *answerState) (*answer, answerTier, error) {
	k := st.key
	if ans := a.fromL1(k); ans != nil {
		return ans, answerL1, nil
	}
	deadline := a.now().Add(a.cfg.LockWait)
	a.mu.Lock()
	f := a.flights[k]
	if f == nil {
		f = &answerFlight{done: make(chan struct{})}
		a.flights[k] = f
		st.flight = f
	}
	a.mu.Unlock()
	if st.flight == nil {
		// Another turn of this process is getting the answer.
		wait := deadline.Sub(a.now())
		if wait <= 0 {
			return nil, 0, nil
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		select {
		case <-f.done:
			if f.ans != nil {
				return f.ans, answerL1, nil
			}
			// Its call gave no answer to keep: ask the upstream rather
			// than queue behind another attempt.
			return nil, 0, nil
		case <-wctx.Done():
			if ctx.Err() != nil {
				return nil, 0, ctx.Err()
			}
			return nil, 0, nil
		}
	}
	// The flight may have ended between the L1 read and its start.
	if ans := a.fromL1(k); ans != nil {
		a.end(st, ans)
		return ans, answerL1, nil
	}
	ans, err := a.fromL2(ctx, st, deadline)
	if ans != nil || err != nil {
		a.end(st, ans)
	}
	if ans != nil {
		a.toL1(k, ans)
	}
	return ans, answerL2, err
}

// fromL2 reads L2, taking the lock when the answer is absent and waiting
// for the holder of the lock until deadline.
func (a *answerCache) fromL2(ctx context.Context, st *answerState, deadline time.Time) (*answer, error) {
	if !a.redisUsable() {
		return nil, nil
	}
	vk, lk := a.redisKeys(st.key)
	token := newAnswerToken()
	lockMs := max(1, a.cfg.LockTTL.Milliseconds())
	poll := answerMinPoll
	for {
		res, err := rediscall.Do(ctx, a.bound, func(ctx context.Context) ([]any, error) {
			return answersLookupScript.Run(ctx, a.cfg.Redis, []string{vk, lk}, token, lockMs).Slice()
		})
		if err == nil && len(res) == 0 {
			err = errors.New("empty reply")
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			a.redisFailed("lookup", err)
			return nil, nil
		}
		status, _ := res[0].(int64)
		switch status {
		case 1:
			if len(res) == 2 {
				if s, ok := res[1].(string); ok {
					var ans answer
					if err := json.Unmarshal([]byte(s), &ans); err == nil && ans.Reply != "" {
						return &ans, nil
					}
				}
			}
			a.log.Warn("chat: answer cache: unreadable L2 value", "key", vk)
			st.redis = true // the turn's answer replaces it
			return nil, nil
		case 2:
			st.token, st.redis = token, true
			return nil, nil
		case 3:
			st.redis = true
			return nil, nil
		}
		// Another instance holds the lock: poll until it writes the
		// answer, gives up, or the wait runs out.
		now := a.now()
		if !now.Before(deadline) {
			st.redis = true
			return nil, nil
		}
		if err := a.sleep(ctx, min(poll, deadline.Sub(now))); err != nil {
			return nil, err
		}
		poll = min(2*poll, answerMaxPoll)
	}
}

// fill ends a turn's part in the cache after its upstream call: ans, the
// answer to keep (nil when the reply was degraded, or the call failed or
// was abandoned), goes to L1, to the turns of this process waiting for
// it and to L2, and the lock, if the turn holds it, is released.
func (a *answerCache) fill(ctx context.Context, st *answerState, ans *answer) {
	if ans != nil {
		a.toL1(st.key, ans)
	}
	a.end(st, ans)
	if !st.redis || (ans == nil && st.token == "") || !a.redisUsable() {
		return
	}
	var val []byte
	if ans != nil {
		val, _ = json.Marshal(ans)
	}
	ttl := max(1, time.Duration(ans.expiresIn(a.now())).Milliseconds())
	vk, lk := a.redisKeys(st.key)
	// The answer is paid for: write it even if the caller has gone.
	_, err := rediscall.Do(context.WithoutCancel(ctx), a.bound, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, answersFillScript.Run(ctx, a.cfg.Redis, []string{vk, lk}, st.token, val, ttl, answerFailMark.Milliseconds()).Err()
	})
	if err != nil {
		a.redisFailed("fill", err)
	}
}

// end ends the flight st leads, handing ans to its waiters.
func (a *answerCache) end(st *answerState, ans *answer) {
	f := st.flight
	if f == nil {
		return
	}
	st.flight = nil
	f.ans = ans
	a.mu.Lock()
	if a.flights[st.key] == f {
		delete(a.flights, st.key)
	}
	a.mu.Unlock()
	close(f.done)
}

// expiresIn is the time left before ans expires; zero for a nil answer.
func (ans *answer) expiresIn(now time.Time) time.Duration {
	if ans == nil {
		return 0
	}
	return time.Duration(ans.Expires-now.UnixMilli()) * time.Millisecond
}

// answerable reports whether the turn may be answered from the cache and
// fill it: its course is opted in, and its reply depends on no learner
// data. That is a turn with its thread open and holding no message (the
// history is read, HistoryTokens is not negative), no switch of videos
// to tell the model about, and nothing degraded so far (no stale or
// missing transcript, no thread store failure).
func (t *turn) answerable() bool {
	s := t.s
	return s.answers != nil && t.haveTh && !t.resp.Degraded && len(t.session.History) == 0 &&
		!t.session.VideoSwitched && s.cfg.HistoryTokens >= 0 && s.cfg.Answers.Courses(t.req.CourseID)
}

// answer serves the turn from the answer cache when it can. It returns
// true when the reply came from the cache; false when the turn is to
// call the upstream (and then answered fills the cache).
func (t *turn) answer(ctx context.Context, onDelta func(string) error) (bool, error) {
	s := t.s
	if !t.answerable() {
		return false, nil
	}
	t.ans.on = true
	t.ans.key = t.answerKey()
	cctx, span := s.child(ctx, "chat.answer_cache")
	ans, tier, err := s.answers.lookup(cctx, &t.ans)
	endSpan(span, err)
	if err != nil {
		return false, err
	}
	if ans == nil {
		s.metrics.answerMiss()
		return false, nil
	}
	t.ans.on = false
	if err := t.answerQuota(ctx); err != nil {
		return false, err
	}
	t.resp.Reply = ans.Reply
	t.resp.Cached = true
	t.resp.SavedUsage = Usage{PromptTokens: ans.Prompt, CachedPromptTokens: ans.CachedPrompt, CompletionTokens: ans.Completion}
	t.resp.PromptTokens = 0 // nothing was sent
	if onDelta != nil {
		for rest := ans.Reply; rest != ""; {
			piece := answerPiece(rest)
			rest = rest[len(piece):]
			if err := onDelta(piece); err != nil {
				t.abandoned = true
				return false, err
			}
		}
	}
	s.metrics.answerHit(tier, ans)
	return true, nil
}

// answered fills the cache with the turn's reply after its upstream
// call, when the turn looked the cache up; err is the call's error.
func (t *turn) answered(ctx context.Context, err error) {
	if !t.ans.on {
		return
	}
	t.ans.on = false
	var ans *answer
	if err == nil && !t.abandoned && !t.resp.Degraded && t.resp.Reply != "" {
		u := t.resp.Usage
		ans = &answer{Reply: t.resp.Reply, Prompt: u.PromptTokens, CachedPrompt: u.CachedPromptTokens,
			Completion: u.CompletionTokens, Expires: t.s.cfg.Now().Add(t.s.cfg.Answers.TTL).UnixMilli()}
	}
	t.s.answers.fill(ctx, &t.ans, ans)
}

// answerQuota spends the learner's turn quota (ServiceConfig.UserRequests)
// for a reply from the cache; it spends no tokens.
func (t *turn) answerQuota(ctx context.Context) error {
	s := t.s
	if s.cfg.UserRequests == nil {
		return nil
	}
	d, err := ratelimit.AllowAll(ctx, t.quotaCosts().requests)
	switch {
	case err == nil && d.Allowed:
		return nil
	case err == nil:
		return &RateLimitError{Key: t.req.UserID, RetryAfter: d.RetryAfter}
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, chatscale.ErrInvalidInput):
		return &RateLimitError{Key: t.req.UserID, Err: err}
	default:
		return &UnavailableError{Reason: ReasonLimiterDown, Err: err}
	}
}

// answerKey is the digest of everything the model would see besides the
// learner's own wording: the course and video, the model and the reply's
// maximum, the transcript's UpdatedAt, every message of the built prompt
// but the question (the executed system prompt, the transcript excerpt,
// the position note), and the normalised question.
func (t *turn) answerKey() answerKey {
	b := make([]byte, 0, 512)
	field := func(s string) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = append(b, answerKeyVersion)
	field(t.req.CourseID)
	field(t.req.VideoURL)
	field(t.s.cfg.Model)
	field(strconv.Itoa(t.s.cfg.MaxReplyTokens))
	switch {
	case !t.haveDoc:
		field("-")
	case t.doc.UpdatedAt.IsZero():
		field("0")
	default:
		field(strconv.FormatInt(t.doc.UpdatedAt.UnixNano(), 10))
	}
	msgs := t.built.messages
	for _, m := range msgs[:len(msgs)-1] {
		field(m.Role)
		if len(m.Content) < answerDigestAbove {
			field(m.Content)
			continue
		}
		// A long message (the transcript excerpt) goes in as its digest,
		// after a length no field has.
		d := t.s.answers.digest(m.Content)
		b = binary.AppendUvarint(b, digestMark)
		b = append(b, d[:]...)
	}
	field(normalizeQuestion(t.req.Message))
	return sha256.Sum256(b)
}

// digestMark stands for the length of a field given as its digest.
const digestMark = 1<<32 - 1

// answerDigestAbove is the size from which a message's digest is
// memoised: the transcript excerpt is the same string turn after turn.
const answerDigestAbove = 1024

// answerDigests bounds the memo of message digests.
const answerDigests = 256

// digest returns the SHA-256 of a long message, from the memo when it
// holds it. The memo is keyed by the text itself, so equal texts share a
// digest and different ones never do; a lookup hashes the text with the
// map's hash (much cheaper than SHA-256) and compares it to the key,
// which is at once when both are the same string.
func (a *answerCache) digest(text string) [sha256.Size]byte {
	a.digestMu.RLock()
	d, ok := a.digests[text]
	a.digestMu.RUnlock()
	if ok {
		return d
	}
	d = sha256.Sum256([]byte(text))
	a.digestMu.Lock()
	if len(a.digests) >= answerDigests {
		clear(a.digests)
	}
	a.digests[text] = d
	a.digestMu.Unlock()
	return d
}

// folders holds case folders: a cases.Caser is not safe for concurrent
// use.
var folders = sync.Pool{New: func() any { c := cases.Fold(); return &c }}

// normalizeQuestion returns the form of a question that the answer cache
// keys on: Unicode NFC, case folded (full folding: "ß" and "SS" are
// one), every run of white space one space, no leading or trailing space,
// and the trailing run of sentence punctuation (. ? ! , ; : … and their
// full-width forms) dropped, so "What is this video about?" and
// "  what is THIS video about ?? " are one question. Other punctuation
// and symbols are kept ("what is C#", "C++").
func normalizeQuestion(q string) string {
	q = norm.NFC.String(q)
	c := folders.Get().(*cases.Caser)
	q = c.String(q)
	c.Reset()
	folders.Put(c)
	q = norm.NFC.String(q)
	q = strings.Join(strings.Fields(q), " ")
	return strings.TrimRightFunc(q, func(r rune) bool {
		return unicode.IsSpace(r) || strings.ContainsRune(".?!,;:…。？！，；：、．¿¡", r)
	})
}

// answerPiece returns the first delta of a cached reply streamed: up to
// about answerDeltaBytes, cut after a space when there is one.
func answerPiece(s string) string {
	if len(s) <= answerDeltaBytes {
		return s
	}
	if i := strings.LastIndexByte(s[:answerDeltaBytes], ' '); i > 0 {
		return s[:i+1]
	}
	// No space: cut at a rune boundary.
	i := answerDeltaBytes
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	if i == 0 {
		return s
	}
	return s[:i]
}

// LoadScripts loads the answer cache's Lua scripts into the script cache
// of every server its Redis client reaches (every node of a Cluster,
// every shard of a Ring). Calling it at startup is optional: without it
// the first run of each script on each server costs one more round trip.
// It does nothing when the answer cache is off or has no Redis. It
// returns ctx's error when ctx ends, else the first error Redis answers.
func (s *Service) LoadScripts(ctx context.Context) error {
	if s.answers == nil || s.cfg.Answers.Redis == nil {
		return nil
	}
	err := scripts.Load(ctx, s.cfg.Answers.Redis, answersLookupScript, answersFillScript)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	default:
		return fmt.Errorf("chat: loading scripts: %w", err)
	}
}

func newAnswerToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// answerClock gives otter the Service's clock. Its ticks are nil: otter
// then runs no periodic clean-up goroutine.
type answerClock struct{ now func() time.Time }

func (c answerClock) NowNano() int64                    { return c.now().UnixNano() }
func (answerClock) Tick(time.Duration) <-chan time.Time { return nil }
