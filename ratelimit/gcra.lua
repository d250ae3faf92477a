-- gcra.lua: GCRA over one or more buckets, all or nothing.
--
-- KEYS[1..N]  the buckets, all in one hash slot. Each holds its theoretical
--             arrival time (TAT) in microseconds since the script's epoch.
-- ARGV[1]     max wait in microseconds: 0 spends only what fits now
--             (Allow); > 0 also reserves a spend that fits within that
--             wait (Wait); -1 applies the costs unconditionally, negative
--             costs giving budget back (Adjust).
-- ARGV[2+3(i-1)], ARGV[3+3(i-1)], ARGV[4+3(i-1)]
--             for bucket i: emission interval (microseconds per unit),
--             burst offset (interval * burst, microseconds), cost (units).
--
-- Returns {allowed, wait, then for each bucket: remaining, reset, wait_i}:
--   allowed   1 if every cost was spent (or reserved), else 0 (nothing
--             was written);
--   wait      microseconds until the spend takes effect (0 when it fits
--             now); when allowed is 0, how long until it would fit;
--   remaining units bucket i could still spend now (floored, >= 0);
--   reset     microseconds until bucket i is full again;
--   wait_i    microseconds bucket i alone needs before its cost fits.
--
-- Each bucket is charged its own cost on its own timeline: its TAT moves
-- by cost * interval from where it stands, never to the time the slowest
-- bucket fits. So a reservation (ARGV[1] > 0) counts in every budget from
-- the moment it is made, not when its wait ends; a waiter holds exactly
-- its cost of each budget, others see exactly that much less Remaining,
-- and a refund of the costs (ARGV[1] = -1, negative costs) restores every
-- bucket exactly.
--
-- The time comes from Redis TIME, so every instance shares one clock;
-- writing after TIME needs effects replication, the default since Redis 5.
-- Keys expire when their bucket is full again (a missing key is a full
-- bucket), so idle budgets take no memory.

local ceil, floor = math.ceil, math.floor
local EPOCH = 1700000000 -- seconds; keeps the microsecond values exact in doubles
local t = redis.call('TIME')
local now = (t[1] - EPOCH) * 1000000 + t[2]
local maxwait = tonumber(ARGV[1])
local n = #KEYS

-- Each ARGV number is parsed once; b holds, for bucket i, its TAT, its
-- interval, its offset and what its cost moves the TAT (cost * interval)
-- at b[4i-3], b[4i-2], b[4i-1], b[4i].
local b = {}
local tact = now
for i = 1, n do
  local a = 3 * i - 1
  local iv = tonumber(ARGV[a])
  local off = tonumber(ARGV[a + 1])
  local step = tonumber(ARGV[a + 2]) * iv
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local j = 4 * i
  b[j - 3], b[j - 2], b[j - 1], b[j] = tat, iv, off, step
  local at = tat + step - off
  if at > tact then tact = at end
end

local wait = tact - now
local allowed = 1
if maxwait >= 0 and wait > maxwait then allowed = 0 end

local out = {allowed, ceil(wait)}
for i = 1, n do
  local j = 4 * i
  local tat, iv, off, step = b[j - 3], b[j - 2], b[j - 1], b[j]
  local wi = tat + step - off - now
  if wi < 0 then wi = 0 end
  if allowed == 1 then
    tat = tat + step
    if tat <= now then
      redis.call('DEL', KEYS[i])
      tat = now
    else
      -- Redis formats a number argument with %.17g, which round-trips the
      -- double (tostring would print 14 digits and lose precision).
      redis.call('SET', KEYS[i], tat, 'PX', ceil((tat - now) / 1000))
    end
  end
  local remaining = floor((now - tat + off) / iv)
  if remaining < 0 then remaining = 0 end
  out[3 * i] = remaining
  out[3 * i + 1] = ceil(tat - now)
  out[3 * i + 2] = ceil(wi)
end
return out
