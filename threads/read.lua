-- read.lua: read a thread and its newest messages without writing (no TTL
-- slide, no activity). Used by Get and History.
--
-- KEYS[1] thread hash    <prefix>{<bucket>}:t:<uh><ch>
-- KEYS[2] message list   <prefix>{<bucket>}:m:<uh><ch>
-- ARGV[1] random part of the thread ID (the thread must hold it)
-- ARGV[2] first history index for LRANGE ('-20', '0'), or '' for none
-- Returns {user, course, video, created ms, updated ms, message...} or nil
-- when the thread does not exist.
local m = redis.call('HMGET', KEYS[1], 'id', 'u', 'c', 'v', 'ca', 'ua')
if m[1] ~= ARGV[1] then
  return false
end
local out = {m[2], m[3], m[4], m[5], m[6]}
if ARGV[2] ~= '' then
  local h = redis.call('LRANGE', KEYS[2], ARGV[2], -1)
  for i = 1, #h do
    out[5 + i] = h[i]
  end
end
return out
