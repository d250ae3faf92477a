-- append.lua: append messages to a thread (keeping the newest ones, and
-- skipping those whose ID a kept message holds) and/or record its current
-- video, and mark it written now. Used by Append and TrackVideo. The
-- refresh and the index upkeep are those of open.lua (see there).
--
-- KEYS[1] thread hash    <prefix>{<bucket>}:t:<uh><ch>
-- KEYS[2] message list   <prefix>{<bucket>}:m:<uh><ch>
-- KEYS[3] user set       <prefix>{<bucket>}:u:<uh>
-- KEYS[4] activity zset  <prefix>{<bucket>}:a
-- ARGV[1] random part of the thread ID (the thread must hold it)
-- ARGV[2] <uh><ch> (16 + 16 characters), member of the activity zset;
--         its last 16 characters, <ch>, are the member of the user set
-- ARGV[3] now, unix ms
-- ARGV[4] TTL in ms, or '' for no expiry
-- ARGV[5] messages to keep, or '' for all
-- ARGV[6] video URL to record, or '' to leave it unchanged
-- ARGV[7] refresh interval, ms
-- ARGV[8] the ID tokens of the messages, 6 bytes each, in their order
--         (six NUL bytes for a message without ID), or '' when no message
--         has an ID
-- ARGV[9..] encoded messages, oldest first
-- Returns {switched 0|1, messages stored} or nil when the thread does not
-- exist.
--
-- The hash field 'k' holds the ID tokens of the newest kept messages, 6
-- bytes each, oldest first, aligned with the end of the list: it is
-- written from the first message with an ID on, and trimmed with the list.
-- A message whose token 'k' holds (at a multiple of 6) is skipped (the
-- store drops a message whose ID an earlier message of the same call
-- holds before it runs the script).
local W, NOID = 6, '\0\0\0\0\0\0'
local m = redis.call('HMGET', KEYS[1], 'id', 'ua', 'v', 'k')
if m[1] ~= ARGV[1] then
  return false
end
local now, ttl = ARGV[3], ARGV[4]
local ua, every = tonumber(m[2]), tonumber(ARGV[7])
local refresh = not ua or math.floor(tonumber(now) / every) ~= math.floor(ua / every)
local h = {'ua', now}
local switched = 0
if ARGV[6] ~= '' and ARGV[6] ~= m[3] then
  if m[3] ~= '' then
    switched = 1
  end
  h[#h + 1], h[#h + 2] = 'v', ARGV[6]
end
local n, stored = #ARGV, 0
if n >= 9 then
  local msgs, first, last = ARGV, 9, n
  local toks, k = ARGV[8], m[4]
  if toks ~= '' or k then
    k = k or ''
    local held
    if toks ~= '' then
      for i = 9, n do
        local tok = string.sub(toks, (i - 9) * W + 1, (i - 8) * W)
        if tok ~= NOID then
          local p = 1
          while true do
            local at = string.find(k, tok, p, true)
            if not at then
              break
            end
            if (at - 1) % W == 0 then
              held = held or {}
              held[i] = true
              break
            end
            p = at + 1
          end
        end
      end
    else
      toks = string.rep(NOID, n - 8)
    end
    if held then
      -- a retry: keep the messages whose token is not held
      local kept = {}
      msgs, first, last = {}, 1, 0
      for i = 9, n do
        if not held[i] then
          last = last + 1
          msgs[last] = ARGV[i]
          kept[last] = string.sub(toks, (i - 9) * W + 1, (i - 8) * W)
        end
      end
      toks = table.concat(kept)
    end
    k = k .. toks
  end
  stored = last - first + 1
  if stored > 0 then
    local len
    local i = first
    while i <= last do
      local j = math.min(i + 99, last)
      len = redis.call('RPUSH', KEYS[2], unpack(msgs, i, j))
      i = j + 1
    end
    if ARGV[5] ~= '' then
      local keep = tonumber(ARGV[5])
      if len > keep then
        redis.call('LTRIM', KEYS[2], -keep, -1)
      end
      if k and #k > keep * W then
        k = string.sub(k, -keep * W)
      end
    end
    if k then
      h[#h + 1], h[#h + 2] = 'k', k
    end
    if len == stored and not refresh and ttl ~= '' then
      -- a new list: give it the hash's remaining TTL
      local pt = redis.call('PTTL', KEYS[1])
      if pt > 0 then
        redis.call('PEXPIRE', KEYS[2], pt)
      end
    end
  end
end
redis.call('HSET', KEYS[1], unpack(h))
if refresh then
  if redis.call('ZADD', KEYS[4], now, ARGV[2]) == 1 and ttl ~= '' then
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - ttl)
  end
  if ttl ~= '' then
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
    if redis.call('PEXPIRE', KEYS[3], ttl) == 0 then
      redis.call('SADD', KEYS[3], string.sub(ARGV[2], 17))
      redis.call('PEXPIRE', KEYS[3], ttl)
    end
    redis.call('PEXPIRE', KEYS[4], ttl)
  else
    redis.call('SADD', KEYS[3], string.sub(ARGV[2], 17))
    redis.call('PERSIST', KEYS[1])
    redis.call('PERSIST', KEYS[2])
    redis.call('PERSIST', KEYS[3])
    redis.call('PERSIST', KEYS[4])
  end
end
return {switched, stored}
