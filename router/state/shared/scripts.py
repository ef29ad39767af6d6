"""The Lua scripts behind ``RedisState``: each runs atomically inside Redis.

``ADMIT`` checks a key's budgets, rpm, tpm and concurrency and reserves them all, or
nothing, and reads the request's binding: one round trip, no read-then-write race
between replicas. Time is Redis's own (``TIME``), so replicas' clocks need not agree on
the limits; the budget windows' ids come from the replica (Lua in Redis has no calendar).
The arithmetic is ``memory.gcra`` and ``memory.window``; -1 stands for "no limit".

``SETTLE`` applies a batch of settlements: tpm corrections, concurrency releases and cost
charges, one call for everything the replica finished since its last batch. An admission
carries the batch waiting when it leaves (``ADMIT`` applies it first, in the same call):
under steady traffic no settlement costs a command of its own.

``ADMIT`` answers in one string that holds the key's ``x-ratelimit-*`` header lines
whole (resets written by ``SPAN``, as ``duration`` in Python): the request only splits
it and passes the lines on.
"""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# Settlements: per settlement, KEYS[k0 + 1..4]: tpm arrival time, concurrency slots, day
# spend, month spend; ARGV[a0]: 'tpm correction cost slot'; then the spend keys' TTLs.
_SETTLE_FN = """
local function settle(k0, a0, n, day_ttl, month_ttl)
  for i = 0, n - 1 do
    local k = k0 + i * 4
    local tpm, delta, cost, slot = string.match(ARGV[a0 + i], '^(%S+) (%S+) (%S+) ?(.*)$')
    tpm, delta = tonumber(tpm), tonumber(delta)
    if tpm > 0 and delta ~= 0 then
      local tat = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
      if delta > 0 and tat < now then tat = now end
      local new = tat + delta * 60 / tpm
      if new > now then
        redis.call('SET', KEYS[k + 1], string.format('%.6f', new), 'PX',
                   math.ceil((new - now) * 1000) + 1000)
      else
        redis.call('DEL', KEYS[k + 1])
      end
    end
    if slot ~= '' then redis.call('ZREM', KEYS[k + 2], slot) end
    if tonumber(cost) > 0 then
      redis.call('INCRBYFLOAT', KEYS[k + 3], cost)
      redis.call('EXPIRE', KEYS[k + 3], day_ttl)
      redis.call('INCRBYFLOAT', KEYS[k + 4], cost)
      redis.call('EXPIRE', KEYS[k + 4], month_ttl)
    end
  end
end
"""

# A span of whole milliseconds as OpenAI writes x-ratelimit-reset-*: 20ms, 6s, 1m30s.
SPAN = """
local function span(ms)
  if ms < 1000 then return string.format('%dms', ms) end
  local secs, frac = math.floor(ms / 1000), ms % 1000
  local text
  if frac > 0 then
    text = (string.gsub(string.format('%d.%03d', secs % 60, frac), '0+$', '')) .. 's'
  else
    text = string.format('%ds', secs % 60)
  end
  if secs < 60 then return text end
  local minutes = math.floor(secs / 60)
  local hours = math.floor(minutes / 60)
  if hours > 0 then return string.format('%dh%dm', hours, minutes % 60) .. text end
  return string.format('%dm', minutes) .. text
end
"""

ADMIT = (
    _NOW
    + _SETTLE_FN
    + SPAN
    + """
-- KEYS: 1 binding, 2 rpm arrival time, 3 tpm arrival time, 4 concurrency slots (zset),
--       5 day spend, 6 month spend, then 4 per settlement carried (_SETTLE_FN)
-- ARGV: 1 rpm, 2 tpm, 3 concurrent, 4 day usd, 5 month usd, 6 slot lifetime s,
--       7 day end, 8 month end (Unix times), 9 tokens, 10 slot id, 11 read binding,
--       12 the allowance asked ('requests tokens slots slot-life-s id', or '-'),
--       then 1 per settlement carried and, with any, the spend keys' TTLs
-- (what is the same for every request of a key comes first: the caller encodes it once)
local carried = (#KEYS - 6) / 4
if carried > 0 then  -- first: a slot the last request freed is free for this one
  settle(6, 13, carried, ARGV[13 + carried], ARGV[14 + carried])
end
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local binding = false
if ARGV[11] == '1' then binding = redis.call('GET', KEYS[1]) end

local function arrival(key)
  local v = tonumber(redis.call('GET', key) or '0')
  if v < now then return now end
  return v
end
local function window(kind, tat, limit)
  local ahead = tat - now
  if ahead < 0 then ahead = 0 end
  local left = math.floor((60 - ahead) * limit / 60 + 0.01)
  if left < 0 then left = 0 elseif left > limit then left = limit end
  return string.format('x-ratelimit-limit-%s: %d\\r\\nx-ratelimit-remaining-%s: %d\\r\\n' ..
                       'x-ratelimit-reset-%s: %s\\r\\n', kind, limit, kind, left, kind,
                       span(math.ceil(ahead * 1000)))
end
local req_tat, tok_tat = 0, 0
if rpm >= 0 then req_tat = arrival(KEYS[2]) end
if tpm >= 0 then tok_tat = arrival(KEYS[3]) end
local granted = '-'
local function answer(ok, code, limit, retry_s, reserved)
  local rate = ''
  if rpm >= 0 then rate = window('requests', req_tat, rpm) end
  if tpm >= 0 then rate = rate .. window('tokens', tok_tat, tpm) end
  -- One string, not an array: the client splits it once instead of parsing replies.
  local head = string.format('%d %s %s %d %d %s %d ', ok, code, limit,
                             math.ceil(retry_s * 1000), reserved, granted, #rate)
  if binding then return head .. rate .. '=' .. binding end
  return head .. rate .. '-'
end

local day, month = tonumber(ARGV[4]), tonumber(ARGV[5])
local day_spent, month_spent = 0, 0
if day >= 0 then
  day_spent = tonumber(redis.call('GET', KEYS[5]) or '0')
  if day_spent >= day then
    return answer(0, 'budget_exceeded', 'day', math.max(1, tonumber(ARGV[7]) - now), 0)
  end
end
if month >= 0 then
  month_spent = tonumber(redis.call('GET', KEYS[6]) or '0')
  if month_spent >= month then
    return answer(0, 'budget_exceeded', 'month', math.max(1, tonumber(ARGV[8]) - now), 0)
  end
end
local req_new, tok_new, cost = 0, 0, 0
if rpm >= 0 then
  req_new = req_tat + 60 / rpm
  if req_new - now > 60 then
    return answer(0, 'rate_limit_exceeded', 'rpm', req_new - now - 60, 0)
  end
end
if tpm >= 0 then
  cost = math.min(tonumber(ARGV[9]), tpm)
  tok_new = tok_tat + cost * 60 / tpm
  if tok_new - now > 60 then
    return answer(0, 'rate_limit_exceeded', 'tpm', tok_new - now - 60, 0)
  end
end
local busy = 0
if conc >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)  -- slots of replicas that died
  busy = redis.call('ZCARD', KEYS[4])
  if busy >= conc then
    return answer(0, 'rate_limit_exceeded', 'concurrent', 1, 0)
  end
end
-- The allowance asked, granted only while every limit stays at most half used with it
-- (near a limit, every request comes here, one at a time): its requests, tokens and
-- slots are reserved like a request's, and the replica admits from them on its own.
local lease_req, lease_tok = req_new, tok_new
if ARGV[12] ~= '-' then
  local n_req, n_tok, n_slots, held, id =
    string.match(ARGV[12], '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
  n_req, n_tok, n_slots, held = tonumber(n_req), tonumber(n_tok), tonumber(n_slots), tonumber(held)
  local ok = (day < 0 or day_spent * 2 < day) and (month < 0 or month_spent * 2 < month)
  if ok and rpm >= 0 then
    lease_req = req_new + n_req * 60 / rpm
    ok = lease_req - now <= 30
  end
  if ok and tpm >= 0 then
    lease_tok = tok_new + n_tok * 60 / tpm
    ok = lease_tok - now <= 30
  end
  if ok and conc >= 0 then ok = (busy + 1 + n_slots) * 2 <= conc end
  if ok then
    if conc >= 0 then  -- short-lived: the replica makes those in use long-lived at the end
      for i = 1, n_slots do redis.call('ZADD', KEYS[4], now + held, id .. '.' .. i) end
    end
    granted = string.format('%.6f,%.6f,%.6f', now, lease_req, lease_tok)
  else
    lease_req, lease_tok = req_new, tok_new
  end
end
if conc >= 0 then
  local life = tonumber(ARGV[6])
  redis.call('ZADD', KEYS[4], now + life, ARGV[10])
  redis.call('PEXPIRE', KEYS[4], math.ceil(life * 1000))
end
if rpm >= 0 then
  req_tat = req_new  -- this request's headers: the allowance is not its own
  redis.call('SET', KEYS[2], string.format('%.6f', lease_req), 'PX',
             math.ceil((lease_req - now) * 1000) + 1000)
end
if tpm >= 0 then
  tok_tat = tok_new
  redis.call('SET', KEYS[3], string.format('%.6f', lease_tok), 'PX',
             math.ceil((lease_tok - now) * 1000) + 1000)
end
return answer(1, '-', '-', 0, cost)
"""
)

SETTLE = (
    _NOW
    + _SETTLE_FN
    + """
local n = #KEYS / 4
settle(0, 1, n, ARGV[n + 1], ARGV[n + 2])
return 0
"""
)
