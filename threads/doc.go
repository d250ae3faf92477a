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
//	                  ca, ua (created and updated, unix ms)
//	P{b}:m:<uh><ch>   list: messages, oldest first, "<role><unix ms>:<content>"
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
// error. The turn pipeline may answer without history on ErrUnavailable.
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
// next write that adds a member to the bucket's set (a thread created, or
// one whose entry had gone), so the set never holds more entries than its
// bucket had live threads when it last grew. A thread's user set gets the
// thread when the thread is created, and again from any write that finds
// the set gone. The user set and the bucket set get the TTL on every
// write, so they outlive every thread they index and vanish with the last
// one.
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
// its content plus about 46 bytes: 50,000 threads of 50 messages of 500
// bytes take about 1.4 GB (see Config.MaxThreads).
package threads
