package threads

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/keyspace"
	"github.com/chatscale/chatscale/internal/rediscall"
	"github.com/chatscale/chatscale/internal/scripts"
)

var (
	//go:embed open.lua
	openSrc string
	//go:embed append.lua
	appendSrc string
	//go:embed read.lua
	readSrc string
	//go:embed delete.lua
	deleteSrc string
	//go:embed forget.lua
	forgetSrc string

	openScript   = redis.NewScript(openSrc)
	appendScript = redis.NewScript(appendSrc)
	readScript   = redis.NewScript(readSrc)
	deleteScript = redis.NewScript(deleteSrc)
	forgetScript = redis.NewScript(forgetSrc)
)

// Buckets is the number of hash tags the Redis store spreads users over.
// It is part of the key layout: every instance sharing a prefix must use
// the same value, so it is a constant.
const Buckets = 1024

// digestLen is the length, in base64url characters, of a user or course
// digest (12 bytes).
const digestLen = 16

// redisIDLen is the length of a Redis thread ID: <uh><ch>.<random>.
const redisIDLen = 2*digestLen + 1 + randomPartLen

// RedisStore is a Store on Redis (single server, Sentinel or Cluster), shared
// by every instance of the application that uses the same key prefix. Open,
// Append, TrackVideo, GetOrCreate, Get, History and Delete each take one
// round trip: one Lua script run by SHA (the first run of a script on a
// server that has not cached it falls back to EVAL, which caches it), which
// Open and History send in a MULTI/EXEC followed by the LRANGE of the
// history. Find (Finder) takes one round trip too, a plain HMGET.
// ForgetUser takes two or more round trips and Active one pipeline. With
// Config.WaitReplicas, the WAIT of Append, TrackVideo and Delete rides in
// their round trip; ForgetUser sends one more. Every Redis call is bounded
// by Config.RedisTimeout. See the package documentation for the key
// layout, the refresh of TTLs and indexes, and failovers.
//
// A RedisStore holds no state besides its configuration: it is safe for
// concurrent use, has no goroutines and needs no Close.
type RedisStore struct {
	rdb     redis.UniversalClient
	cfg     Config
	prefix  string // cfg.Prefix + "threads:"
	bound   rediscall.Bound
	refresh string // refresh interval of the scripts, ms
}

// maxRefreshInterval bounds the refresh interval of the Redis store's
// writes (see the package documentation, "Time and TTL").
const maxRefreshInterval = 30 * time.Second

// refreshInterval returns how long after a thread's last refresh a write
// refreshes it again: 1/64 of the TTL, at least 1 ms and at most
// maxRefreshInterval.
func refreshInterval(cfg *Config) time.Duration {
	if !cfg.expires() {
		return maxRefreshInterval
	}
	return min(max(cfg.TTL/64, time.Millisecond), maxRefreshInterval)
}

var (
	_ Store  = (*RedisStore)(nil)
	_ Finder = (*RedisStore)(nil)
)

// NewRedis returns a RedisStore using rdb and configured by cfg (see Config
// for the defaults). It does no I/O. NewRedis does not take ownership of
// rdb; callers close it. It returns a *chatscale.ConfigError for a nil rdb,
// a Prefix holding '{' or '}', or a negative Shards.
func NewRedis(rdb redis.UniversalClient, cfg Config) (*RedisStore, error) {
	if rdb == nil {
		return nil, &chatscale.ConfigError{Package: "threads", Field: "rdb", Reason: "nil"}
	}
	cfg = cfg.withDefaults()
	if err := keyspace.Check("threads", "Config.Prefix", cfg.Prefix); err != nil {
		return nil, err
	}
	if cfg.Shards < 0 {
		return nil, &chatscale.ConfigError{Package: "threads", Field: "Config.Shards", Reason: "negative"}
	}
	bound := rediscall.New(cfg.RedisTimeout)
	if cfg.WaitTimeout < 0 {
		return nil, &chatscale.ConfigError{Package: "threads", Field: "Config.WaitTimeout", Reason: "negative"}
	}
	if b := bound.Timeout(); cfg.WaitReplicas > 0 && b > 0 && cfg.WaitTimeout >= b {
		return nil, &chatscale.ConfigError{Package: "threads", Field: "Config.WaitTimeout",
			Reason: "not shorter than Config.RedisTimeout (" + b.String() + ")"}
	}
	return &RedisStore{
		rdb: rdb, cfg: cfg, prefix: cfg.Prefix + "threads:", bound: bound,
		refresh: strconv.FormatInt(refreshInterval(&cfg).Milliseconds(), 10),
	}, nil
}

// LoadScripts loads the store's Lua scripts into the script cache of every
// server the client reaches (every node of a Cluster, every shard of a
// Ring). Calling it at
// startup is optional: without it, the first run of each script on each
// server costs one more round trip (EVALSHA answered NOSCRIPT, then EVAL),
// after a restart or a failover too. It returns the first error Redis
// answers.
func (s *RedisStore) LoadScripts(ctx context.Context) error {
	_, err := rediscall.Do(ctx, s.bound, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, scripts.Load(ctx, s.rdb, openScript, appendScript, readScript, deleteScript, forgetScript)
	})
	if err != nil {
		return wrap(ctx, "loading scripts", err)
	}
	return nil
}

// redisKeys are the keys of one thread; all share the bucket's hash tag.
type redisKeys struct {
	thread, msgs, user, active string
	uh, ch                     string
}

// digest returns 12 bytes of SHA-256 over a domain byte and the ID, as 16
// base64url characters.
func digest(domain byte, id string) string {
	h := sha256.New()
	h.Write([]byte{domain})
	h.Write([]byte(id))
	var sum [sha256.Size]byte
	return base64.RawURLEncoding.EncodeToString(h.Sum(sum[:0])[:12])
}

// bucketTag returns the hash tag of a user digest: its bucket number in
// three lowercase hex digits (no braces, no separators).
func bucketTag(uh string) string {
	var b [12]byte
	_, _ = base64.RawURLEncoding.Decode(b[:], []byte(uh))
	n := (uint(b[0])<<8 | uint(b[1])) % Buckets
	const hexdig = "0123456789abcdef"
	return string([]byte{hexdig[n>>8&0xf], hexdig[n>>4&0xf], hexdig[n&0xf]})
}

// keys is the package's one key builder.
func (s *RedisStore) keys(uh, ch string) redisKeys {
	base := s.prefix + "{" + bucketTag(uh) + "}:"
	return redisKeys{
		thread: base + "t:" + uh + ch,
		msgs:   base + "m:" + uh + ch,
		user:   base + "u:" + uh,
		active: base + "a",
		uh:     uh,
		ch:     ch,
	}
}

func (s *RedisStore) activeKey(bucket int) string {
	const hexdig = "0123456789abcdef"
	tag := string([]byte{hexdig[bucket>>8&0xf], hexdig[bucket>>4&0xf], hexdig[bucket&0xf]})
	return s.prefix + "{" + tag + "}:a"
}

func (k *redisKeys) all() []string { return []string{k.thread, k.msgs, k.user, k.active} }

// parseID splits a Redis thread ID into its keys and random part; ok is
// false for an ID this store cannot have made.
func (s *RedisStore) parseID(id string) (k redisKeys, rnd string, ok bool) {
	if len(id) != redisIDLen || id[2*digestLen] != '.' {
		return k, "", false
	}
	uh, ch, rnd := id[:digestLen], id[digestLen:2*digestLen], id[2*digestLen+1:]
	if !isB64URL(uh) || !isB64URL(ch) || !isB64URL(rnd) {
		return k, "", false
	}
	return s.keys(uh, ch), rnd, true
}

// ttlArg returns the TTL as a script argument: milliseconds, or ” when
// threads never expire.
func (s *RedisStore) ttlArg() string {
	if !s.cfg.expires() {
		return ""
	}
	return strconv.FormatInt(s.cfg.TTL.Milliseconds(), 10)
}

// historyStart returns the LRANGE start index for a history limit (-20
// for the newest 20, 0 for all), or ok false for none.
func historyStart(limit int) (start int64, ok bool) {
	if limit < 0 {
		return 0, false
	}
	return -int64(limit), true
}

// encodeMessage encodes a message for the list:
// "<role><unix ms>:<content>", or "<role><unix ms>|<ID length>|<ID>:<content>"
// for a message with an ID.
func encodeMessage(m Message, now int64) string {
	at := now
	if !m.Time.IsZero() {
		at = m.Time.UnixMilli()
	}
	var b strings.Builder
	b.Grow(len(m.Content) + len(m.ID) + 26)
	b.WriteByte(roleCode(m.Role))
	b.WriteString(strconv.FormatInt(at, 10))
	if m.ID != "" {
		b.WriteByte('|')
		b.WriteString(strconv.Itoa(len(m.ID)))
		b.WriteByte('|')
		b.WriteString(m.ID)
	}
	b.WriteByte(':')
	b.WriteString(m.Content)
	return b.String()
}

var errMalformed = errors.New("threads: malformed message in Redis")

func decodeMessage(s string) (Message, error) {
	end := strings.IndexAny(s, ":|")
	if end < 2 {
		return Message{}, errMalformed
	}
	r, ok := codeRole(s[0])
	at, err := strconv.ParseInt(s[1:end], 10, 64)
	if !ok || err != nil {
		return Message{}, errMalformed
	}
	id := ""
	if s[end] == '|' {
		rest := s[end+1:]
		bar := strings.IndexByte(rest, '|')
		if bar < 1 {
			return Message{}, errMalformed
		}
		n, err := strconv.Atoi(rest[:bar])
		if err != nil || n < 1 || len(rest) < bar+1+n+1 || rest[bar+1+n] != ':' {
			return Message{}, errMalformed
		}
		id = rest[bar+1 : bar+1+n]
		end += 1 + bar + 1 + n
	}
	return Message{Role: r, Content: s[end+1:], Time: fromMillis(at), ID: id}, nil
}

// idTokenLen is the length of a message ID's token in the thread hash's
// field 'k' (see append.lua); noIDToken stands for a message without ID.
const (
	idTokenLen = 6
	noIDToken  = "\x00\x00\x00\x00\x00\x00"
)

// idToken returns the token of a message ID: the first 6 bytes of SHA-256
// over a domain byte and the ID. Two distinct IDs of one thread share a
// token with a probability of 2^-48 per pair: with 50 kept messages and
// two new ones, about 4e-13 per Append that a new message is taken for a
// retry.
func idToken(id string) string {
	h := sha256.New()
	h.Write([]byte{'i'})
	h.Write([]byte(id))
	var sum [sha256.Size]byte
	return string(h.Sum(sum[:0])[:idTokenLen])
}

func decodeMessages(vals []string) ([]Message, error) {
	out := make([]Message, 0, len(vals))
	for _, v := range vals {
		m, err := decodeMessage(v)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// runWithHistory runs script over keys and args and, unless limit is
// negative, reads the newest limit messages of list (all for 0) with an
// LRANGE that follows the script in the same MULTI/EXEC: one round trip,
// atomic, and the messages do not pass through Lua, which costs Redis
// several times what the LRANGE itself does. Like Script.Run, it sends
// EVALSHA and falls back to EVAL when the server lacks the script. The
// script's error reply, if any, is returned as the error.
func (s *RedisStore) runWithHistory(ctx context.Context, script *redis.Script, keys []string, args []any, list string, limit int) ([]any, []string, error) {
	type reply struct {
		res  []any
		hist []string
	}
	r, err := rediscall.Do(ctx, s.bound, func(ctx context.Context) (reply, error) {
		res, hist, err := s.runWithHistoryOnce(ctx, script, keys, args, list, limit)
		return reply{res, hist}, err
	})
	return r.res, r.hist, err
}

func (s *RedisStore) runWithHistoryOnce(ctx context.Context, script *redis.Script, keys []string, args []any, list string, limit int) ([]any, []string, error) {
	start, ok := historyStart(limit)
	if !ok {
		res, err := script.Run(ctx, s.rdb, keys, args...).Slice()
		return res, nil, err
	}
	var (
		run  *redis.Cmd
		hist *redis.StringSliceCmd
	)
	tx := func(eval func(p redis.Pipeliner) *redis.Cmd) error {
		_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			run = eval(p)
			hist = p.LRange(ctx, list, start, -1)
			return nil
		})
		return err
	}
	err := tx(func(p redis.Pipeliner) *redis.Cmd { return script.EvalSha(ctx, p, keys, args...) })
	if err != nil && run != nil && redis.HasErrorPrefix(run.Err(), "NOSCRIPT") {
		err = tx(func(p redis.Pipeliner) *redis.Cmd { return script.Eval(ctx, p, keys, args...) })
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, err
	}
	res, err := run.Slice()
	if err != nil {
		return nil, nil, err
	}
	return res, hist.Val(), nil
}

func str(v any) string   { s, _ := v.(string); return s }
func num(v any) int64    { n, _ := v.(int64); return n }
func millis(v any) int64 { n, _ := strconv.ParseInt(str(v), 10, 64); return n }

// wrap describes a failed Redis call: a *ReplicationError as it is, ctx's
// error when ctx ended, an error
// wrapping ErrUnavailable when Redis did not answer (see isUnavailable),
// else the error Redis answered (a script's error reply).
func wrap(ctx context.Context, op string, err error) error {
	var re *ReplicationError
	switch {
	case errors.As(err, &re):
		return err
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return fmt.Errorf("threads: %s: %w", op, err)
	case isUnavailable(err):
		return fmt.Errorf("threads: %s: %w: %w", op, ErrUnavailable, err)
	}
	return fmt.Errorf("threads: %s: %w", op, err)
}

// unavailableReplies are the error replies of a server that cannot serve
// now but may soon: loading its data, a replica, a master without its
// replicas, a cluster without quorum, a resharding, a busy script, a slot
// that moved (the node of a write sent with WaitReplicas on a Cluster is
// looked up by the client, which reloads its map when told it moved).
var unavailableReplies = []string{"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY", "MOVED", "ASK"}

// isUnavailable reports whether err means Redis did not answer the call:
// any error that is not a reply of the server, or a reply saying it cannot
// serve now.
func isUnavailable(err error) bool {
	var reply redis.Error
	if !errors.As(err, &reply) {
		return true
	}
	for _, p := range unavailableReplies {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// GetOrCreate implements Store: one round trip.
func (s *RedisStore) GetOrCreate(ctx context.Context, userID, courseID string) (Thread, error) {
	sess, err := s.open(ctx, OpenRequest{UserID: userID, CourseID: courseID, HistoryLimit: -1}, "get or create")
	return sess.Thread, err
}

// Open implements Store: one round trip.
func (s *RedisStore) Open(ctx context.Context, req OpenRequest) (Session, error) {
	return s.open(ctx, req, "open")
}

func (s *RedisStore) open(ctx context.Context, req OpenRequest, op string) (Session, error) {
	if err := checkID("UserID", req.UserID); err != nil {
		return Session{}, err
	}
	if err := checkID("CourseID", req.CourseID); err != nil {
		return Session{}, err
	}
	if err := checkVideo(req.VideoURL, false); err != nil {
		return Session{}, err
	}
	k := s.keys(digest('u', req.UserID), digest('c', req.CourseID))
	now := s.cfg.Now().UnixMilli()
	res, raw, err := s.runWithHistory(ctx, openScript, k.all(),
		[]any{req.UserID, req.CourseID, k.uh + k.ch, randomPart(), now, s.ttlArg(), req.VideoURL, s.refresh},
		k.msgs, req.HistoryLimit)
	if err != nil {
		return Session{}, wrap(ctx, op, err)
	}
	if len(res) < 6 {
		return Session{}, fmt.Errorf("threads: %s: short reply", op)
	}
	hist, err := decodeMessages(raw)
	if err != nil {
		return Session{}, err
	}
	return Session{
		Thread: Thread{
			ID:        k.uh + k.ch + "." + str(res[0]),
			UserID:    req.UserID,
			CourseID:  req.CourseID,
			VideoURL:  str(res[4]),
			CreatedAt: fromMillis(millis(res[5])),
			UpdatedAt: fromMillis(now),
		},
		Created:       num(res[1]) == 1,
		VideoSwitched: num(res[2]) == 1,
		PreviousVideo: str(res[3]),
		History:       hist,
	}, nil
}

// read runs read.lua for Get and History.
func (s *RedisStore) read(ctx context.Context, op, id string, limit int) (Thread, []Message, error) {
	if err := checkID("ThreadID", id); err != nil {
		return Thread{}, nil, err
	}
	k, rnd, ok := s.parseID(id)
	if !ok {
		return Thread{}, nil, ErrNotFound
	}
	res, raw, err := s.runWithHistory(ctx, readScript, []string{k.thread}, []any{rnd}, k.msgs, limit)
	if errors.Is(err, redis.Nil) {
		return Thread{}, nil, ErrNotFound
	}
	if err != nil {
		return Thread{}, nil, wrap(ctx, op, err)
	}
	if len(res) < 5 {
		return Thread{}, nil, fmt.Errorf("threads: %s: short reply", op)
	}
	hist, err := decodeMessages(raw)
	if err != nil {
		return Thread{}, nil, err
	}
	return Thread{
		ID:        id,
		UserID:    str(res[0]),
		CourseID:  str(res[1]),
		VideoURL:  str(res[2]),
		CreatedAt: fromMillis(millis(res[3])),
		UpdatedAt: fromMillis(millis(res[4])),
	}, hist, nil
}

// Find implements Finder: one round trip, an HMGET of the pair's thread
// hash, which touches no other key and writes nothing (no TTL, no activity
// entry, no index). A hash that holds another pair's raw IDs (the digests
// of the two pairs collided, see the package documentation) is not the
// pair's thread: Find returns ErrNotFound for it, never the other pair's
// thread.
func (s *RedisStore) Find(ctx context.Context, userID, courseID string) (Thread, error) {
	if err := checkID("UserID", userID); err != nil {
		return Thread{}, err
	}
	if err := checkID("CourseID", courseID); err != nil {
		return Thread{}, err
	}
	k := s.keys(digest('u', userID), digest('c', courseID))
	res, err := rediscall.Do(ctx, s.bound, func(ctx context.Context) ([]any, error) {
		return s.rdb.HMGet(ctx, k.thread, "id", "u", "c", "v", "ca", "ua").Result()
	})
	if err != nil {
		return Thread{}, wrap(ctx, "find", err)
	}
	if len(res) < 6 {
		return Thread{}, errors.New("threads: find: short reply")
	}
	rnd := str(res[0])
	if rnd == "" || str(res[1]) != userID || str(res[2]) != courseID {
		return Thread{}, ErrNotFound
	}
	return Thread{
		ID:        k.uh + k.ch + "." + rnd,
		UserID:    userID,
		CourseID:  courseID,
		VideoURL:  str(res[3]),
		CreatedAt: fromMillis(millis(res[4])),
		UpdatedAt: fromMillis(millis(res[5])),
	}, nil
}

// Get implements Store: one round trip.
func (s *RedisStore) Get(ctx context.Context, threadID string) (Thread, error) {
	t, _, err := s.read(ctx, "get", threadID, -1)
	return t, err
}

// History implements Store: one round trip.
func (s *RedisStore) History(ctx context.Context, threadID string, limit int) ([]Message, error) {
	_, h, err := s.read(ctx, "history", threadID, limit)
	if err == nil && h == nil {
		h = []Message{}
	}
	return h, err
}

// write runs append.lua for Append and TrackVideo and returns whether the
// video switched and how many messages were stored.
func (s *RedisStore) write(ctx context.Context, op, id, video string, msgs []Message) (bool, int, error) {
	if err := checkID("ThreadID", id); err != nil {
		return false, 0, err
	}
	k, rnd, ok := s.parseID(id)
	if !ok {
		return false, 0, ErrNotFound
	}
	now := s.cfg.Now().UnixMilli()
	keep := ""
	if s.cfg.MaxMessages > 0 {
		keep = strconv.Itoa(s.cfg.MaxMessages)
		if len(msgs) > s.cfg.MaxMessages {
			msgs = msgs[len(msgs)-s.cfg.MaxMessages:]
		}
	}
	toks := ""
	if slices.ContainsFunc(msgs, func(m Message) bool { return m.ID != "" }) {
		msgs = dedupeIDs(msgs)
		var b strings.Builder
		b.Grow(idTokenLen * len(msgs))
		for _, m := range msgs {
			if m.ID == "" {
				b.WriteString(noIDToken)
			} else {
				b.WriteString(idToken(m.ID))
			}
		}
		toks = b.String()
	}
	args := make([]any, 0, 8+len(msgs))
	args = append(args, rnd, k.uh+k.ch, now, s.ttlArg(), keep, video, s.refresh, toks)
	for _, m := range msgs {
		args = append(args, encodeMessage(m, now))
	}
	v, err := s.runWrite(ctx, op, appendScript, k.all(), args)
	if errors.Is(err, redis.Nil) {
		return false, 0, ErrNotFound
	}
	res, _ := v.([]any)
	switched, stored := len(res) > 0 && num(res[0]) == 1, 0
	if len(res) > 1 {
		stored = int(num(res[1]))
	}
	if err != nil {
		return switched, stored, wrap(ctx, op, err)
	}
	return switched, stored, nil
}

// dedupeIDs returns msgs without the messages whose ID an earlier message
// of msgs holds (a copy when there are any).
func dedupeIDs(msgs []Message) []Message {
	seen := make(map[string]bool, len(msgs))
	var out []Message
	for i, m := range msgs {
		if m.ID != "" && seen[m.ID] {
			if out == nil {
				out = append(make([]Message, 0, len(msgs)), msgs[:i]...)
			}
			continue
		}
		if m.ID != "" {
			seen[m.ID] = true
		}
		if out != nil {
			out = append(out, m)
		}
	}
	if out == nil {
		return msgs
	}
	return out
}

// runWrite runs script, and with Config.WaitReplicas a WAIT right after it
// in the same pipeline, on the connection to the master of keys[0]. It
// returns the script's reply (redis.Nil for a nil one), and a
// *ReplicationError with it when fewer replicas than WaitReplicas
// confirmed.
func (s *RedisStore) runWrite(ctx context.Context, op string, script *redis.Script, keys []string, args []any) (any, error) {
	return rediscall.Do(ctx, s.bound, func(ctx context.Context) (any, error) {
		if s.cfg.WaitReplicas <= 0 {
			return script.Run(ctx, s.rdb, keys, args...).Result()
		}
		c, err := s.master(ctx, keys[0])
		if err != nil {
			return nil, err
		}
		var run, wait *redis.Cmd
		pipe := func(eval func(p redis.Pipeliner) *redis.Cmd) {
			_, _ = c.Pipelined(ctx, func(p redis.Pipeliner) error {
				run = eval(p)
				wait = p.Do(ctx, s.waitArgs()...)
				return nil
			})
		}
		pipe(func(p redis.Pipeliner) *redis.Cmd { return script.EvalSha(ctx, p, keys, args...) })
		if redis.HasErrorPrefix(run.Err(), "NOSCRIPT") {
			pipe(func(p redis.Pipeliner) *redis.Cmd { return script.Eval(ctx, p, keys, args...) })
		}
		v, err := run.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			if redis.HasErrorPrefix(err, "MOVED") || redis.HasErrorPrefix(err, "ASK") {
				s.reloadSlots(ctx)
			}
			return v, err
		}
		if werr := wait.Err(); werr != nil {
			return v, werr
		}
		if err != nil {
			return v, err // redis.Nil: the thread does not exist
		}
		if got, _ := wait.Int(); got < s.cfg.WaitReplicas {
			return v, &ReplicationError{Op: op, Want: s.cfg.WaitReplicas, Got: got}
		}
		return v, nil
	})
}

// master returns the client of the server that owns key: the client itself
// for one server or Sentinel, the node of the key's slot on a Cluster, the
// shard of the key on a Ring.
func (s *RedisStore) master(ctx context.Context, key string) (serverClient, error) {
	switch c := s.rdb.(type) {
	case *redis.ClusterClient:
		return c.MasterForKey(ctx, key)
	case *redis.Ring:
		return c.GetShardClientForKey(key)
	}
	return s.rdb, nil
}

// serverClient is what runWrite needs of the client of one server.
type serverClient interface {
	Pipelined(ctx context.Context, fn func(redis.Pipeliner) error) ([]redis.Cmder, error)
	Do(ctx context.Context, args ...any) *redis.Cmd
}

// waitArgs returns the WAIT command of Config.WaitReplicas and
// Config.WaitTimeout (whole milliseconds, at least 1: WAIT's 0 would wait
// for ever).
func (s *RedisStore) waitArgs() []any {
	return []any{"wait", s.cfg.WaitReplicas, max(s.cfg.WaitTimeout.Milliseconds(), 1)}
}

// reloadSlots makes a Cluster client reload its slot map after a node
// answered that a slot moved.
func (s *RedisStore) reloadSlots(ctx context.Context) {
	if c, ok := s.rdb.(*redis.ClusterClient); ok {
		c.ReloadState(ctx)
	}
}

// waitReplicas sends a WAIT to the master of key and returns a
// *ReplicationError when fewer than WaitReplicas replicas confirm.
func (s *RedisStore) waitReplicas(ctx context.Context, op, key string) error {
	got, err := rediscall.Do(ctx, s.bound, func(ctx context.Context) (int64, error) {
		c, err := s.master(ctx, key)
		if err != nil {
			return 0, err
		}
		return c.Do(ctx, s.waitArgs()...).Int64()
	})
	if err != nil {
		return wrap(ctx, op, err)
	}
	if int(got) < s.cfg.WaitReplicas {
		return &ReplicationError{Op: op, Want: s.cfg.WaitReplicas, Got: int(got)}
	}
	return nil
}

// TrackVideo implements Store: one round trip.
func (s *RedisStore) TrackVideo(ctx context.Context, threadID, videoURL string) (bool, error) {
	if err := checkVideo(videoURL, true); err != nil {
		return false, err
	}
	switched, _, err := s.write(ctx, "track video", threadID, videoURL, nil)
	return switched, err
}

// Append implements Store: one round trip, which also trims the history
// to MaxMessages and slides the TTL of all the thread's keys.
func (s *RedisStore) Append(ctx context.Context, threadID string, msgs ...Message) error {
	if err := checkMessages(msgs); err != nil {
		return err
	}
	_, _, err := s.write(ctx, "append", threadID, "", msgs)
	return err
}

// Delete implements Store: one round trip.
func (s *RedisStore) Delete(ctx context.Context, threadID string) error {
	if err := checkID("ThreadID", threadID); err != nil {
		return err
	}
	k, rnd, ok := s.parseID(threadID)
	if !ok {
		return ErrNotFound
	}
	v, err := s.runWrite(ctx, "delete", deleteScript, k.all(), []any{rnd, k.ch, k.uh + k.ch})
	if n, _ := v.(int64); n == 0 && (err == nil || errors.Is(err, ErrNotReplicated)) {
		return ErrNotFound
	}
	if err != nil {
		return wrap(ctx, "delete", err)
	}
	return nil
}

// forgetPasses bounds the read-then-delete rounds of ForgetUser, which
// repeats while threads of the user are being created concurrently.
const forgetPasses = 8

// forgetBatch is the number of threads one forget.lua run deletes.
const forgetBatch = 64

// ForgetUser implements Store. It reads the user's set of threads, then
// deletes them with one script run per 64 threads, and repeats until the
// set holds no thread of the user (at most 8 rounds): two round trips for
// a user with at most 64 threads. All of a user's keys live in one slot.
func (s *RedisStore) ForgetUser(ctx context.Context, userID string) (int, error) {
	if err := checkID("UserID", userID); err != nil {
		return 0, err
	}
	uh := digest('u', userID)
	base := s.keys(uh, "")
	foreign := map[string]bool{}
	total := 0
	for range forgetPasses {
		members, err := rediscall.Do(ctx, s.bound, func(ctx context.Context) ([]string, error) {
			return s.rdb.SMembers(ctx, base.user).Result()
		})
		if err != nil {
			return total, wrap(ctx, "forget user", err)
		}
		var todo []string
		for _, ch := range members {
			if !foreign[ch] && len(ch) == digestLen && isB64URL(ch) {
				todo = append(todo, ch)
			}
		}
		if len(todo) == 0 {
			if total > 0 && s.cfg.WaitReplicas > 0 {
				return total, s.waitReplicas(ctx, "forget user", base.user)
			}
			return total, nil
		}
		for len(todo) > 0 {
			batch := todo[:min(len(todo), forgetBatch)]
			todo = todo[len(batch):]
			keys := make([]string, 0, 2+2*len(batch))
			keys = append(keys, base.user, base.active)
			args := make([]any, 0, 2+len(batch))
			args = append(args, userID, uh)
			for _, ch := range batch {
				k := s.keys(uh, ch)
				keys = append(keys, k.thread, k.msgs)
				args = append(args, ch)
			}
			res, err := rediscall.Do(ctx, s.bound, func(ctx context.Context) ([]any, error) {
				return forgetScript.Run(ctx, s.rdb, keys, args...).Slice()
			})
			if err != nil {
				return total, wrap(ctx, "forget user", err)
			}
			if len(res) > 0 {
				total += int(num(res[0]))
				for _, f := range res[1:] {
					foreign[str(f)] = true
				}
			}
		}
	}
	return total, errors.New("threads: forget user: threads still being created after 8 rounds")
}

// Active implements Store: one pipeline of one ZCOUNT per bucket (1024),
// which go-redis sends to each Cluster master in parallel.
func (s *RedisStore) Active(ctx context.Context, within time.Duration) (int, error) {
	if err := checkWithin(within); err != nil {
		return 0, err
	}
	now := s.cfg.Now().UnixMilli()
	from := strconv.FormatInt(activeCutoff(&s.cfg, now, within), 10)
	n, err := rediscall.Do(ctx, s.bound, func(ctx context.Context) (int, error) {
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.IntCmd, Buckets)
		for b := range cmds {
			cmds[b] = pipe.ZCount(ctx, s.activeKey(b), from, "+inf")
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return 0, err
		}
		n := 0
		for _, c := range cmds {
			n += int(c.Val())
		}
		return n, nil
	})
	if err != nil {
		return 0, wrap(ctx, "active", err)
	}
	return n, nil
}
