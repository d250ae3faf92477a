-- Writes an answer and releases the lock if the caller holds it, in one
-- step, so that no waiter sees the lock gone and the answer missing.
--
-- KEYS[1] answer key
-- KEYS[2] lock key (same hash tag as KEYS[1])
-- ARGV[1] lock token of the caller ('' when it holds none: it asked the
--         upstream after its wait ran out, or while Redis failed)
-- ARGV[2] the encoded answer; '' when the call gave none to keep (a
--         degraded reply, a failed or abandoned call)
-- ARGV[3] answer lifetime, milliseconds
-- ARGV[4] lifetime of the '!' marker left in the lock when a holder
--         writes no answer, milliseconds
--
-- Returns 1 when the lock was the caller's and was released, else 0.
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
  if ARGV[2] == '' then
    redis.call('SET', KEYS[2], '!', 'PX', ARGV[4])
  else
    redis.call('DEL', KEYS[2])
  end
  return 1
end
return 0
