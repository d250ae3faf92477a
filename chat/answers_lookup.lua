-- Reads a cached answer or, when there is none, takes the lock that lets
-- one caller across the cluster ask the upstream for it. Reading and
-- locking in one script means a caller either sees the answer the lock
-- holder wrote or takes the lock after the holder released it.
--
-- KEYS[1] answer key
-- KEYS[2] lock key (same hash tag as KEYS[1])
-- ARGV[1] lock token, unique to the caller
-- ARGV[2] lock lifetime, milliseconds
--
-- Returns {1, answer} when the answer is cached; {2} when the lock was
-- taken for the caller; {3} when the last holder's call gave no answer
-- to keep (the lock holds the marker '!' for a moment: each waiter asks
-- the upstream itself rather than one after the other); {0} when another
-- caller holds the lock.
local v = redis.call('GET', KEYS[1])
if v then
  return {1, v}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2}
end
if redis.call('GET', KEYS[2]) == '!' then
  return {3}
end
return {0}
