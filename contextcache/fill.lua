-- Writes a transcript to L2 and releases the load lock if the caller still
-- holds it, in one step, so that no caller sees the lock gone and the
-- value missing.
--
-- KEYS[1] value key
-- KEYS[2] lock key (same hash tag as KEYS[1])
-- ARGV[1] lock token of the caller
-- ARGV[2] value: 16 decimal digits (the Unix millisecond until which it is
--         fresh), then the encoded transcript
-- ARGV[3] value lifetime in Redis, milliseconds (freshness plus the stale
--         window); 0 writes no value (release only)
--
-- Returns 1 when the lock was the caller's and was released, else 0.
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
