-- delete.lua: delete one thread and its index entries.
--
-- KEYS[1] thread hash    <prefix>{<bucket>}:t:<uh><ch>
-- KEYS[2] message list   <prefix>{<bucket>}:m:<uh><ch>
-- KEYS[3] user set       <prefix>{<bucket>}:u:<uh>
-- KEYS[4] activity zset  <prefix>{<bucket>}:a
-- ARGV[1] random part of the thread ID (the thread must hold it)
-- ARGV[2] <ch>, member of the user set
-- ARGV[3] <uh><ch>, member of the activity zset
-- Returns 1 when the thread was deleted, 0 when it did not exist.
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[3])
return 1
