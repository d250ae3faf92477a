-- Reads a transcript from L2 or, when it is absent or no longer fresh,
-- takes the load lock. Reading and locking in one script means a caller
-- either sees the value that the lock holder wrote or takes the lock after
-- the holder released it.
--
-- A value starts with 16 decimal digits: the Unix millisecond until which
-- it is fresh. After that it stays in Redis for stale-if-error only.
--
-- KEYS[1] value key
-- KEYS[2] lock key (same hash tag as KEYS[1])
-- ARGV[1] lock token, unique to the caller
-- ARGV[2] lock lifetime, milliseconds
-- ARGV[3] the caller's current time, Unix milliseconds
--
-- Returns the value (a bulk string) when it is fresh; otherwise a pair:
-- the expired value or nil, and 1 when the lock was taken for the caller,
-- 0 when another caller holds it.
local v = redis.call('GET', KEYS[1])
if v then
  local fresh = tonumber(string.sub(v, 1, 16))
  if fresh and fresh > tonumber(ARGV[3]) then
    return v
  end
end
local locked = 0
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  locked = 1
end
return {v, locked}
