-- Decides one request over every window of every check, all or nothing.
--
-- Numbers cross the boundary as 24-bit limbs, most significant first, so
-- that each is an exact Lua number (a u64 is three limbs).
--
-- KEYS[i]: window i's key.
-- ARGV[1]: 'r' to use Redis's clock (TIME), 'l' to use ARGV[2..4], the
--          layer's time in nanoseconds since the Unix epoch.
-- Then eleven arguments per window, from ARGV[5]:
--   GCRA:          'g', shadow ('1'/'0'), interval, interval * limit,
--                  interval * cost (three limbs each, in nanoseconds)
--   fixed window:  'f', shadow, period (ns), limit, cost (three limbs each)
--
-- Stored values (SET ... PX): GCRA 't2:t1:t0:i2:i1:i0', the theoretical
-- arrival time and the interval it was charged with; fixed window
-- 'index:count', the window's index mod 2^32 and its count. Each key
-- expires one millisecond after its state equals a fresh key's. A refused
-- request charges nothing; the only write it may cause is the conversion of
-- a GCRA window charged at another interval (a changed quota).
--
-- Returns integers: the time decided at (three limbs), admitted (1/0),
-- shadow admitted (1/0), then three per window: the state the window was
-- decided on (GCRA: the arrival time, rescaled to the current interval;
-- fixed window: 0, index, count as stored, 0 0 0 for a key never seen). The
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

local raws = redis.call('MGET', unpack(KEYS))
local out = { n2, n1, n0, 0, 0 }
local writes = {}
local admitted, shadow_admitted = true, true

for i = 1, #KEYS do
  local at = 5 + (i - 1) * 11
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
end

-- Enforced windows are charged only if all of them admit; shadow windows
-- only if, besides, all shadow windows admit. A window that is not charged
-- is left as it was, but for a conversion to a changed quota.
for i = 1, #KEYS do
  local w = writes[i]
  if admitted and (shadow_admitted or not w[1]) then
    redis.call('SET', KEYS[i], w[2], 'PX', w[3])
  elseif w[4] then
    redis.call('SET', KEYS[i], w[4], 'PX', w[5])
  end
end
out[4] = admitted and 1 or 0
out[5] = shadow_admitted and 1 or 0
return out
