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
-- The time comes from Redis TIME, so every instance shares one clock.
-- Keys expire when their bucket is full again (a missing key is a full
-- bucket), so idle budgets take no memory.

redis.replicate_commands()

local EPOCH = 1700000000 -- seconds; keeps the microsecond values exact in doubles
local t = redis.call('TIME')
local now = (tonumber(t[1]) - EPOCH) * 1000000 + tonumber(t[2])
local maxwait = tonumber(ARGV[1])

local n = #KEYS
local tats, intervals, offsets, costs, waits = {}, {}, {}, {}, {}
local tact = now -- when the spend takes effect
for i = 1, n do
  local base = 2 + 3 * (i - 1)
  intervals[i] = tonumber(ARGV[base])
  offsets[i] = tonumber(ARGV[base + 1])
  costs[i] = tonumber(ARGV[base + 2])
  local v = redis.call('GET', KEYS[i])
  local tat = now
  if v then
    tat = tonumber(v)
    if tat < now then tat = now end
  end
  tats[i] = tat
  local allowat = tat + costs[i] * intervals[i] - offsets[i]
  waits[i] = math.max(0, allowat - now)
  if allowat > tact then tact = allowat end
end

local wait = tact - now
local allowed = 1
if maxwait >= 0 and wait > maxwait then allowed = 0 end

local out = {allowed, math.ceil(wait)}
for i = 1, n do
  local tat = tats[i]
  if allowed == 1 then
    local from = tat
    if maxwait >= 0 and tact > from then from = tact end
    tat = from + costs[i] * intervals[i]
    if tat <= now then
      redis.call('DEL', KEYS[i])
      tat = now
    else
      redis.call('SET', KEYS[i], string.format('%.17g', tat), 'PX', math.ceil((tat - now) / 1000))
    end
  end
  local remaining = math.floor((now - tat + offsets[i]) / intervals[i])
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(tat - now)
  out[#out + 1] = math.ceil(waits[i])
end
return out
