-- read.lua: read a thread without writing (no TTL slide, no activity).
-- Used by Get and History; History reads the messages with a plain LRANGE
-- that follows this script in the same MULTI/EXEC (see open.lua).
--
-- KEYS[1] thread hash    <prefix>{<bucket>}:t:<uh><ch>
-- ARGV[1] random part of the thread ID (the thread must hold it)
-- Returns {user, course, video, created ms, updated ms} or nil when the
-- thread does not exist.
local m = redis.call('HMGET', KEYS[1], 'id', 'u', 'c', 'v', 'ca', 'ua')
if m[1] ~= ARGV[1] then
  return false
end
return {m[2], m[3], m[4], m[5], m[6]}
