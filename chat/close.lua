-- close.lua: end a half-open probe.
--
-- KEYS[1]  the breaker's state hash (fields until, reason, pause)
-- KEYS[2]  the half-open probe lease (a string: the holder's id)
-- ARGV[1]  the "until" the probe was sent for (ms); the breaker closes only
--          if it is still that one (a newer trip wins); "0" closes nothing
-- ARGV[2]  holder id whose lease to release
--
-- Returns 1 when the breaker was closed, else 0.
local closed = 0
local cur = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if ARGV[1] ~= '0' and cur == tonumber(ARGV[1]) then
  redis.call('HDEL', KEYS[1], 'until', 'reason')
  closed = 1
end
if redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
end
return closed
