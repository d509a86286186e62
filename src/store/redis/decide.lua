-- Decides one request over every window of every check, all or nothing.
--
-- Numbers cross the boundary as 24-bit limbs, most significant first, so
-- that each is an exact Lua number (a u64 is three limbs).
--
-- KEYS[1..W]: the windows' keys; then two keys per penalty: its ban and its
-- refusals.
-- ARGV[1]: 'r' to use Redis's clock (TIME), 'l' to use ARGV[2..4], the
--          layer's time in nanoseconds since the Unix epoch.
-- ARGV[5]: W, the number of windows; ARGV[6]: P, the number of penalties.
-- Then eleven arguments per window, from ARGV[7]:
--   GCRA:          'g', shadow ('1'/'0'), interval, interval * limit,
--                  interval * cost (three limbs each, in nanoseconds)
--   fixed window:  'f', shadow, period (ns), limit, cost (three limbs each)
-- Then nine per penalty (an enforced check's): the index of its check's
-- first window (1-based), its number of windows, the refusals that start a
-- ban, and `within` and `ban` in nanoseconds (three limbs each).
--
-- Stored values (SET ... PX): GCRA 't2:t1:t0:i2:i1:i0', the theoretical
-- arrival time and the interval it was charged with; fixed window
-- 'index:count', the window's index mod 2^32 and its count. Each key
-- expires one millisecond after its state equals a fresh key's. A refused
-- request charges nothing; the only write it may cause is the conversion of
-- a GCRA window charged at another interval (a changed quota), and the
-- counting of its refusal towards penalties.
--
-- Penalties (the rule of the in-memory penalty box): a ban 'e2:e1:e0' (its
-- end) in force on any penalty refuses the request before any window is
-- read, and is not extended. A request refused by its windows counts a
-- refusal for each penalty whose check refused: its refusals list keeps the
-- times ('t2:t1:t0', newest first) of at most refusals - 1 earlier ones that
-- still count (a refusal counts for `within` after it); when that many are
-- kept, this one starts a ban of `ban` and the list is dropped.
--
-- Returns integers: the time decided at (three limbs), admitted (1/0),
-- shadow admitted (1/0), then three per window: the state the window was
-- decided on (GCRA: the arrival time, rescaled to the current interval;
-- fixed window: 0, index, count as stored, 0 0 0 for a key never seen);
-- then the ban: 0 (none), 1 (one in force refused the request: the windows
-- were not read and their states are 0) or 2 (this refusal started one),
-- the penalty's index (1-based), and the ban's time left (three limbs). The
-- caller recomputes every status from these with the same integer
-- arithmetic as its in-memory store.

if redis.replicate_commands then
  pcall(redis.replicate_commands)
end

local n2, n1, n0
if ARGV[1] == 'r' then
  local t = redis.call('TIME')
  local secs, micros = t[1] + 0, t[2] + 0
  -- secs * 10^9 + micros * 1000, with 10^9 = 59 * 2^24 + 10144256.
  local s0 = secs % LIMB
  local s1 = (secs - s0) / LIMB
  n2, n1, n0 = norm3(s1 * 59, s0 * 59 + s1 * 10144256, s0 * 10144256 + micros * 1000)
else
  n2, n1, n0 = ARGV[2] + 0, ARGV[3] + 0, ARGV[4] + 0
end

-- Nanoseconds to whole milliseconds, rounded up, plus one: a TTL just past
-- the moment the state becomes a fresh key's (on Redis's clock).
local function ttl_ms(a2, a1, a0)
  return div_ceil3(a2, a1, a0, 1000000) + 1
end

-- On the layer's clock that moment is in the layer's time, which may run
-- at another rate than Redis's (a test's manual clock): a window's TTL then
-- gets its period and one more second of slack.
local layer_clock = ARGV[1] ~= 'r'

-- tat - now, scaled by new / old and rounded up, added to now; saturating
-- at 2^62 ns of debt. Rare (a quota changed), so done in tables.
local function rescale(t2, t1, t0, new2, new1, new0, old2, old1, old0)
  local B = bignum()
  local debt = B.sub(B.norm({ t0, t1, t2 }), B.norm({ n0, n1, n2 }))
  local q, r = B.divmod(B.mul(debt, B.norm({ new0, new1, new2 })), B.norm({ old0, old1, old2 }))
  if not B.is_zero(r) then q = B.add(q, B.ONE) end
  if #q > 3 or (#q == 3 and q[3] >= 262144) then
    q = { 0, 0, 262144 } -- 2^62
  end
  return add3(n2, n1, n0, q[3] or 0, q[2] or 0, q[1])
end

local W, P = ARGV[5] + 0, ARGV[6] + 0
local out = { n2, n1, n0, 0, 0 }

-- Penalty p's arguments.
local function penalty(p)
  local at = 7 + W * 11 + (p - 1) * 9
  local v = {}
  for k = 0, 8 do v[k + 1] = ARGV[at + k] + 0 end
  return v
end

-- 'a:b:c' as three limbs (nil if the value is not that).
local function parse3(raw)
  local a, b, c = string.match(raw, '^(%d+):(%d+):(%d+)$')
  if not a then return nil end
  return a + 0, b + 0, c + 0
end

-- A TTL in ms for a moment `a - now` ahead; on the layer's clock with
-- `slack` (ns, three limbs) more and one more second.
local function ttl_until(a2, a1, a0, s2, s1, s0)
  local ttl = ttl_ms(sub3(a2, a1, a0, n2, n1, n0))
  if layer_clock then ttl = ttl + div_ceil3(s2, s1, s0, 1000000) + 1000 end
  return ttl
end

-- A ban in force refuses before any window is read.
for p = 1, P do
  local raw = redis.call('GET', KEYS[W + 2 * p - 1])
  if raw then
    local e2, e1, e0 = parse3(raw)
    if not e2 then
      return redis.error_reply('tower-ratelimit: unexpected value at key ' .. KEYS[W + 2 * p - 1])
    end
    if cmp3(e2, e1, e0, n2, n1, n0) > 0 then
      for _ = 1, 3 * W do out[#out + 1] = 0 end
      local l2, l1, l0 = sub3(e2, e1, e0, n2, n1, n0)
      for _, x in ipairs({ 1, p, l2, l1, l0 }) do out[#out + 1] = x end
      return out
    end
  end
end

local raws = W > 0 and redis.call('MGET', unpack(KEYS, 1, W)) or {}
local writes = {}
local admits_of = {}
local admitted, shadow_admitted = true, true

for i = 1, W do
  local at = 7 + (i - 1) * 11
  local kind, shadow = ARGV[at], ARGV[at + 1] == '1'
  local x2, x1, x0 = ARGV[at + 2] + 0, ARGV[at + 3] + 0, ARGV[at + 4] + 0
  local y2, y1, y0 = ARGV[at + 5] + 0, ARGV[at + 6] + 0, ARGV[at + 7] + 0
  local z2, z1, z0 = ARGV[at + 8] + 0, ARGV[at + 9] + 0, ARGV[at + 10] + 0
  local raw = raws[i]
  local admits, value, ttl
  local converted, converted_ttl
  if kind == 'g' then
    local t2, t1, t0 = 0, 0, 0
    if raw then
      local a, b, c, d, e, f = string.match(raw, '^(%d+):(%d+):(%d+):(%d+):(%d+):(%d+)$')
      if not a then
        return redis.error_reply('tower-ratelimit: unexpected value at key ' .. KEYS[i])
      end
      t2, t1, t0 = a + 0, b + 0, c + 0
      local o2, o1, o0 = d + 0, e + 0, f + 0
      if cmp3(t2, t1, t0, n2, n1, n0) > 0 and cmp3(o2, o1, o0, x2, x1, x0) ~= 0
          and num3(o2, o1, o0) > 0 then
        -- The quota changed: keep the count, not the time. The debt
        -- (tat - now) is rescaled to the new interval, rounded up, so that
        -- ceil(debt / interval), the requests still counted, is unchanged.
        t2, t1, t0 = rescale(t2, t1, t0, x2, x1, x0, o2, o1, o0)
        -- Kept converted whatever is decided: from now on the count
        -- returns at the new rate.
        converted = t2 .. ':' .. t1 .. ':' .. t0 .. ':' .. x2 .. ':' .. x1 .. ':' .. x0
        converted_ttl = ttl_ms(sub3(t2, t1, t0, n2, n1, n0))
        if layer_clock then
          converted_ttl = converted_ttl + div_ceil3(y2, y1, y0, 1000000) + 1000
        end
      end
    end
    local b2, b1, b0 = t2, t1, t0
    if cmp3(n2, n1, n0, t2, t1, t0) > 0 then
      b2, b1, b0 = n2, n1, n0
    end
    local a2, a1, a0 = add3(b2, b1, b0, z2, z1, z0)
    local h2, h1, h0 = add3(n2, n1, n0, y2, y1, y0)
    admits = cmp3(a2, a1, a0, h2, h1, h0) <= 0
    value = a2 .. ':' .. a1 .. ':' .. a0 .. ':' .. x2 .. ':' .. x1 .. ':' .. x0
    ttl = ttl_ms(sub3(a2, a1, a0, n2, n1, n0))
    if layer_clock then ttl = ttl + div_ceil3(y2, y1, y0, 1000000) + 1000 end
    out[#out + 1] = t2
    out[#out + 1] = t1
    out[#out + 1] = t0
  elseif kind == 'f' then
    local index, count = 0, 0
    if raw then
      local a, b = string.match(raw, '^(%d+):(%d+)$')
      if not a then
        return redis.error_reply('tower-ratelimit: unexpected value at key ' .. KEYS[i])
      end
      index, count = a + 0, b + 0
    end
    local q, r2, r1, r0 = divmod3(n2, n1, n0, x2, x1, x0)
    local current = q % 4294967296
    local used = 0
    if index == current then used = count end
    local total = used + num3(z2, z1, z0)
    admits = total <= num3(y2, y1, y0)
    value = current .. ':' .. total
    ttl = ttl_ms(sub3(x2, x1, x0, r2, r1, r0))
    if layer_clock then ttl = ttl + div_ceil3(x2, x1, x0, 1000000) + 1000 end
    out[#out + 1] = 0
    out[#out + 1] = index
    out[#out + 1] = count
  else
    return redis.error_reply('tower-ratelimit: unknown window kind ' .. tostring(kind))
  end
  if shadow then
    shadow_admitted = shadow_admitted and admits
  else
    admitted = admitted and admits
  end
  writes[i] = { shadow, value, ttl, converted, converted_ttl }
  admits_of[i] = admits
end

-- Enforced windows are charged only if all of them admit; shadow windows
-- only if, besides, all shadow windows admit. A window that is not charged
-- is left as it was, but for a conversion to a changed quota.
for i = 1, W do
  local w = writes[i]
  if admitted and (shadow_admitted or not w[1]) then
    redis.call('SET', KEYS[i], w[2], 'PX', w[3])
  elseif w[4] then
    redis.call('SET', KEYS[i], w[4], 'PX', w[5])
  end
end
out[4] = admitted and 1 or 0
out[5] = shadow_admitted and 1 or 0

-- A refusal counts towards the penalty of each check that refused.
local ban = { 0, 0, 0, 0, 0 }
if not admitted then
  for p = 1, P do
    local v = penalty(p)
    local refused = false
    for i = v[1], v[1] + v[2] - 1 do
      if not admits_of[i] then refused = true end
    end
    if refused then
      local bkey, rkey = KEYS[W + 2 * p - 1], KEYS[W + 2 * p]
      local refusals = v[3]
      local w2, w1, w0, b2, b1, b0 = v[4], v[5], v[6], v[7], v[8], v[9]
      local kept = redis.call('LRANGE', rkey, 0, -1)
      -- A key's time never runs backwards: a refusal earlier than the
      -- newest one kept counts at that newest time.
      local t2, t1, t0 = n2, n1, n0
      if kept[1] then
        local k2, k1, k0 = parse3(kept[1])
        if k2 and cmp3(k2, k1, k0, t2, t1, t0) > 0 then t2, t1, t0 = k2, k1, k0 end
      end
      -- Those that still count at t: kept + within > t.
      local counting = 0
      for _, raw in ipairs(kept) do
        local k2, k1, k0 = parse3(raw)
        if not k2 then break end
        local u2, u1, u0 = add3(k2, k1, k0, w2, w1, w0)
        if cmp3(u2, u1, u0, t2, t1, t0) <= 0 then break end
        counting = counting + 1
      end
      if counting >= refusals - 1 then
        local e2, e1, e0 = add3(t2, t1, t0, b2, b1, b0)
        redis.call('SET', bkey, e2 .. ':' .. e1 .. ':' .. e0, 'PX', ttl_until(e2, e1, e0, b2, b1, b0))
        redis.call('DEL', rkey)
        if ban[1] == 0 then
          local l2, l1, l0 = sub3(e2, e1, e0, n2, n1, n0)
          ban = { 2, p, l2, l1, l0 }
        end
      else
        redis.call('LPUSH', rkey, t2 .. ':' .. t1 .. ':' .. t0)
        redis.call('LTRIM', rkey, 0, math.max(refusals - 2, 0))
        local u2, u1, u0 = add3(t2, t1, t0, w2, w1, w0)
        redis.call('PEXPIRE', rkey, ttl_until(u2, u1, u0, w2, w1, w0))
      end
    end
  end
end
for _, x in ipairs(ban) do out[#out + 1] = x end
return out
