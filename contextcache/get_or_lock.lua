-- Reads a transcript from L2 or, when it is absent, takes the load lock.
-- Reading and locking in one script means a caller either sees the value
-- that the lock holder wrote or takes the lock after the holder released it.
--
-- KEYS[1] value key
-- KEYS[2] lock key (same hash tag as KEYS[1])
-- ARGV[1] lock token, unique to the caller
-- ARGV[2] lock lifetime, milliseconds
--
-- Returns the value (a bulk string) when present; 1 when the lock was
-- taken for the caller; 0 when another caller holds it.
local v = redis.call('GET', KEYS[1])
if v then
  return v
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
