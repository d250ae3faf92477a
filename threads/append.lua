-- append.lua: append messages to a thread (keeping the newest ones) and/or
-- record its current video, and mark it written now (TTL and activity).
-- Used by Append and TrackVideo.
--
-- KEYS[1] thread hash    <prefix>{<bucket>}:t:<uh><ch>
-- KEYS[2] message list   <prefix>{<bucket>}:m:<uh><ch>
-- KEYS[3] user set       <prefix>{<bucket>}:u:<uh>
-- KEYS[4] activity zset  <prefix>{<bucket>}:a
-- ARGV[1] random part of the thread ID (the thread must hold it)
-- ARGV[2] <ch>, member of the user set
-- ARGV[3] <uh><ch>, member of the activity zset
-- ARGV[4] now, unix ms
-- ARGV[5] TTL in ms, or '' for no expiry
-- ARGV[6] activity entries at or below this score have expired, or ''
-- ARGV[7] messages to keep, or '' for all
-- ARGV[8] video URL to record, or '' to leave it unchanged
-- ARGV[9..] encoded messages, oldest first
-- Returns {switched 0|1} or nil when the thread does not exist.
local m = redis.call('HMGET', KEYS[1], 'id', 'v')
if m[1] ~= ARGV[1] then
  return false
end
local switched = 0
if ARGV[8] ~= '' and ARGV[8] ~= m[2] then
  if m[2] ~= '' then
    switched = 1
  end
  redis.call('HSET', KEYS[1], 'v', ARGV[8], 'ua', ARGV[4])
else
  redis.call('HSET', KEYS[1], 'ua', ARGV[4])
end
local n = #ARGV
local i = 9
while i <= n do
  local j = math.min(i + 99, n)
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, j))
  i = j + 1
end
if n >= 9 and ARGV[7] ~= '' then
  redis.call('LTRIM', KEYS[2], '-' .. ARGV[7], -1)
end
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
if ARGV[6] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[6])
end
for k = 1, 4 do
  if ARGV[5] ~= '' then
    redis.call('PEXPIRE', KEYS[k], ARGV[5])
  else
    redis.call('PERSIST', KEYS[k])
  end
end
return {switched}
