// Package threads keeps chatscale's conversations: one thread per (user,
// course) pair holding the video the learner watches and the newest
// messages. Store is the contract; NewMemory and NewRedis are its backends;
// package threadstest is the conformance suite every backend passes.
//
// # The turn
//
// The turn pipeline calls Open (get or create the thread, record the video
// and whether it changed, read the recent history), asks the model, then
// calls Append with the question and the answer. On Redis each is one round
// trip: one Lua script run with EVALSHA (EVAL when the server lacks it);
// Open sends it in a MULTI/EXEC with an LRANGE of the history, so that the
// messages reach the client without passing through Lua, which costs Redis
// several times what the LRANGE does.
//
// # Reading without writing
//
// GetOrCreate and Open create the thread they do not find, and count as
// activity. A host that only shows a learner's history (a page load) uses
// Find instead, from the optional Finder interface that MemoryStore and
// RedisStore implement: it returns the pair's thread or ErrNotFound, and
// writes nothing; History, given the thread's ID, then reads its messages,
// without writing either. On Redis Find is one round trip, an HMGET of the
// thread hash.
//
// # Time and TTL
//
// Time comes from Config.Now, never from the server: message times,
// CreatedAt, UpdatedAt and the activity used by Active. Every write
// (GetOrCreate, Open, TrackVideo, Append) slides the thread's TTL
// (Config.TTL, 7 days by default) and counts as activity; Get, History and
// Find do not. A thread expires when TTL has passed since its last write:
// it is then ErrNotFound, and GetOrCreate starts a new, empty thread with
// a new ID. Stores keep times to the millisecond and return them in UTC.
//
// MemoryStore is exact. RedisStore refreshes a thread (the TTL of its
// keys, its entry in the activity index, its user's set) at most once per
// refresh interval: 1/64 of the TTL, at most 30 s (at least 1 ms). Time is
// cut into periods of that length, and a write refreshes when it creates
// the thread or falls in another period than the thread's previous write;
// the other writes (the Append that follows a turn's Open within seconds)
// only record their data and UpdatedAt, which saves the upkeep's five
// Redis calls. So on Redis a thread expires between TTL minus the interval
// and TTL after its last write (with the default TTL of 7 days: up to 30
// s early), and Active(within) counts every thread written within
// `within` minus the interval and no thread last written before `within`.
// UpdatedAt is exact.
//
// # Idempotent appends
//
// A Message may carry an ID (Message.ID, at most MaxMessageIDBytes). Append
// skips a message whose ID one of the thread's kept messages (the newest
// Config.MaxMessages), or an earlier message of the same call, holds: an
// Append retried after an error or a timeout, whether or not the first
// try was stored, and even after other appends came in between, stores
// each message once. IDs live with the kept messages and go with them: an
// ID whose message was trimmed away is new again. Append still returns
// nil for a call whose messages were all skipped. History and Open return
// the IDs. On Redis the check takes no extra round trip: the list entry
// holds the ID, and the thread hash holds a 6-byte digest of the ID of
// each kept message (field k, trimmed with the list), which the Append
// script reads with the thread's other fields; two IDs of one thread
// collide with a probability of 2^-48.
//
// # Redis key layout
//
// A user ID and a course ID are each hashed (SHA-256 of a domain byte and
// the ID, first 12 bytes, base64url: 16 characters), so IDs of any bytes
// (':', '{', '}', spaces, NUL, unicode) make keys of a fixed alphabet with
// no braces. With uh and ch those digests, b the user's bucket (uh mod
// 1024, three hex digits) and P the prefix followed by "threads:"
// ("chatscale:threads:" by default), a thread has:
//
//	P{b}:t:<uh><ch>   hash: id (random part), u, c (the raw IDs), v (video),
//	                  ca, ua (created and updated, unix ms), k (6-byte
//	                  digests of the kept messages' IDs, once one had an ID)
//	P{b}:m:<uh><ch>   list: messages, oldest first, "<role><unix ms>:<content>",
//	                  "<role><unix ms>|<ID length>|<ID>:<content>" with an ID
//	P{b}:u:<uh>       set: the <ch> of every thread of the user (for ForgetUser)
//	P{b}:a            sorted set: <uh><ch> scored by the last write (for Active)
//
// A thread ID is <uh><ch>.<128 random bits in base64url>: 55 URL-safe
// characters from which the store rebuilds the keys, so Append needs no
// lookup. The random part is stored in the hash and checked by every
// script: the ID of a deleted or expired thread stays ErrNotFound even
// after the pair gets a new thread.
//
// The hash stores the raw user and course IDs and the scripts compare them:
// two pairs whose digests collided (a 2^-96 event per pair of users) would
// get an error instead of sharing a thread, Find answers ErrNotFound for
// the pair whose IDs the hash does not hold, and ForgetUser never deletes
// a thread whose stored user differs.
//
// # Errors
//
// Bad input is a *chatscale.InputError (errors.Is(err,
// chatscale.ErrInvalidInput)), a bad Config a *chatscale.ConfigError. A
// RedisStore call that Redis did not answer returns an error wrapping
// ErrUnavailable; one whose ctx ended returns an error wrapping ctx's
// error. Each Redis call is bounded by Config.RedisTimeout (1 s by
// default) whatever the go-redis client's timeouts: a Redis that hangs
// (a stopped process, a network stall) gives ErrUnavailable within that
// bound, or ctx's error when ctx ends first. A write with
// Config.WaitReplicas that fewer replicas confirmed returns a
// *ReplicationError (ErrNotReplicated). The turn pipeline may answer
// without history on ErrUnavailable.
//
// # Failover and replicated acknowledgements
//
// Redis replicates asynchronously: a write is acknowledged once the master
// applied it, before its replicas have it. When the master dies (a crash,
// a SIGKILL, a lost host) and Sentinel or the Cluster promotes a replica,
// the writes the replica had not received are gone, acknowledged or not:
// without Config.WaitReplicas, a few of the appends that returned nil in
// the last moments before a failover may be missing afterwards (a learner
// then sees a question or an answer missing from the history), and a
// Delete or ForgetUser just before it may be undone.
//
// With Config.WaitReplicas set to n, Append, TrackVideo, Delete and
// ForgetUser send a WAIT for n replicas right after their write, on the
// same connection and in the same round trip (on a Cluster, to the master
// that owns the thread's slot; ForgetUser sends one WAIT after its last
// batch), and return nil only when n replicas confirmed within
// Config.WaitTimeout (100 ms by default). Sentinel promotes the replica
// that received the most, so with n = 1 and two or more replicas an
// acknowledged write survives the failover of its master. (WAIT is not a
// consensus: a replica that confirmed and then dies with the master takes
// the write with it.) It also covers a replica that has just made a full
// sync: its link is up at once, but the master streams it the writes made
// since the snapshot only after its first acknowledgement, up to a second
// later. When fewer confirm, the call returns a *ReplicationError: the
// write was applied on the master and may or may not survive a failover;
// retrying it (with message IDs, for Append) is safe. Open and GetOrCreate do not wait: a thread created just before a
// failover may be lost with no message in it, the next Open creates it
// again, and an Append to the lost ID returns ErrNotFound.
//
// WaitReplicas = 1 needs at least two replicas to stay writable through a
// failover: with one, the promoted replica is a master without replicas
// and every write returns ErrNotReplicated until another replica joins.
// What it costs: the wait for a replica's acknowledgement (the master asks
// its replicas for their offset, the replica answers), one round trip
// between master and replica more per write, and Redis work for the
// WAIT. On loopback, on a loaded 2-CPU machine (BenchmarkRedisAppendWait,
// three runs), an Append made alone took 1.2 to 2.1 times as long as
// without (73 to 160 µs without, 130 to 280 µs with), and 16 concurrent
// callers got 66 to 72% of the throughput (17,000 to 22,000 appends/s
// instead of 24,000 to 34,000). On a network the added time is about one
// round trip from the master to its nearest replica.
//
// Recovery takes Sentinel's down-after-milliseconds (the time before it
// declares the master down, 30 s by default, often set to a few seconds)
// plus the promotion (about a second) plus go-redis' redial: the failover
// client learns the new master from Sentinel's switch message and dials
// it. Meanwhile calls return ErrUnavailable within Config.RedisTimeout.
// With down-after at 1 s, the store's failover test (50 learners
// appending, master killed with SIGKILL) saw its first acknowledged
// append 2.3 to 3.8 s after the kill.
//
// A Redis restart keeps what its persistence kept: without persistence it
// comes back empty and every thread is gone (the next Open of each pair
// creates a new, empty one); with AOF and appendfsync always, every write
// acknowledged before the crash is there. RELIABILITY.md, in the
// repository, measures both under load.
//
// # Redis Cluster
//
// Every key of a thread, its user's set and its bucket's sorted set carry
// the same hash tag {b}, so each script touches one slot and works
// unchanged on a single server, Sentinel and Cluster; all the keys reach the
// scripts through KEYS. Spreading users over 1024 tags spreads load over
// the masters while keeping the activity index in the thread's slot, which
// a single global sorted set (one hot key, outside the thread's slot) could
// not. Active sends one ZCOUNT per bucket in one pipeline, which go-redis
// splits per master and sends in parallel: about 1024 cheap commands per
// call, fine for a gauge read every 15 s. Active counts by score, so an
// entry of an expired thread never counts; such entries are dropped by the
// next refresh that adds a member to the bucket's set (a thread created, or
// one whose entry had gone), so the set never holds more entries than its
// bucket had live threads when it last grew. A thread's user set gets the
// thread when the thread is created, and again from any refresh that
// finds the set gone. The user set and the bucket set get the TTL on every
// refresh of any of their threads, so they outlive every thread they
// index and vanish with the last one.
//
// ForgetUser reads the user's set, deletes the listed threads with one
// script run per 64 threads, and repeats while threads keep appearing (at
// most 8 rounds): two round trips for a typical user.
//
// # Memory
//
// MemoryStore shards by user; each shard keeps its threads in a list
// ordered by last write, which gives Active (walk the recent end), expiry
// (the old end) and eviction of the least recently written thread when
// Config.MaxThreads (50,000 by default) is reached. An idle thread (no
// messages, short IDs) holds about 280 bytes of heap and each kept message
// its content and ID plus about 62 bytes: 50,000 threads of 50 messages of 500
// bytes take about 1.4 GB (see Config.MaxThreads).
package threads
