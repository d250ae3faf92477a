-- append.lua: append messages to a thread (keeping the newest ones) and/or
-- record its current video, and mark it written now (TTL and activity).
-- Used by Append and TrackVideo. The index upkeep is that of open.lua (see
-- there).
--
-- KEYS[1] thread hash    <prefix>{<bucket>}:t:<uh><ch>
-- KEYS[2] message list   <prefix>{<bucket>}:m:<uh><ch>
-- KEYS[3] user set       <prefix>{<bucket>}:u:<uh>
-- KEYS[4] activity zset  <prefix>{<bucket>}:a
-- ARGV[1] random part of the thread ID (the thread must hold it)
-- ARGV[2] <uh><ch> (16 + 16 characters), member of the activity zset;
--         its last 16 characters, <ch>, are the member of the user set
-- ARGV[3] now, unix ms
-- ARGV[4] TTL in ms, or '' for no expiry
-- ARGV[5] messages to keep, or '' for all
-- ARGV[6] video URL to record, or '' to leave it unchanged
-- ARGV[7..] encoded messages, oldest first
-- Returns {switched 0|1} or nil when the thread does not exist.
local now, ttl = ARGV[3], ARGV[4]
local switched = 0
if ARGV[6] == '' then
  if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then
    return false
  end
  redis.call('HSET', KEYS[1], 'ua', now)
else
  local m = redis.call('HMGET', KEYS[1], 'id', 'v')
  if m[1] ~= ARGV[1] then
    return false
  end
  if ARGV[6] ~= m[2] then
    if m[2] ~= '' then
      switched = 1
    end
    redis.call('HSET', KEYS[1], 'v', ARGV[6], 'ua', now)
  else
    redis.call('HSET', KEYS[1], 'ua', now)
  end
end
local n = #ARGV
if n >= 7 then
  local len
  local i = 7
  while i <= n do
    local j = math.min(i + 99, n)
    len = redis.call('RPUSH', KEYS[2], unpack(ARGV, i, j))
    i = j + 1
  end
  if ARGV[5] ~= '' then
    local keep = tonumber(ARGV[5])
    if len > keep then
      redis.call('LTRIM', KEYS[2], -keep, -1)
    end
  end
end
if redis.call('ZADD', KEYS[4], now, ARGV[2]) == 1 and ttl ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - ttl)
end
if ttl ~= '' then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  if redis.call('PEXPIRE', KEYS[3], ttl) == 0 then
    redis.call('SADD', KEYS[3], string.sub(ARGV[2], 17))
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
  redis.call('PEXPIRE', KEYS[4], ttl)
else
  redis.call('SADD', KEYS[3], string.sub(ARGV[2], 17))
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
  redis.call('PERSIST', KEYS[3])
  redis.call('PERSIST', KEYS[4])
end
return {switched}
