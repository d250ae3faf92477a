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
-- ARGV[4] 1 when the caller took the lock for this load, else 0 (it loaded
--         after its wait for another holder ran out, or over a corrupt
--         value). A caller that took the lock writes the value only while
--         it still holds it: Invalidate deletes the lock, so that a load
--         begun before the invalidation does not write the old transcript
--         back.
--
-- Returns 1 when the lock was the caller's and was released, else 0.
local ttl = tonumber(ARGV[3])
local mine = redis.call('GET', KEYS[2]) == ARGV[1]
if ttl > 0 and (mine or ARGV[4] ~= '1') then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
end
if mine then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
