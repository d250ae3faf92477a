-- open.lua: get or create the thread of one (user, course) pair, record the
-- current video, mark the thread written now (TTL and activity) and read
-- its newest messages. Used by Open and GetOrCreate.
--
-- KEYS[1] thread hash    <prefix>{<bucket>}:t:<uh><ch>
-- KEYS[2] message list   <prefix>{<bucket>}:m:<uh><ch>
-- KEYS[3] user set       <prefix>{<bucket>}:u:<uh>
-- KEYS[4] activity zset  <prefix>{<bucket>}:a
-- ARGV[1] user ID                 ARGV[2] course ID
-- ARGV[3] <ch>, member of the user set
-- ARGV[4] <uh><ch>, member of the activity zset
-- ARGV[5] random part of the ID of a thread created by this call
-- ARGV[6] now, unix ms
-- ARGV[7] TTL in ms, or '' for no expiry
-- ARGV[8] activity entries at or below this score have expired, or ''
-- ARGV[9] video URL to record, or '' to leave it unchanged
-- ARGV[10] first history index for LRANGE ('-20', '0'), or '' for none
-- Returns {random part, created 0|1, switched 0|1, previous video,
--          video, created ms, updated ms, message...}
-- or the error "threads: key collision" when the thread hash belongs to
-- another (user, course) pair.
local m = redis.call('HMGET', KEYS[1], 'id', 'u', 'c', 'v', 'ca')
local id, video, ca = m[1], m[4], m[5]
local created, switched, prev = 0, 0, ''
if not id then
  id, video, ca, created = ARGV[5], ARGV[9], ARGV[6], 1
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'id', id, 'u', ARGV[1], 'c', ARGV[2], 'v', video, 'ca', ca, 'ua', ARGV[6])
else
  if m[2] ~= ARGV[1] or m[3] ~= ARGV[2] then
    return redis.error_reply('threads: key collision')
  end
  if ARGV[9] ~= '' and ARGV[9] ~= video then
    if video ~= '' then
      switched, prev = 1, video
    end
    video = ARGV[9]
    redis.call('HSET', KEYS[1], 'v', video, 'ua', ARGV[6])
  else
    redis.call('HSET', KEYS[1], 'ua', ARGV[6])
  end
end
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[4])
if ARGV[8] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[8])
end
for i = 1, 4 do
  if ARGV[7] ~= '' then
    redis.call('PEXPIRE', KEYS[i], ARGV[7])
  else
    redis.call('PERSIST', KEYS[i])
  end
end
local out = {id, created, switched, prev, video, ca, ARGV[6]}
if ARGV[10] ~= '' then
  local h = redis.call('LRANGE', KEYS[2], ARGV[10], -1)
  for i = 1, #h do
    out[7 + i] = h[i]
  end
end
return out
