-- extend.lua: move a shared deadline of the breaker later, never earlier.
--
-- KEYS[1]  the breaker's state hash: until (ms since the epoch, open until),
--          reason (why it opened), pause (ms, adaptive pause until)
-- KEYS[2]  the half-open probe lease (a string: the holder's id)
-- ARGV[1]  field to extend: "until" or "pause"
-- ARGV[2]  the new deadline, ms since the epoch (from the caller's clock)
-- ARGV[3]  reason to store with a new "until"; "" keeps the old one
-- ARGV[4]  ttl of the hash in ms (it is only ever lengthened)
-- ARGV[5]  holder id whose lease to release; "" releases nothing
--
-- Returns {until, reason, pause} after the update (each may be false).
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local new = tonumber(ARGV[2])
if new > cur then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  if ARGV[3] ~= '' then
    redis.call('HSET', KEYS[1], 'reason', ARGV[3])
  end
end
local ttl = tonumber(ARGV[4])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
if ARGV[5] ~= '' and redis.call('GET', KEYS[2]) == ARGV[5] then
  redis.call('DEL', KEYS[2])
end
return redis.call('HMGET', KEYS[1], 'until', 'reason', 'pause')
