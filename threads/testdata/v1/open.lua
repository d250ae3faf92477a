-- open.lua: get or create the thread of one (user, course) pair, record the
-- current video and mark the thread written now (TTL and activity). Used by
-- Open and GetOrCreate. Open reads the history with a plain LRANGE that
-- follows this script in the same MULTI/EXEC: atomic with it, and the
-- messages reach the client without passing through Lua.
--
-- KEYS[1] thread hash    <prefix>{<bucket>}:t:<uh><ch>
-- KEYS[2] message list   <prefix>{<bucket>}:m:<uh><ch>
-- KEYS[3] user set       <prefix>{<bucket>}:u:<uh>
-- KEYS[4] activity zset  <prefix>{<bucket>}:a
-- ARGV[1] user ID                 ARGV[2] course ID
-- ARGV[3] <uh><ch> (16 + 16 characters), member of the activity zset;
--         its last 16 characters, <ch>, are the member of the user set
-- ARGV[4] random part of the ID of a thread created by this call
-- ARGV[5] now, unix ms
-- ARGV[6] TTL in ms, or '' for no expiry
-- ARGV[7] video URL to record, or '' to leave it unchanged
-- Returns {random part, created 0|1, switched 0|1, previous video, video,
--          created ms} (updated ms is ARGV[5])
-- or the error "threads: key collision" when the thread hash belongs to
-- another (user, course) pair.
--
-- Index upkeep, the same in append.lua:
-- * the user set gets <ch> when the thread is created and whenever a
--   write finds the set gone (PEXPIRE answers 0). A thread that exists was
--   added when it was created, and the set expires no sooner than any of
--   its threads (every write gives it the same TTL as theirs), so an SADD
--   on every write would add nothing. Without a
--   TTL (PERSIST) every write adds <ch>, as PERSIST cannot tell a missing
--   set;
-- * the activity zset gets the write's score on every write; its entries
--   of expired threads are removed (ZREMRANGEBYSCORE) only by a write that
--   adds a new member, so the zset never holds more entries than its
--   bucket had live threads when it last grew. Active counts by score and
--   never counts an expired entry;
-- * every key of the thread and both indexes get the TTL on every write,
--   so the indexes outlive every thread they list and vanish with the
--   last one.
local m = redis.call('HMGET', KEYS[1], 'id', 'u', 'c', 'v', 'ca')
local id, video, ca = m[1], m[4], m[5]
local now, ttl = ARGV[5], ARGV[6]
local created, switched, prev = 0, 0, ''
if not id then
  id, video, ca, created = ARGV[4], ARGV[7], now, 1
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'id', id, 'u', ARGV[1], 'c', ARGV[2], 'v', video, 'ca', now, 'ua', now)
else
  if m[2] ~= ARGV[1] or m[3] ~= ARGV[2] then
    return redis.error_reply('threads: key collision')
  end
  if ARGV[7] ~= '' and ARGV[7] ~= video then
    if video ~= '' then
      switched, prev = 1, video
    end
    video = ARGV[7]
    redis.call('HSET', KEYS[1], 'v', video, 'ua', now)
  else
    redis.call('HSET', KEYS[1], 'ua', now)
  end
end
if redis.call('ZADD', KEYS[4], now, ARGV[3]) == 1 and ttl ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - ttl)
end
if ttl ~= '' then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  if created == 1 or redis.call('PEXPIRE', KEYS[3], ttl) == 0 then
    redis.call('SADD', KEYS[3], string.sub(ARGV[3], 17))
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
  redis.call('PEXPIRE', KEYS[4], ttl)
else
  redis.call('SADD', KEYS[3], string.sub(ARGV[3], 17))
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
  redis.call('PERSIST', KEYS[3])
  redis.call('PERSIST', KEYS[4])
end
return {id, created, switched, prev, video, ca}
