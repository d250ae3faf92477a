-- forget.lua: delete the listed threads of one user (ForgetUser runs it
-- once per batch of the members it read from the user set).
--
-- KEYS[1] user set       <prefix>{<bucket>}:u:<uh>
-- KEYS[2] activity zset  <prefix>{<bucket>}:a
-- KEYS[2+2i-1], KEYS[2+2i]  thread hash and message list of the i-th thread
-- ARGV[1] user ID
-- ARGV[2] <uh>
-- ARGV[2+i] <ch> of the i-th thread
-- Threads of the user are deleted; members whose thread is gone are
-- removed from the user set; members whose thread belongs to another user
-- (whose ID digest collides) are left alone and returned.
-- Returns {deleted count, foreign <ch>...}.
local out = {0}
for i = 3, #ARGV do
  local hk, mk = KEYS[2 * (i - 2) + 1], KEYS[2 * (i - 2) + 2]
  local u = redis.call('HGET', hk, 'u')
  if u == ARGV[1] then
    redis.call('DEL', hk, mk)
    out[1] = out[1] + 1
  end
  if u == ARGV[1] or not u then
    redis.call('SREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[2] .. ARGV[i])
  else
    out[#out + 1] = ARGV[i]
  end
end
return out
