-- lease.lua: take the half-open probe lease for one open period.
--
-- KEYS[1]  the breaker's state hash (fields until, reason, pause)
-- KEYS[2]  the half-open probe lease (a string: the holder's id)
-- ARGV[1]  the "until" (ms) the caller saw pass; the lease is only taken
--          while the hash still holds it, so that an instance whose view
--          is stale does not probe again after another instance's probe
--          closed or re-opened the breaker
-- ARGV[2]  holder id
-- ARGV[3]  lease ttl (ms)
--
-- Returns {won, until, reason, pause}: won is 1 when the lease was taken;
-- the other three are the hash's fields (each may be false), for the
-- caller to adopt when "until" changed.
local st = redis.call('HMGET', KEYS[1], 'until', 'reason', 'pause')
local won = 0
if tonumber(st[1] or '0') == tonumber(ARGV[1]) and
   redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  won = 1
end
return {won, st[1], st[2], st[3]}
