package threads

import (
	"context"
	"hash/maphash"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatscale/chatscale"
)

// MemoryStore is a Store held in process memory: for tests, development and
// single-instance deployments. It is split into Config.Shards independently
// locked shards (a user's threads all live in one shard), holds at most
// Config.MaxThreads threads and evicts the least recently written one in
// the whole store to make room (it compares the oldest thread of every
// shard; among threads last written in the same millisecond, or written
// while the eviction runs, it may pick a slightly more recent one).
// Expired threads are removed when touched, when room is needed and by a
// sweeper goroutine that the first write starts and Close stops.
//
// The zero value is ready to use with the default Config. A MemoryStore is
// safe for concurrent use and must not be copied after first use.
type MemoryStore struct {
	initOnce sync.Once
	cfg      Config
	seed     maphash.Seed
	shards   []memShard

	closed   atomic.Bool
	sweeping atomic.Bool
	life     sync.Mutex // guards stop, done and the sweeper's start
	stop     chan struct{}
	done     chan struct{}

	count   atomic.Int64 // threads held, all shards
	evicted atomic.Uint64
	expired atomic.Uint64

	afterSweep func() // test hook, called after each sweep
}

var (
	_ Store  = (*MemoryStore)(nil)
	_ Finder = (*MemoryStore)(nil)
)

// MemoryStats is a snapshot of a MemoryStore's counters.
type MemoryStats struct {
	// Threads is the number of threads held, including expired ones not
	// removed yet.
	Threads int
	// Evicted counts threads removed to respect MaxThreads.
	Evicted uint64
	// Expired counts expired threads removed.
	Expired uint64
}

type memShard struct {
	mu     sync.Mutex
	byID   map[string]*memThread
	byPair map[pairKey]*memThread
	// head is the most recently written thread, tail the least.
	head, tail *memThread
	_          [24]byte // pads the shard to a 64-byte cache line
}

type pairKey struct{ user, course string }

type memThread struct {
	id, user, course, video string
	created, updated        int64 // unix ms
	msgs                    []memMsg
	prev, next              *memThread
}

type memMsg struct {
	content, id string
	at          int64 // unix ms
	role        byte
}

// NewMemory returns a MemoryStore configured by cfg (see Config for the
// defaults), or a *chatscale.ConfigError for a negative Shards. It starts no
// goroutine: the sweeper starts with the first write when threads expire
// and SweepInterval is positive; call Close to stop it.
func NewMemory(cfg Config) (*MemoryStore, error) {
	cfg = cfg.withDefaults()
	if cfg.Shards < 0 {
		return nil, &chatscale.ConfigError{Package: "threads", Field: "Config.Shards", Reason: "negative"}
	}
	s := &MemoryStore{}
	s.initOnce.Do(func() { s.setup(cfg) })
	return s, nil
}

func (s *MemoryStore) init() {
	s.initOnce.Do(func() {
		s.setup(Config{}.withDefaults())
	})
}

func (s *MemoryStore) setup(cfg Config) {
	s.cfg = cfg
	s.seed = maphash.MakeSeed()
	s.shards = make([]memShard, cfg.Shards)
	for i := range s.shards {
		s.shards[i].byID = make(map[string]*memThread)
		s.shards[i].byPair = make(map[pairKey]*memThread)
	}
}

// Close stops the sweeper and waits for it to return. Later calls return
// ErrClosed from every method but Stats; Close itself may be called any
// number of times and always returns nil.
func (s *MemoryStore) Close() error {
	s.life.Lock()
	if s.closed.Load() {
		s.life.Unlock()
		return nil
	}
	s.closed.Store(true)
	stop, done := s.stop, s.done
	s.life.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
	return nil
}

// Stats returns a snapshot of the store's counters.
func (s *MemoryStore) Stats() MemoryStats {
	s.init()
	return MemoryStats{Threads: int(s.count.Load()), Evicted: s.evicted.Load(), Expired: s.expired.Load()}
}

// begin checks ctx and the closed flag and initialises a zero store.
func (s *MemoryStore) begin(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return ErrClosed
	}
	s.init()
	return nil
}

// beginWrite is begin plus the lazy start of the sweeper.
func (s *MemoryStore) beginWrite(ctx context.Context) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	if !s.sweeping.Load() && s.cfg.expires() && s.cfg.SweepInterval > 0 {
		s.startSweeper()
	}
	return nil
}

func (s *MemoryStore) startSweeper() {
	s.life.Lock()
	defer s.life.Unlock()
	if s.closed.Load() || s.sweeping.Load() {
		return
	}
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	s.sweeping.Store(true)
	go s.sweepLoop(s.stop, s.done, s.cfg.SweepInterval)
}

func (s *MemoryStore) sweepLoop(stop <-chan struct{}, done chan<- struct{}, every time.Duration) {
	defer close(done)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			s.sweep()
		}
	}
}

// sweep removes every expired thread.
func (s *MemoryStore) sweep() {
	now := s.nowMS()
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for sh.tail != nil && s.isExpired(sh.tail, now) {
			s.removeLocked(sh, sh.tail)
			s.expired.Add(1)
		}
		sh.mu.Unlock()
	}
	if s.afterSweep != nil {
		s.afterSweep()
	}
}

func (s *MemoryStore) nowMS() int64 { return s.cfg.Now().UnixMilli() }

func (s *MemoryStore) isExpired(t *memThread, now int64) bool {
	return s.cfg.expires() && now-t.updated >= s.cfg.TTL.Milliseconds()
}

func (s *MemoryStore) shardOfUser(user string) (int, *memShard) {
	i := int(maphash.String(s.seed, user) % uint64(len(s.shards)))
	return i, &s.shards[i]
}

// shardOfID parses the shard number that prefixes a memory thread ID:
// "<shard in base 36>.<22 random characters>".
func (s *MemoryStore) shardOfID(id string) *memShard {
	dot := strings.IndexByte(id, '.')
	if dot <= 0 || len(id)-dot-1 != randomPartLen {
		return nil
	}
	i, err := strconv.ParseUint(id[:dot], 36, 32)
	if err != nil || i >= uint64(len(s.shards)) {
		return nil
	}
	return &s.shards[i]
}

// lookupLocked returns the live thread with the ID, removing it if expired.
func (s *MemoryStore) lookupLocked(sh *memShard, id string, now int64) *memThread {
	t := sh.byID[id]
	if t != nil && s.isExpired(t, now) {
		s.removeLocked(sh, t)
		s.expired.Add(1)
		return nil
	}
	return t
}

// getOrCreateLocked returns the live thread of the pair, creating it when
// needed, and marks it written at now. After a creation the caller must
// unlock the shard and call makeRoom.
func (s *MemoryStore) getOrCreateLocked(shardNo int, sh *memShard, user, course string, now int64) (*memThread, bool) {
	k := pairKey{user, course}
	t := sh.byPair[k]
	if t != nil && s.isExpired(t, now) {
		s.removeLocked(sh, t)
		s.expired.Add(1)
		t = nil
	}
	if t != nil {
		t.updated = now
		sh.moveToFront(t)
		return t, false
	}
	t = &memThread{
		id:      strconv.FormatUint(uint64(shardNo), 36) + "." + randomPart(),
		user:    user,
		course:  course,
		created: now,
		updated: now,
	}
	sh.byID[t.id] = t
	sh.byPair[pairKey{t.user, t.course}] = t
	sh.pushFront(t)
	s.count.Add(1)
	return t, true
}

// removeLocked removes t from its shard, which the caller has locked.
func (s *MemoryStore) removeLocked(sh *memShard, t *memThread) {
	sh.remove(t)
	s.count.Add(-1)
}

// makeRoom removes the least recently written threads, across all shards,
// while the store holds more than MaxThreads, sparing keep (the thread just
// created). No shard lock may be held.
func (s *MemoryStore) makeRoom(keep *memThread) {
	if s.cfg.MaxThreads < 0 {
		return
	}
	for s.count.Load() > int64(s.cfg.MaxThreads) {
		victim, oldest := -1, int64(0)
		for i := range s.shards {
			sh := &s.shards[i]
			sh.mu.Lock()
			if t := sh.tail; t != nil && t != keep && (victim < 0 || t.updated < oldest) {
				victim, oldest = i, t.updated
			}
			sh.mu.Unlock()
		}
		if victim < 0 {
			return
		}
		sh := &s.shards[victim]
		sh.mu.Lock()
		if t := sh.tail; t != nil && t != keep {
			if s.isExpired(t, s.nowMS()) {
				s.expired.Add(1)
			} else {
				s.evicted.Add(1)
			}
			s.removeLocked(sh, t)
		}
		sh.mu.Unlock()
	}
}

func (sh *memShard) remove(t *memThread) {
	delete(sh.byID, t.id)
	delete(sh.byPair, pairKey{t.user, t.course})
	sh.unlink(t)
}

func (sh *memShard) unlink(t *memThread) {
	if t.prev != nil {
		t.prev.next = t.next
	} else {
		sh.head = t.next
	}
	if t.next != nil {
		t.next.prev = t.prev
	} else {
		sh.tail = t.prev
	}
	t.prev, t.next = nil, nil
}

func (sh *memShard) pushFront(t *memThread) {
	t.next = sh.head
	if sh.head != nil {
		sh.head.prev = t
	}
	sh.head = t
	if sh.tail == nil {
		sh.tail = t
	}
}

func (sh *memShard) moveToFront(t *memThread) {
	if sh.head == t {
		return
	}
	sh.unlink(t)
	sh.pushFront(t)
}

func (t *memThread) snapshot() Thread {
	return Thread{
		ID:        t.id,
		UserID:    t.user,
		CourseID:  t.course,
		VideoURL:  t.video,
		CreatedAt: fromMillis(t.created),
		UpdatedAt: fromMillis(t.updated),
	}
}

// trackLocked records video and reports a switch from another one.
func (t *memThread) trackLocked(video string) (switched bool, prev string) {
	if video == "" || video == t.video {
		return false, ""
	}
	prev = t.video
	t.video = video
	return prev != "", prev
}

func (t *memThread) history(limit int) []Message {
	if limit < 0 || len(t.msgs) == 0 {
		return []Message{}
	}
	from := 0
	if limit > 0 && limit < len(t.msgs) {
		from = len(t.msgs) - limit
	}
	out := make([]Message, 0, len(t.msgs)-from)
	for _, m := range t.msgs[from:] {
		r, _ := codeRole(m.role)
		out = append(out, Message{Role: r, Content: m.content, Time: fromMillis(m.at), ID: m.id})
	}
	return out
}

// GetOrCreate implements Store.
func (s *MemoryStore) GetOrCreate(ctx context.Context, userID, courseID string) (Thread, error) {
	if err := checkID("UserID", userID); err != nil {
		return Thread{}, err
	}
	if err := checkID("CourseID", courseID); err != nil {
		return Thread{}, err
	}
	if err := s.beginWrite(ctx); err != nil {
		return Thread{}, err
	}
	no, sh := s.shardOfUser(userID)
	sh.mu.Lock()
	t, created := s.getOrCreateLocked(no, sh, userID, courseID, s.nowMS())
	th := t.snapshot()
	sh.mu.Unlock()
	if created {
		s.makeRoom(t)
	}
	return th, nil
}

// Find implements Finder. Like Get it writes nothing: it neither slides
// the TTL nor moves the thread in the eviction order, and it does not start
// the sweeper. An expired thread it meets is removed, as Get does.
func (s *MemoryStore) Find(ctx context.Context, userID, courseID string) (Thread, error) {
	if err := checkID("UserID", userID); err != nil {
		return Thread{}, err
	}
	if err := checkID("CourseID", courseID); err != nil {
		return Thread{}, err
	}
	if err := s.begin(ctx); err != nil {
		return Thread{}, err
	}
	_, sh := s.shardOfUser(userID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	t := sh.byPair[pairKey{userID, courseID}]
	if t == nil {
		return Thread{}, ErrNotFound
	}
	if s.isExpired(t, s.nowMS()) {
		s.removeLocked(sh, t)
		s.expired.Add(1)
		return Thread{}, ErrNotFound
	}
	return t.snapshot(), nil
}

// Open implements Store.
func (s *MemoryStore) Open(ctx context.Context, req OpenRequest) (Session, error) {
	if err := checkID("UserID", req.UserID); err != nil {
		return Session{}, err
	}
	if err := checkID("CourseID", req.CourseID); err != nil {
		return Session{}, err
	}
	if err := checkVideo(req.VideoURL, false); err != nil {
		return Session{}, err
	}
	if err := s.beginWrite(ctx); err != nil {
		return Session{}, err
	}
	no, sh := s.shardOfUser(req.UserID)
	sh.mu.Lock()
	t, created := s.getOrCreateLocked(no, sh, req.UserID, req.CourseID, s.nowMS())
	switched, prev := t.trackLocked(req.VideoURL)
	sess := Session{
		Thread:        t.snapshot(),
		Created:       created,
		VideoSwitched: switched,
		PreviousVideo: prev,
		History:       t.history(req.HistoryLimit),
	}
	sh.mu.Unlock()
	if created {
		s.makeRoom(t)
	}
	return sess, nil
}

// withThread runs fn on the live thread with the ID under its shard's lock;
// write marks it written now.
func (s *MemoryStore) withThread(ctx context.Context, id string, write bool, fn func(sh *memShard, t *memThread, now int64)) error {
	if err := checkID("ThreadID", id); err != nil {
		return err
	}
	var err error
	if write {
		err = s.beginWrite(ctx)
	} else {
		err = s.begin(ctx)
	}
	if err != nil {
		return err
	}
	sh := s.shardOfID(id)
	if sh == nil {
		return ErrNotFound
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := s.nowMS()
	t := s.lookupLocked(sh, id, now)
	if t == nil {
		return ErrNotFound
	}
	if write {
		t.updated = now
		sh.moveToFront(t)
	}
	fn(sh, t, now)
	return nil
}

// Get implements Store.
func (s *MemoryStore) Get(ctx context.Context, threadID string) (Thread, error) {
	var th Thread
	err := s.withThread(ctx, threadID, false, func(_ *memShard, t *memThread, _ int64) { th = t.snapshot() })
	return th, err
}

// TrackVideo implements Store.
func (s *MemoryStore) TrackVideo(ctx context.Context, threadID, videoURL string) (bool, error) {
	if err := checkVideo(videoURL, true); err != nil {
		return false, err
	}
	var switched bool
	err := s.withThread(ctx, threadID, true, func(_ *memShard, t *memThread, _ int64) { switched, _ = t.trackLocked(videoURL) })
	return switched, err
}

// Append implements Store.
func (s *MemoryStore) Append(ctx context.Context, threadID string, msgs ...Message) error {
	if err := checkMessages(msgs); err != nil {
		return err
	}
	max := s.maxMessages()
	return s.withThread(ctx, threadID, true, func(_ *memShard, t *memThread, now int64) {
		if max >= 0 && len(msgs) > max {
			msgs = msgs[len(msgs)-max:]
		}
		msgs = t.newMessages(msgs)
		if max >= 0 && len(t.msgs)+len(msgs) > max {
			drop := len(t.msgs) + len(msgs) - max
			n := copy(t.msgs, t.msgs[drop:])
			clear(t.msgs[n:])
			t.msgs = t.msgs[:n]
		}
		for _, m := range msgs {
			at := now
			if !m.Time.IsZero() {
				at = m.Time.UnixMilli()
			}
			t.msgs = append(t.msgs, memMsg{content: m.Content, id: m.ID, at: at, role: roleCode(m.Role)})
		}
	})
}

// newMessages returns msgs without those whose ID a kept message of t, or
// an earlier message of msgs, holds. It returns msgs itself when none has
// an ID.
func (t *memThread) newMessages(msgs []Message) []Message {
	if !slices.ContainsFunc(msgs, func(m Message) bool { return m.ID != "" }) {
		return msgs
	}
	held := func(id string, in []Message) bool {
		return slices.ContainsFunc(in, func(m Message) bool { return m.ID == id })
	}
	out := make([]Message, 0, len(msgs))
	for _, m := range msgs {
		if m.ID != "" && (held(m.ID, out) || slices.ContainsFunc(t.msgs, func(k memMsg) bool { return k.id == m.ID })) {
			continue
		}
		out = append(out, m)
	}
	return out
}

// maxMessages returns the cap on kept messages, or -1 for none.
func (s *MemoryStore) maxMessages() int {
	s.init()
	if s.cfg.MaxMessages < 0 {
		return -1
	}
	return s.cfg.MaxMessages
}

// History implements Store.
func (s *MemoryStore) History(ctx context.Context, threadID string, limit int) ([]Message, error) {
	var out []Message
	err := s.withThread(ctx, threadID, false, func(_ *memShard, t *memThread, _ int64) { out = t.history(limit) })
	return out, err
}

// Delete implements Store.
func (s *MemoryStore) Delete(ctx context.Context, threadID string) error {
	return s.withThread(ctx, threadID, false, func(sh *memShard, t *memThread, _ int64) { s.removeLocked(sh, t) })
}

// ForgetUser implements Store. It scans the user's shard.
func (s *MemoryStore) ForgetUser(ctx context.Context, userID string) (int, error) {
	if err := checkID("UserID", userID); err != nil {
		return 0, err
	}
	if err := s.begin(ctx); err != nil {
		return 0, err
	}
	_, sh := s.shardOfUser(userID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := s.nowMS()
	n := 0
	for k, t := range sh.byPair {
		if k.user != userID {
			continue
		}
		if !s.isExpired(t, now) {
			n++
		}
		s.removeLocked(sh, t)
	}
	return n, nil
}

// Active implements Store. It walks, in each shard, the recently written
// threads only.
func (s *MemoryStore) Active(ctx context.Context, within time.Duration) (int, error) {
	if err := checkWithin(within); err != nil {
		return 0, err
	}
	if err := s.begin(ctx); err != nil {
		return 0, err
	}
	now := s.nowMS()
	cut := activeCutoff(&s.cfg, now, within)
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for t := sh.head; t != nil && t.updated >= cut; t = t.next {
			n++
		}
		sh.mu.Unlock()
	}
	return n, nil
}
