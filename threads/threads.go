package threads

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/chatscale/chatscale"
)

// Limits on the input a Store accepts. Longer values are rejected with a
// *chatscale.InputError.
const (
	// MaxIDBytes bounds user, course and thread IDs, in bytes.
	MaxIDBytes = 512
	// MaxVideoURLBytes bounds a video URL, in bytes.
	MaxVideoURLBytes = 2048
	// MaxContentBytes bounds the content of one message, in bytes.
	MaxContentBytes = 1 << 20
	// MaxMessageIDBytes bounds Message.ID, in bytes.
	MaxMessageIDBytes = 128
)

// Defaults used when a Config field is zero.
const (
	// DefaultTTL is the default Config.TTL.
	DefaultTTL = 7 * 24 * time.Hour
	// DefaultMaxMessages is the default Config.MaxMessages.
	DefaultMaxMessages = 50
	// DefaultMaxThreads is the default Config.MaxThreads. It is sized for
	// the design target of a few thousand concurrent learners with a thread
	// per course, plus the threads idle since: see Config.MaxThreads for
	// what it costs.
	DefaultMaxThreads = 50_000
	// DefaultShards is the default Config.Shards.
	DefaultShards = 32
	// DefaultSweepInterval is the default Config.SweepInterval.
	DefaultSweepInterval = time.Minute
	// DefaultWaitTimeout is the default Config.WaitTimeout.
	DefaultWaitTimeout = 100 * time.Millisecond
)

// ErrNotFound is returned for a thread that does not exist, was deleted or
// has expired.
var ErrNotFound = errors.New("threads: thread not found")

// ErrUnavailable is wrapped by the errors of a RedisStore call that Redis
// did not answer: a connection, timeout or pool error, or a reply saying
// the server cannot serve now (LOADING, READONLY, MASTERDOWN, CLUSTERDOWN,
// TRYAGAIN, BUSY). The call may succeed later; whether a write that
// failed this way was applied is unknown. A ctx that ended is returned as
// ctx's error instead.
var ErrUnavailable = errors.New("threads: store unavailable")

// ErrNotReplicated is matched (errors.Is) by the *ReplicationError a
// RedisStore write returns when Config.WaitReplicas is set and fewer
// replicas confirmed the write in time.
var ErrNotReplicated = errors.New("threads: write not confirmed by enough replicas")

// ReplicationError is returned by a RedisStore write (Append, TrackVideo,
// Delete, ForgetUser) when Config.WaitReplicas is positive and fewer than
// Want replicas confirmed it within Config.WaitTimeout. The write was
// applied on the master: it is there for every later read as long as that
// master serves, and it may or may not survive a failover (it does when
// the replica that gets promoted is one of the Got that confirmed it, or
// received it since). A caller that must not lose it retries the call:
// with Message.ID set, a retried Append stores each message once.
type ReplicationError struct {
	// Op is the store method: "append", "track video", "delete", "forget user".
	Op string
	// Want is Config.WaitReplicas; Got is how many replicas confirmed.
	Want, Got int
}

func (e *ReplicationError) Error() string {
	return "threads: " + e.Op + ": applied on the master but confirmed by " + strconv.Itoa(e.Got) +
		" of " + strconv.Itoa(e.Want) + " replicas in time: it may or may not survive a failover"
}

// Is reports whether target is ErrNotReplicated.
func (e *ReplicationError) Is(target error) bool { return target == ErrNotReplicated }

// ErrClosed is returned by a MemoryStore after Close.
var ErrClosed = errors.New("threads: store closed")

// invalid returns the *chatscale.InputError for a bad argument.
func invalid(field, reason string) error {
	return &chatscale.InputError{Package: "threads", Field: field, Reason: reason}
}

// Role says who wrote a message.
type Role string

// The roles a Message may have. Any other value is rejected with a
// *chatscale.InputError.
const (
	RoleSystem    Role = "system"
	RoleUser      Role = "user"
	RoleAssistant Role = "assistant"
)

// Valid reports whether r is one of RoleSystem, RoleUser and RoleAssistant.
func (r Role) Valid() bool {
	return r == RoleSystem || r == RoleUser || r == RoleAssistant
}

// Message is one entry of a thread's history.
type Message struct {
	// Role says who wrote the message.
	Role Role
	// Content is the text, valid UTF-8 of at most MaxContentBytes bytes.
	// It may be empty.
	Content string
	// Time is when the message was written. A zero Time given to Append is
	// replaced by the store's clock. Stores keep millisecond precision and
	// return times in UTC.
	Time time.Time
	// ID, optional, makes Append idempotent: a message whose ID is already
	// held by one of the thread's kept messages (the newest
	// Config.MaxMessages), or by an earlier message of the same Append, is
	// not stored again, so an Append retried after an error or a timeout
	// never stores a turn twice. Empty means no ID: the message is always
	// stored. At most MaxMessageIDBytes bytes of valid UTF-8; unique within
	// a thread (the turn pipeline derives one per turn and role). History
	// and Open return it.
	ID string
}

// Thread is the record of one conversation: one per (user, course) pair.
type Thread struct {
	// ID identifies the thread: URL-safe text holding 128 random bits,
	// possibly preceded by routing information of the store that made it.
	ID string
	// UserID and CourseID are the pair the thread belongs to.
	UserID   string
	CourseID string
	// VideoURL is the video the learner watched most recently; empty until
	// one is recorded.
	VideoURL string
	// CreatedAt is when the thread was created; UpdatedAt is its last write
	// (GetOrCreate, Open, TrackVideo or Append). Both have millisecond
	// precision, in UTC.
	CreatedAt time.Time
	UpdatedAt time.Time
}

// OpenRequest is the argument of Store.Open.
type OpenRequest struct {
	// UserID and CourseID select the thread; required.
	UserID   string
	CourseID string
	// VideoURL, when not empty, is recorded as the current video, as by
	// TrackVideo. Empty leaves the recorded video unchanged.
	VideoURL string
	// HistoryLimit is how many of the newest messages Open returns: n > 0
	// returns at most n, zero returns every kept message, negative none.
	HistoryLimit int
}

// Session is what Store.Open returns: everything a turn needs before it
// calls the model.
type Session struct {
	// Thread is the thread after the call, with the current video.
	Thread Thread
	// Created reports that the call created the thread.
	Created bool
	// VideoSwitched reports that the request named a video different from
	// the one recorded before (the first video is not a switch).
	VideoSwitched bool
	// PreviousVideo is the video recorded before the call when
	// VideoSwitched is true, else empty.
	PreviousVideo string
	// History holds the newest messages, oldest first, as limited by
	// OpenRequest.HistoryLimit.
	History []Message
}

// Store keeps one thread per (user, course) pair with its current video and
// its recent messages.
//
// Every method validates its input first: empty IDs, IDs longer than
// MaxIDBytes, invalid UTF-8 and unknown roles give a *chatscale.InputError
// (errors.Is(err, chatscale.ErrInvalidInput)). Methods taking a thread ID return
// ErrNotFound for a thread that does not exist, was deleted or has expired.
// Writes (GetOrCreate, Open, TrackVideo, Append) slide the thread's TTL and
// count as activity; reads (Get, History, and Finder's Find) do not.
// Implementations are safe for concurrent use. threadstest.Run checks an
// implementation against this contract.
type Store interface {
	// GetOrCreate returns the thread of (userID, courseID), creating it when
	// there is none. Concurrent calls for one pair, from any number of
	// processes sharing the store, all return the same thread.
	GetOrCreate(ctx context.Context, userID, courseID string) (Thread, error)
	// Get returns the thread with the given ID.
	Get(ctx context.Context, threadID string) (Thread, error)
	// Open is the turn's hot path: GetOrCreate, then TrackVideo when
	// req.VideoURL is not empty, then History, done at once (one round trip
	// on Redis).
	Open(ctx context.Context, req OpenRequest) (Session, error)
	// TrackVideo records videoURL as the thread's current video and reports
	// whether the learner switched from a different one. Recording the first
	// video, or the same video again, is not a switch.
	TrackVideo(ctx context.Context, threadID, videoURL string) (switched bool, err error)
	// Append adds msgs to the end of the history and keeps only the newest
	// Config.MaxMessages. Messages with a zero Time get the store's clock.
	// A message whose ID (Message.ID, when not empty) is already held by a
	// kept message of the thread, or by an earlier message of msgs, is
	// skipped, so retrying an Append stores each message once; a call
	// whose messages were all skipped still succeeds and counts as a write.
	Append(ctx context.Context, threadID string, msgs ...Message) error
	// History returns the newest messages, oldest first: limit > 0 returns
	// at most limit, zero every kept message, negative none.
	History(ctx context.Context, threadID string, limit int) ([]Message, error)
	// Delete removes the thread and its history.
	Delete(ctx context.Context, threadID string) error
	// ForgetUser deletes every thread of userID (right to erasure) and
	// returns how many it deleted. An unknown user is not an error.
	ForgetUser(ctx context.Context, userID string) (int, error)
	// Active counts the threads written to within the last `within` (which
	// must be positive) and not expired. It is cheap enough to feed a gauge
	// every few seconds.
	Active(ctx context.Context, within time.Duration) (int, error)
}

// Finder is implemented by stores that can look up the thread of a (user,
// course) pair without creating it. It is separate from Store so that
// stores written against Store alone keep compiling; MemoryStore and
// RedisStore implement it. A caller holding a Store asserts it:
//
//	if f, ok := st.(threads.Finder); ok {
//		th, err := f.Find(ctx, userID, courseID)
//		...
//	}
//
// threadstest.Run checks an implementation against this contract when the
// store under test implements Finder.
type Finder interface {
	// Find returns the thread of (userID, courseID), or ErrNotFound when
	// there is none (never created, deleted, forgotten or expired). It
	// writes nothing: no TTL slide, no activity. Its input is validated as
	// GetOrCreate's: bad IDs give a *chatscale.InputError.
	Find(ctx context.Context, userID, courseID string) (Thread, error)
}

// Config tunes a store. The zero value gives the defaults. It is passed by
// value; constructors work on a copy.
type Config struct {
	// TTL is how long a thread lives after its last write; every write
	// slides it. Zero means DefaultTTL (7 days); negative means threads
	// never expire. Precision is one millisecond for the memory store; the
	// Redis store slides it at most once per TTL/64 (at most 30 s), so its
	// threads expire up to that much early (see the package documentation).
	TTL time.Duration
	// MaxMessages is how many messages a thread keeps; Append drops the
	// oldest beyond it. Zero means DefaultMaxMessages (50); negative keeps
	// every message.
	MaxMessages int
	// Prefix starts every Redis key, followed by "threads:". Empty means
	// chatscale.DefaultPrefix ("chatscale:"). It must not contain '{' or
	// '}'. The memory store ignores it.
	Prefix string
	// Now returns the current time. Nil means time.Now. The Redis store
	// passes it to its scripts; key expiry itself runs on the server's clock.
	Now func() time.Time

	// MaxThreads bounds the memory store: creating a thread beyond it
	// evicts the least recently written one. Zero means DefaultMaxThreads
	// (50,000); negative means unbounded. The Redis store ignores it.
	//
	// An idle thread takes about 280 bytes of heap; each kept message adds
	// its content and ID plus about 62 bytes. 50,000 threads thus hold about 14 MB
	// when idle, about 300 MB at 10 messages of 500 bytes each, and at most
	// about 1.4 GB when every thread holds 50 such messages (the default
	// MaxMessages). Lower MaxThreads or MaxMessages on smaller machines.
	MaxThreads int
	// Shards is the number of independently locked parts of the memory
	// store. Zero means DefaultShards (32); negative is an error
	// (NewMemory returns a *chatscale.ConfigError). The Redis store ignores it.
	Shards int
	// SweepInterval is how often the memory store's sweeper removes
	// expired threads. Zero means DefaultSweepInterval (1 minute); negative
	// disables the sweeper (expired threads are still removed when touched
	// or when room is needed). The Redis store ignores it.
	SweepInterval time.Duration

	// RedisTimeout bounds each Redis call of the Redis store: a call Redis has not answered by then returns an
	// error wrapping ErrUnavailable, even when the go-redis client's own
	// timeouts are longer and its ContextTimeoutEnabled is off. A ctx that
	// ends first is returned as ctx's error. Zero means 1 s; negative means
	// no bound of the store's own (the ctx and the client's timeouts
	// decide). The memory store ignores it.
	RedisTimeout time.Duration
	// WaitReplicas, when positive, makes each write of the Redis store that
	// carries data (Append, TrackVideo, Delete, ForgetUser) wait until that
	// many replicas of the master confirm it (Redis' WAIT, sent right after
	// the write on the same connection, in the same round trip), and
	// return a *ReplicationError (ErrNotReplicated) when fewer do within
	// WaitTimeout. Open and GetOrCreate do not wait. Zero or negative: no
	// waiting; Redis replicates asynchronously and a failover can lose the
	// writes acknowledged just before it (see the package documentation).
	// The memory store ignores it.
	WaitReplicas int
	// WaitTimeout bounds the wait for WaitReplicas (Redis' WAIT timeout,
	// in whole milliseconds, at least 1): zero means DefaultWaitTimeout
	// (100 ms). It must be shorter than a positive RedisTimeout, whose
	// bound would otherwise end the call first; negative, or not shorter
	// than RedisTimeout, is a *chatscale.ConfigError. The memory store
	// ignores it.
	WaitTimeout time.Duration
}

// withDefaults returns c with zero fields replaced by their defaults. The
// constructors check the values a backend cannot use.
func (c Config) withDefaults() Config {
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	} else if c.TTL > 0 && c.TTL < time.Millisecond {
		c.TTL = time.Millisecond
	}
	if c.MaxMessages == 0 {
		c.MaxMessages = DefaultMaxMessages
	}
	if c.Prefix == "" {
		c.Prefix = chatscale.DefaultPrefix
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.MaxThreads == 0 {
		c.MaxThreads = DefaultMaxThreads
	}
	if c.Shards == 0 {
		c.Shards = DefaultShards
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = DefaultSweepInterval
	}
	if c.WaitTimeout == 0 {
		c.WaitTimeout = DefaultWaitTimeout
	}
	return c
}

// expires reports whether the config gives threads a TTL.
func (c *Config) expires() bool { return c.TTL > 0 }

func checkID(field, v string) error {
	switch {
	case v == "":
		return invalid(field, "empty")
	case len(v) > MaxIDBytes:
		return invalid(field, "longer than "+strconv.Itoa(MaxIDBytes)+" bytes")
	case !utf8.ValidString(v):
		return invalid(field, "not valid UTF-8")
	}
	return nil
}

func checkVideo(v string, required bool) error {
	switch {
	case v == "" && required:
		return invalid("VideoURL", "empty")
	case len(v) > MaxVideoURLBytes:
		return invalid("VideoURL", "longer than "+strconv.Itoa(MaxVideoURLBytes)+" bytes")
	case !utf8.ValidString(v):
		return invalid("VideoURL", "not valid UTF-8")
	}
	return nil
}

func checkMessages(msgs []Message) error {
	for i := range msgs {
		m := &msgs[i]
		field := "Messages[" + strconv.Itoa(i) + "]"
		switch {
		case !m.Role.Valid():
			return invalid(field+".Role", "unknown role "+strconv.Quote(string(m.Role)))
		case len(m.Content) > MaxContentBytes:
			return invalid(field+".Content", "longer than "+strconv.Itoa(MaxContentBytes)+" bytes")
		case !utf8.ValidString(m.Content):
			return invalid(field+".Content", "not valid UTF-8")
		case len(m.ID) > MaxMessageIDBytes:
			return invalid(field+".ID", "longer than "+strconv.Itoa(MaxMessageIDBytes)+" bytes")
		case !utf8.ValidString(m.ID):
			return invalid(field+".ID", "not valid UTF-8")
		}
	}
	return nil
}

func checkWithin(within time.Duration) error {
	if within <= 0 {
		return invalid("Within", "not positive")
	}
	return nil
}

// randomPart returns 128 random bits as 22 base64url characters.
func randomPart() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

const randomPartLen = 22

// isB64URL reports whether s holds only base64url characters.
func isB64URL(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func fromMillis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// roleCode and codeRole give each role a one-byte code for compact storage.
func roleCode(r Role) byte {
	switch r {
	case RoleSystem:
		return 's'
	case RoleUser:
		return 'u'
	default:
		return 'a'
	}
}

func codeRole(c byte) (Role, bool) {
	switch c {
	case 's':
		return RoleSystem, true
	case 'u':
		return RoleUser, true
	case 'a':
		return RoleAssistant, true
	}
	return "", false
}

// activeCutoff returns the oldest last-write time, in unix ms, that counts
// as active within the window and not expired.
func activeCutoff(cfg *Config, now int64, within time.Duration) int64 {
	cut := now - within.Milliseconds()
	if cfg.expires() {
		if c := now - cfg.TTL.Milliseconds() + 1; c > cut {
			cut = c
		}
	}
	return cut
}
