-- Decides one request's checks that share a principal (one hash slot), all
-- or nothing.
--
-- Numbers are exact integers in Lua's doubles: a moment is a pair (seconds,
-- nanoseconds below 10^9) since the Unix epoch, and so is a duration, so
-- that no value comes near 2^53 (a pair is exact for any window up to 366
-- days and any time). Only the rare paths (a GCRA rescale after a quota
-- change, a fixed window whose period is not whole milliseconds) use the
-- exact big integers of bignum.lua.
--
-- KEYS[1..C]: one key per check (its bucket); then two per penalty: its ban
-- and its refusals.
-- ARGV[1]: 'r' to read Redis's clock (TIME), else the layer's time: ARGV[1]
--          seconds and ARGV[2] nanoseconds.
-- ARGV[3]: '1' if the group may charge ('0': an earlier group refused the
--          request, so this one only reads, and counts penalty refusals).
-- ARGV[4]: '1' if shadow checks may be charged ('0': an earlier group's
--          shadow check refused).
-- ARGV[5]: C, the number of checks; ARGV[6]: P, the number of penalties.
-- Then six arguments per penalty: its check (1-based), the refusals that
-- start a ban, `within` (seconds, nanoseconds), `ban` (seconds, nanoseconds).
-- Then per check: its kind ('g' GCRA, 'f' fixed window), shadow ('1'/'0'),
-- W (its number of windows), the Lua pattern of its stored value in the
-- current layout (see below), the TTL slack in ms (0 on Redis's clock), and
-- per window:
--   GCRA:          its tag 'g<period>@<interval>=', capacity (interval *
--                  limit) and increment (interval * cost), each as seconds
--                  and nanoseconds
--   fixed window:  its tag 'f<period>=', its period in whole ms (0 if it is
--                  not whole ms), its limit, the cost
--
-- A bucket's value (SET ... PX) holds all its windows, each tag followed by
-- 'a,b;': GCRA the theoretical arrival time (seconds, nanoseconds); fixed
-- window its index mod 2^32 and count. Windows are known by algorithm and
-- period; a GCRA window also keeps the interval it was charged with. A
-- value in the current layout is read with one pattern match; any other
-- (a changed quota) is read entry by entry: a GCRA window charged at
-- another interval is rescaled, and windows the quota no longer has are
-- kept while they count. The key expires one millisecond after its last
-- window equals a fresh one. A refused request writes nothing but the
-- rescale of a changed quota and its penalty refusals.
--
-- Penalties (the rule of the in-memory penalty box): a ban 's,n' (its end)
-- in force on any penalty refuses the request before any window is read,
-- and is not extended. A request refused by its windows counts a refusal
-- for each penalty whose check refused: its refusals list keeps the times
-- ('s,n', newest first) of at most refusals - 1 earlier ones that still
-- count (a refusal counts for `within` after it); when that many are kept,
-- this one starts a ban of `ban` and the list is dropped.
--
-- Returns integers: the time decided at (seconds, nanoseconds), admitted
-- (1/0: the enforced windows admit), shadow admitted (1/0), the ban kind (0
-- none, 1 a ban in force refused the request, and nothing else follows, 2
-- this refusal started one), the ban's check (1-based) and time left
-- (seconds, nanoseconds); then two per window: the state it was decided on
-- (GCRA: the arrival time, rescaled to the current interval, as seconds and
-- nanoseconds; fixed window: index and count as stored; 0 0 for none). The
-- caller recomputes every status from these with the same integer
-- arithmetic as its in-memory store.

local B = 1000000000
local S, N
local layer = ARGV[1] ~= 'r'
if layer then
  S, N = ARGV[1] + 0, ARGV[2] + 0
else
  local t = redis.call('TIME')
  S, N = t[1] + 0, t[2] * 1000
end
local charge, shadows_ok = ARGV[3] == '1', ARGV[4] == '1'
local C, P = ARGV[5] + 0, ARGV[6] + 0

local function bad(key)
  return redis.error_reply('tower-ratelimit: unexpected value at key ' .. key)
end

-- ms from now until the moment (s, n), rounded up, plus one.
local function ttl_until(s, n)
  local d = n - N + 999999
  return (s - S) * 1000 + (d - d % 1000000) / 1000000 + 1
end

-- A ban in force refuses before any window is read.
for p = 1, P do
  local key = KEYS[C + 2 * p - 1]
  local raw = redis.call('GET', key)
  if raw then
    local es, en = string.match(raw, '^(%d+),(%d+)$')
    if not es then return bad(key) end
    es, en = es + 0, en + 0
    if es > S or (es == S and en > N) then
      local ls, ln = es - S, en - N
      if ln < 0 then ls, ln = ls - 1, ln + B end
      return { S, N, 0, 0, 1, ARGV[7 + 6 * (p - 1)] + 0, ls, ln }
    end
  end
end

-- The rare paths' exact integers.
local X
local function big()
  if not X then X = bignum() end
  return X
end

-- A moment as a big integer of nanoseconds.
local function big_time(s, n)
  local Y = big()
  return Y.add(Y.mul(Y.from_int(s), Y.from_int(B)), Y.from_int(n))
end

-- A GCRA arrival time (ts, tn) charged at `old` ns per request, expressed
-- at `new` (decimal strings) with the same number of requests used: the
-- debt (tat - now) scaled by new / old, rounded up, so that a conversion
-- never frees a fraction of a request; at most 2^62 ns of debt.
local function rescale(ts, tn, new, old)
  local Y = big()
  local debt = Y.sub(big_time(ts, tn), big_time(S, N))
  local q, r = Y.divmod(Y.mul(debt, Y.dec(new)), Y.dec(old))
  if not Y.is_zero(r) then q = Y.add(q, Y.ONE) end
  local cap = Y.dec('4611686018427387904')
  if Y.cmp(q, cap) > 0 then q = cap end
  local qs, qn = Y.divmod(q, Y.from_int(B))
  local s, n = S + Y.to_num(qs), N + Y.to_num(qn)
  if n >= B then s, n = s + 1, n - B end
  return s, n
end

-- The current index (mod 2^32) of a fixed window of `period` ns (a decimal
-- string) and the ms until it ends, rounded up, exactly.
local function fixed_slow(period)
  local Y = big()
  local p = Y.dec(period)
  local q, r = Y.divmod(big_time(S, N), p)
  local ms, rest = Y.divmod(Y.sub(p, r), Y.from_int(1000000))
  local left = Y.to_num(ms)
  if not Y.is_zero(rest) then left = left + 1 end
  return Y.to_num(q) % 4294967296, left
end

-- The index (mod 2^32) of the current window of a fixed window of `pm` ms
-- (0: not whole ms; then `tag` names the period) and the ms until it ends.
local function fixed_now(pm, tag)
  if pm > 0 then
    local m = S * 1000 + (N - N % 1000000) / 1000000
    local r = m % pm
    return ((m - r) / pm) % 4294967296, pm - r
  end
  return fixed_slow(string.match(tag, '^f(%d+)='))
end

-- Reads a value not in the current layout entry by entry, for check `c`
-- whose window arguments start at `a` (`stride` apart): returns the states
-- in the current order (two per window), whether a GCRA window was rescaled
-- (the value must then be written whatever is decided), and the entries of
-- windows the quota no longer has that still count (kept as they are).
local function read_slow(raw, key, W, a, stride)
  local stored, order = {}, {}
  local pos = 1
  while pos <= #raw do
    local tag, id, interval, x, y, nxt =
      string.match(raw, '^(([gf]%d+)@?(%d*)=)(%d+),(%d+);()', pos)
    if not tag or (string.sub(id, 1, 1) == 'g') ~= (interval ~= '') then
      return nil
    end
    stored[id] = { tag, interval, x + 0, y + 0 }
    order[#order + 1] = id
    pos = nxt
  end
  local m, rescaled, kept = {}, false, ''
  local wanted = {}
  for w = 1, W do
    local tag = ARGV[a + (w - 1) * stride]
    local id, interval = string.match(tag, '^([gf]%d+)@?(%d*)=$')
    wanted[id] = true
    local e = stored[id]
    local x, y = 0, 0
    if e then
      x, y = e[3], e[4]
      if interval ~= '' and e[2] ~= interval and e[2] ~= '0'
          and (x > S or (x == S and y > N)) then
        x, y = rescale(x, y, interval, e[2])
        rescaled = true
      end
    end
    m[2 * w - 1], m[2 * w] = x, y
  end
  for _, id in ipairs(order) do
    local e = stored[id]
    if not wanted[id] then
      local alive
      if e[2] ~= '' then
        alive = e[3] > S or (e[3] == S and e[4] > N)
      else
        local period = string.match(id, '^f(%d+)$') + 0
        local pm = period % 1000000 == 0 and period / 1000000 or 0
        alive = e[3] == fixed_now(pm, e[1])
      end
      if alive then kept = kept .. e[1] .. e[3] .. ',' .. e[4] .. ';' end
    end
  end
  return m, rescaled, kept
end

local out = { S, N, 0, 0, 0, 0, 0, 0 }
local o = 8
local admitted, shadow_admitted = true, true
local a = 7 + 6 * P
-- Per check: whether its windows admit, whether it is a shadow, the value
-- to write if charged and its TTL, the value to write if not (a rescale)
-- and its TTL.
local admits_of, shadow_of, value_of, ttl_of, keep_of, keep_ttl_of = {}, {}, {}, {}, {}, {}

for c = 1, C do
  local kind, shadow, W, pattern, slack = ARGV[a], ARGV[a + 1] == '1', ARGV[a + 2] + 0,
    ARGV[a + 3], ARGV[a + 4] + 0
  a = a + 5
  local key = KEYS[c]
  local raw = redis.call('GET', key)
  local m, rescaled, kept
  local stride = kind == 'g' and 5 or 4
  if raw then
    m = { string.match(raw, pattern) }
    if m[1] == nil then
      m, rescaled, kept = read_slow(raw, key, W, a, stride)
      if not m then return bad(key) end
    end
  end
  local ok = true
  local value, ttl, before, before_ttl = '', 0, '', 0
  for w = 1, W do
    local tag = ARGV[a]
    local x, y = 0, 0
    if m then x, y = m[2 * w - 1] + 0, m[2 * w] + 0 end
    out[o + 1], out[o + 2] = x, y
    o = o + 2
    if kind == 'g' then
      -- base = max(tat, now); next = base + increment; admitted if next <=
      -- now + capacity.
      local bs, bn = x, y
      if S > x or (S == x and N > y) then bs, bn = S, N end
      local ns, nn = bs + ARGV[a + 3], bn + ARGV[a + 4]
      if nn >= B then ns, nn = ns + 1, nn - B end
      local hs, hn = S + ARGV[a + 1], N + ARGV[a + 2]
      if hn >= B then hs, hn = hs + 1, hn - B end
      ok = ok and (ns < hs or (ns == hs and nn <= hn))
      value = value .. tag .. ns .. ',' .. nn .. ';'
      local t = ttl_until(ns, nn)
      if t > ttl then ttl = t end
      if rescaled then
        before = before .. tag .. x .. ',' .. y .. ';'
        t = ttl_until(x, y)
        if t > before_ttl then before_ttl = t end
      end
    elseif kind == 'f' then
      local current, left = fixed_now(ARGV[a + 1] + 0, tag)
      local used = 0
      if x == current then used = y end
      local total = used + ARGV[a + 3]
      ok = ok and total <= ARGV[a + 2] + 0
      value = value .. tag .. current .. ',' .. total .. ';'
      if left + 1 > ttl then ttl = left + 1 end
    else
      return redis.error_reply('tower-ratelimit: unknown window kind ' .. tostring(kind))
    end
    a = a + stride
  end
  if kept and kept ~= '' then
    -- Windows the quota no longer has: the key's TTL already covers them.
    local left = redis.call('PTTL', key)
    value, before = value .. kept, before .. kept
    if left > ttl then ttl = left end
    if left > before_ttl then before_ttl = left end
  end
  if shadow then
    shadow_admitted = shadow_admitted and ok
  else
    admitted = admitted and ok
  end
  admits_of[c], shadow_of[c] = ok, shadow
  value_of[c], ttl_of[c] = value, ttl + slack
  if rescaled then keep_of[c], keep_ttl_of[c] = before, before_ttl + slack end
end

-- Enforced checks are charged only if all of them admit; shadow checks only
-- if, besides, all shadow checks admit. A check that is not charged is left
-- as it was, but for a rescale to a changed quota.
local charged = charge and admitted
for c = 1, C do
  if charged and (not shadow_of[c] or (shadows_ok and shadow_admitted)) then
    redis.call('SET', KEYS[c], value_of[c], 'PX', ttl_of[c])
  elseif keep_of[c] then
    redis.call('SET', KEYS[c], keep_of[c], 'PX', keep_ttl_of[c])
  end
end
out[3] = admitted and 1 or 0
out[4] = shadow_admitted and 1 or 0
if admitted then return out end

-- A refusal counts towards the penalty of each check that refused.
for p = 1, P do
  local at = 7 + 6 * (p - 1)
  local check = ARGV[at] + 0
  if not admits_of[check] then
    local bkey, rkey = KEYS[C + 2 * p - 1], KEYS[C + 2 * p]
    local refusals = ARGV[at + 1] + 0
    local ws, wn, bs, bn = ARGV[at + 2] + 0, ARGV[at + 3] + 0, ARGV[at + 4] + 0, ARGV[at + 5] + 0
    local kept = redis.call('LRANGE', rkey, 0, -1)
    -- A key's time never runs backwards: a refusal earlier than the newest
    -- one kept counts at that newest time.
    local ts, tn = S, N
    if kept[1] then
      local ks, kn = string.match(kept[1], '^(%d+),(%d+)$')
      if ks then
        ks, kn = ks + 0, kn + 0
        if ks > ts or (ks == ts and kn > tn) then ts, tn = ks, kn end
      end
    end
    -- Those that still count at t: kept + within > t.
    local counting = 0
    for _, raw in ipairs(kept) do
      local ks, kn = string.match(raw, '^(%d+),(%d+)$')
      if not ks then break end
      ks, kn = ks + ws, kn + wn
      if kn >= B then ks, kn = ks + 1, kn - B end
      if ks < ts or (ks == ts and kn <= tn) then break end
      counting = counting + 1
    end
    -- The TTL slack of a layer's clock: the duration itself and a second.
    local function slack(s, n)
      if not layer then return 0 end
      return s * 1000 + (n + 999999 - (n + 999999) % 1000000) / 1000000 + 1000
    end
    if counting >= refusals - 1 then
      local es, en = ts + bs, tn + bn
      if en >= B then es, en = es + 1, en - B end
      redis.call('SET', bkey, es .. ',' .. en, 'PX', ttl_until(es, en) + slack(bs, bn))
      redis.call('DEL', rkey)
      if out[5] == 0 then
        local ls, ln = es - S, en - N
        if ln < 0 then ls, ln = ls - 1, ln + B end
        out[5], out[6], out[7], out[8] = 2, check, ls, ln
      end
    else
      redis.call('LPUSH', rkey, ts .. ',' .. tn)
      redis.call('LTRIM', rkey, 0, math.max(refusals - 2, 0))
      local us, un = ts + ws, tn + wn
      if un >= B then us, un = us + 1, un - B end
      redis.call('PEXPIRE', rkey, ttl_until(us, un) + slack(ws, wn))
    end
  end
end
return out
