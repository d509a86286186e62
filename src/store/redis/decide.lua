-- Decides one request's checks that share a principal (one hash slot), all
-- or nothing.
--
-- Numbers are exact integers in Lua's doubles: a moment is a pair (seconds,
-- nanoseconds below 10^9) since the Unix epoch, and so is a duration, so
-- that no value comes near 2^53 (a pair is exact for any window up to 366
-- days and any time). Numbers cross the boundary, and sit in stored values,
-- as little-endian doubles (`struct`): Lua never converts one to text. Only
-- the rare paths (a value in another layout, such as a GCRA window to
-- rescale after a quota change; a fixed window whose period is not whole
-- milliseconds) use the exact big integers of bignum.lua, spliced in below
-- and built only when a call needs them.
--
-- KEYS[1..C]: one key per check (its bucket); then two per penalty: its ban
-- and its refusals.
-- ARGV[1], the only argument: numbers as doubles, and text (a check's value
-- layout, a window's tag) as its length (a double) then its bytes:
--   the layer's time (seconds, nanoseconds), or -1 and 0 to read Redis's
--   clock (TIME); the moment on Redis's clock (seconds, nanoseconds) after
--   which the caller no longer waits for this call, or -1 and 0 for none;
--   1 if the group may charge (0: an earlier group refused
--   the request, so this one only reads, and counts penalty refusals); 1 if
--   shadow checks may be charged (0: an earlier group's shadow check
--   refused); C, the number of checks; P, the number of penalties; Q, where
--   the penalties' numbers start (1-based, in bytes);
--   then per check: its kind (0 GCRA, 1 fixed window), 1 if it is a
--   shadow, W (its number of windows), the TTL slack in ms (0 on Redis's
--   clock), the length of its value in the current layout, 1 if a window's
--   period is not whole ms; the struct format of its value in the current
--   layout (text); and per window its tag (text: 'g<period>@<interval>='
--   for GCRA, 'f<period>=' for a fixed window) and four numbers:
--     GCRA:          capacity (interval * limit) and increment (interval *
--                    cost), each as seconds and nanoseconds
--     fixed window:  its period in whole ms (0 if it is not whole ms), its
--                    limit, the cost, 0
--   then six per penalty: its check (1-based), the refusals that start a
--   ban, `within` (seconds, nanoseconds), `ban` (seconds, nanoseconds).
--
-- A bucket's value (SET ... PX) holds all its windows, each its tag then
-- two doubles: GCRA the theoretical arrival time (seconds, nanoseconds);
-- fixed window its index mod 2^32 and count. Windows are known by algorithm
-- and period; a GCRA window also keeps the interval it was charged with. A
-- value in the current layout is read with one `struct.unpack`; any other
-- (a changed quota) is read entry by entry: a GCRA window charged at
-- another interval is rescaled, and windows the quota no longer has are
-- kept while they count. The key expires one millisecond after its last
-- window equals a fresh one. A refused request writes nothing but the
-- rescale of a changed quota and its penalty refusals.
--
-- Penalties (the rule of the in-memory penalty box): a ban (its end, two
-- doubles) in force on any penalty refuses the request before any window is
-- read, and is not extended. A request refused by its windows counts a
-- refusal for each penalty whose check refused: its refusals list keeps the
-- times (two doubles, newest first) of at most refusals - 1 earlier ones
-- that still count (a refusal counts for `within` after it); when that many
-- are kept, this one starts a ban of `ban` and the list is dropped.
--
-- A call run after the moment its caller stopped waiting (Redis stalled, or
-- paused, or busy with a slow script) writes nothing and returns only the
-- time and the verdict 12: the caller has answered the request without it.
--
-- Returns one string of doubles: the time decided at (seconds,
-- nanoseconds); the verdict: 1 if the enforced windows admit, + 2 if the
-- shadow windows admit, + 4 if a ban in force refused the request (then
-- only the ban follows) or + 8 if this refusal started one, or 12 if the
-- call came too late; two per window:
-- the state it was decided on (GCRA: the arrival time, rescaled to the
-- current interval, as seconds and nanoseconds; fixed window: index and
-- count as stored; 0 0 for none); and with a ban, its check (1-based; for
-- bans this refusal started, the longest's, plus 256 times the bits of
-- every check of the first 32 whose ban it started, bit check - 1) and
-- time left (seconds, nanoseconds). The caller recomputes every status from
-- these with the same integer arithmetic as its in-memory store.

local B = 1000000000
local A = ARGV[1]
-- The header, and the first check's numbers, layout and first window.
local S, N, US, UN, charge, shadows, C, P, Q, kind, shadow, W, slack, length, exotic, layout,
  tag1, f1, f2, f3, f4, at = struct.unpack('<ddddddddddddddddc0dc0dddd', A)
local layer = S >= 0
if not layer or US >= 0 then
  local t = redis.call('TIME')
  local s, n = t[1] + 0, t[2] * 1000
  if US >= 0 and (s > US or (s == US and n > UN)) then
    return struct.pack('<ddd', s, n, 12)
  end
  if not layer then
    S, N = s, n
  end
end

-- A ban in force refuses before any window is read; of several, the
-- longest answers.
local held, held_s, held_n
for p = 1, P do
  local key = KEYS[C + 2 * p - 1]
  local raw = redis.call('GET', key)
  if raw then
    if #raw ~= 16 then
      return redis.error_reply('tower-ratelimit: unexpected value at key ' .. key)
    end
    local es, en = struct.unpack('<dd', raw)
    if es > S or (es == S and en > N) then
      local ls, ln = es - S, en - N
      if ln < 0 then ls, ln = ls - 1, ln + B end
      if not held or ls > held_s or (ls == held_s and ln > held_n) then
        held, held_s, held_n = struct.unpack('<d', A, Q + 48 * (p - 1)), ls, ln
      end
    end
  end
end
if held then return struct.pack('<dddddd', S, N, 4, held, held_s, held_n) end

-- The states, in a table when there are many; one check of one or two
-- windows keeps them in locals.
local out, o, x1, y1, x2, y2
local admitted, shadow_admitted = true, true
-- The rare paths' functions, built when a call needs them.
local R
-- With several checks, per check five entries: whether its windows admit,
-- whether it is a shadow, the value to write if it is charged and its TTL
-- (ms), and the value to write if not (a rescale) or false. With one, the
-- same in locals.
local plan = C > 1 and {} or nil
local ok, value, ttl, keep, keep_ttl

for c = 1, C do
  if c > 1 then
    kind, shadow, W, slack, length, exotic, layout, tag1, f1, f2, f3, f4, at =
      struct.unpack('<dddddddc0dc0dddd', A, at)
  end
  -- The second window's tag and numbers; past two, every window's, by 5.
  local tag2, g1, g2, g3, g4, more
  if W == 2 then
    tag2, g1, g2, g3, g4, at = struct.unpack('<dc0dddd', A, at)
  elseif W > 2 then
    more = { tag1, f1, f2, f3, f4 }
    for i = 10, 5 * W, 5 do
      more[i - 4], more[i - 3], more[i - 2], more[i - 1], more[i], at =
        struct.unpack('<dc0dddd', A, at)
    end
  end
  shadow = shadow == 1
  if not out and (plan or W > 2) then out, o = { S, N, 0 }, 3 end
  local key = KEYS[c]
  local raw = redis.call('GET', key)
  local t1, m1, m2, t2, m3, m4, m, rescaled, kept
  if raw and #raw == length then
    if W == 1 then
      t1, m1, m2 = struct.unpack(layout, raw)
      if t1 ~= tag1 then m1 = nil end
    elseif W == 2 then
      t1, m1, m2, t2, m3, m4 = struct.unpack(layout, raw)
      if t1 ~= tag1 or t2 ~= tag2 then m1 = nil end
    else
      local u = { struct.unpack(layout, raw) }
      m = {}
      for w = 1, W do
        if u[3 * w - 2] ~= more[5 * w - 4] then m = nil break end
        m[2 * w - 1], m[2 * w] = u[3 * w - 1], u[3 * w]
      end
      m1 = m and 0
    end
  end
  if (raw and m1 == nil) or exotic == 1 then
    if not R then
      -- @bignum
      R = {}
      local Y = bignum()

      -- A moment as a big integer of nanoseconds.
      local function big_time(s, n)
        return Y.add(Y.mul(Y.from_int(s), Y.from_int(B)), Y.from_int(n))
      end

      -- The current index (mod 2^32) of a fixed window of `period` ns (its
      -- tag 'f<period>=') and the ms until it ends, rounded up, exactly.
      function R.fixed(tag)
        local p = Y.dec(string.match(tag, '^f(%d+)='))
        if Y.is_zero(p) then error('tower-ratelimit: a period of 0') end
        local q, r = Y.divmod(big_time(S, N), p)
        local ms, rest = Y.divmod(Y.sub(p, r), Y.from_int(1000000))
        local left = Y.to_num(ms)
        if not Y.is_zero(rest) then left = left + 1 end
        return Y.to_num(q) % 4294967296, left
      end

      -- The period of a fixed window (its tag 'f<period>='), in ms rounded up.
      function R.period_ms(tag)
        local ms, rest = Y.divmod(Y.dec(string.match(tag, '^f(%d+)=')), Y.from_int(1000000))
        if Y.is_zero(rest) then return Y.to_num(ms) end
        return Y.to_num(ms) + 1
      end

      -- A GCRA arrival time (ts, tn) charged at `old` ns per request,
      -- expressed at `new` (decimal strings) with the same number of
      -- requests used: the debt (tat - now) scaled by new / old, rounded
      -- up, so that a conversion never frees a fraction of a request; at
      -- most 2^64 - 2^57 ns after the epoch (as the Rust side caps it).
      local function rescale(ts, tn, new, old)
        local debt = Y.sub(big_time(ts, tn), big_time(S, N))
        local q, r = Y.divmod(Y.mul(debt, Y.dec(new)), Y.dec(old))
        if not Y.is_zero(r) then q = Y.add(q, Y.ONE) end
        local cap = Y.sub(Y.dec('18302628885633695744'), big_time(S, N))
        if Y.cmp(q, cap) > 0 then q = cap end
        local qs, qn = Y.divmod(q, Y.from_int(B))
        local s, n = S + Y.to_num(qs), N + Y.to_num(qn)
        if n >= B then s, n = s + 1, n - B end
        return s, n
      end

      -- Reads a value not in the current layout entry by entry, for a
      -- check whose windows' tags are tags[1 .. W]: the states in
      -- the current order (two per window), whether a GCRA window was
      -- rescaled (the value must then be written whatever is decided), and
      -- the entries of windows the quota no longer has that still count
      -- (kept as they are). Nil for a value that is not one of ours.
      function R.read(raw, W, tags)
        local stored, order = {}, {}
        local pos = 1
        while pos <= #raw do
          local tag, id, interval = string.match(raw, '^(([gf]%d+)@?(%d*)=)', pos)
          if not tag or (string.sub(id, 1, 1) == 'g') ~= (interval ~= '')
              or pos + #tag + 15 > #raw then
            return nil
          end
          local x, y, nxt = struct.unpack('<dd', raw, pos + #tag)
          stored[id] = { tag, interval, x, y }
          order[#order + 1] = id
          pos = nxt
        end
        local m, rescaled, kept, wanted = {}, false, '', {}
        for w = 1, W do
          local id, interval = string.match(tags[w], '^([gf]%d+)@?(%d*)=$')
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
              -- As the fixed-window step below reads it.
              local current = R.fixed(e[1])
              alive = e[3] == current
                or (e[4] > 0 and (e[3] - current) % 4294967296 < 1048576)
            end
            if alive then kept = kept .. e[1] .. struct.pack('<dd', e[3], e[4]) end
          end
        end
        return m, rescaled, kept
      end
    end
    if raw and m1 == nil then
      -- Past two windows every tag is in `more` (`tag2` is for two).
      local tags = { tag1, tag2 }
      if W > 2 then
        for w = 2, W do tags[w] = more[5 * w - 4] end
      end
      m, rescaled, kept = R.read(raw, W, tags)
      if not m then
        return redis.error_reply('tower-ratelimit: unexpected value at key ' .. key)
      end
    end
  end
  ok, value, ttl, keep, keep_ttl = true, '', 0, '', 0
  -- The new states of one or two windows, packed at once with the tags.
  local n1x, n1y, n2x, n2y
  for w = 1, W do
    local tag, n1, n2, n3, n4 = tag1, f1, f2, f3, f4
    if more then
      local i = 5 * w
      tag, n1, n2, n3, n4 = more[i - 4], more[i - 3], more[i - 2], more[i - 1], more[i]
    elseif w == 2 then
      tag, n1, n2, n3, n4 = tag2, g1, g2, g3, g4
    end
    local x, y = 0, 0
    if m then
      x, y = m[2 * w - 1], m[2 * w]
    elseif m1 then
      if w == 1 then x, y = m1, m2 else x, y = m3, m4 end
    end
    if out then
      out[o + 1], out[o + 2] = x, y
      o = o + 2
    elseif w == 1 then
      x1, y1 = x, y
    else
      x2, y2 = x, y
    end
    if kind == 0 then
      -- base = max(tat, now); next = base + increment; admitted if next <=
      -- now + capacity.
      local ns, nn = x, y
      if S > x or (S == x and N > y) then ns, nn = S, N end
      ns, nn = ns + n3, nn + n4
      if nn >= B then ns, nn = ns + 1, nn - B end
      local hs, hn = S + n1, N + n2
      if hn >= B then hs, hn = hs + 1, hn - B end
      if ok and (ns < hs or (ns == hs and nn <= hn)) then
        if W > 2 then
          value = value .. tag .. struct.pack('<dd', ns, nn)
        elseif w == 1 then
          n1x, n1y = ns, nn
        else
          n2x, n2y = ns, nn
        end
        -- ms until next, rounded up, plus one.
        local d = nn - N + 999999
        local t = (ns - S) * 1000 + (d - d % 1000000) / 1000000 + 1
        if t > ttl then ttl = t end
      else
        ok = false
      end
      if rescaled then
        keep = keep .. tag .. struct.pack('<dd', x, y)
        local d = y - N + 999999
        local t = (x - S) * 1000 + (d - d % 1000000) / 1000000 + 1
        if t > keep_ttl then keep_ttl = t end
      end
    else
      local current, left
      if n1 > 0 then
        local ms = S * 1000 + (N - N % 1000000) / 1000000
        local r = ms % n1
        current, left = ((ms - r) / n1) % 4294967296, n1 - r
      else
        current, left = R.fixed(tag)
      end
      local total = n3
      if x == current then
        total = total + y
      elseif y > 0 and (x - current) % 4294967296 < 1048576 then
        -- Counted in a later window by a clock a little ahead of this one
        -- (the memory store's `counting_window`): this moment counts there
        -- too, so that no window's count is overwritten by an earlier one.
        local ahead = (x - current) % 4294967296
        left = left + ahead * (n1 > 0 and n1 or R.period_ms(tag))
        current, total = x, total + y
      end
      if ok and total <= n2 then
        if W > 2 then
          value = value .. tag .. struct.pack('<dd', current, total)
        elseif w == 1 then
          n1x, n1y = current, total
        else
          n2x, n2y = current, total
        end
        if left + 1 > ttl then ttl = left + 1 end
      else
        ok = false
      end
    end
  end
  if ok and W == 1 then
    value = struct.pack(layout, tag1, n1x, n1y)
  elseif ok and W == 2 then
    value = struct.pack(layout, tag1, n1x, n1y, tag2, n2x, n2y)
  end
  if kept and kept ~= '' then
    -- Windows the quota no longer has: the key's TTL already covers them.
    local left = redis.call('PTTL', key)
    value, keep = value .. kept, keep .. kept
    if left > ttl then ttl = left end
    if left > keep_ttl then keep_ttl = left end
  end
  if shadow then
    shadow_admitted = shadow_admitted and ok
  else
    admitted = admitted and ok
  end
  ttl, keep_ttl, keep = ttl + slack, keep_ttl + slack, rescaled and keep
  if plan then
    local i = 5 * c
    plan[i - 4], plan[i - 3], plan[i - 2], plan[i - 1], plan[i] = ok, shadow, value, ttl, keep
    if keep then plan[i - 1] = { ttl, keep_ttl } end
  end
end

-- Enforced checks are charged only if all of them admit; shadow checks only
-- if, besides, all shadow checks admit. A check that is not charged is left
-- as it was, but for a rescale to a changed quota.
local charged = charge == 1 and admitted
local shadows_charged = charged and shadow_admitted and shadows == 1
if plan then
  for c = 1, C do
    local i = 5 * c
    ttl, keep = plan[i - 1], plan[i]
    if keep then ttl, keep_ttl = ttl[1], ttl[2] end
    if charged and (shadows_charged or not plan[i - 3]) then
      redis.call('SET', KEYS[c], plan[i - 2], 'PX', ttl)
    elseif keep then
      redis.call('SET', KEYS[c], keep, 'PX', keep_ttl)
    end
  end
elseif charged and (shadows_charged or not shadow) then
  redis.call('SET', KEYS[1], value, 'PX', ttl)
elseif keep then
  redis.call('SET', KEYS[1], keep, 'PX', keep_ttl)
end
local verdict = (admitted and 1 or 0) + (shadow_admitted and 2 or 0)
-- The longest ban this refusal started (of equal ones, the first): its
-- check and time left; and the checks of every ban it started (bit
-- check - 1, of the first 32).
local ban, ban_s, ban_n
local started = 0
-- The ban keys this refusal banned: a check that shares one with an earlier
-- check finds its ban in force and counts nothing (as in the memory store).
local banned = {}

-- A refusal counts towards the penalty of each check that refused.
for p = 1, admitted and 0 or P do
  local check, refusals, ws, wn, bs, bn = struct.unpack('<dddddd', A, Q + 48 * (p - 1))
  local refused
  if plan then refused = not plan[5 * check - 4] else refused = not ok end
  local bkey, rkey = KEYS[C + 2 * p - 1], KEYS[C + 2 * p]
  if refused and not banned[bkey] then
    -- ms from now until the moment (s, n), rounded up, plus one; on a layer's
    -- clock with the slack of the duration (s2, n2) and a second.
    local function ttl_until(s, n, s2, n2)
      local d = n - N + 999999
      local t = (s - S) * 1000 + (d - d % 1000000) / 1000000 + 1
      if layer then
        d = n2 + 999999
        t = t + s2 * 1000 + (d - d % 1000000) / 1000000 + 1000
      end
      return t
    end
    local kept = redis.call('LRANGE', rkey, 0, -1)
    -- A key's time never runs backwards: a refusal earlier than the newest
    -- one kept counts at that newest time.
    local ts, tn = S, N
    if kept[1] and #kept[1] == 16 then
      local ks, kn = struct.unpack('<dd', kept[1])
      if ks > ts or (ks == ts and kn > tn) then ts, tn = ks, kn end
    end
    -- Those that still count at t: kept + within > t.
    local counting = 0
    for _, raw in ipairs(kept) do
      if #raw ~= 16 then break end
      local ks, kn = struct.unpack('<dd', raw)
      ks, kn = ks + ws, kn + wn
      if kn >= B then ks, kn = ks + 1, kn - B end
      if ks < ts or (ks == ts and kn <= tn) then break end
      counting = counting + 1
    end
    if counting >= refusals - 1 then
      local es, en = ts + bs, tn + bn
      if en >= B then es, en = es + 1, en - B end
      redis.call('SET', bkey, struct.pack('<dd', es, en), 'PX', ttl_until(es, en, bs, bn))
      redis.call('DEL', rkey)
      banned[bkey] = true
      local ls, ln = es - S, en - N
      if ln < 0 then ls, ln = ls - 1, ln + B end
      if not ban then verdict = verdict + 8 end
      -- (The first 32 checks only: the sum stays exact in a double.)
      if check <= 32 then started = started + 2 ^ (check - 1) end
      if not ban or ls > ban_s or (ls == ban_s and ln > ban_n) then
        ban, ban_s, ban_n = check, ls, ln
      end
    else
      redis.call('LPUSH', rkey, struct.pack('<dd', ts, tn))
      redis.call('LTRIM', rkey, 0, math.max(refusals - 2, 0))
      local us, un = ts + ws, tn + wn
      if un >= B then us, un = us + 1, un - B end
      redis.call('PEXPIRE', rkey, ttl_until(us, un, ws, wn))
    end
  end
end
-- The check sent with a started ban carries the others' bits above it.
if ban then ban = ban + 256 * started end
if out then
  out[3] = verdict
  if ban then out[o + 1], out[o + 2], out[o + 3], o = ban, ban_s, ban_n, o + 3 end
  return struct.pack('<' .. string.rep('d', o), unpack(out))
end
if W == 1 then
  if ban then return struct.pack('<dddddddd', S, N, verdict, x1, y1, ban, ban_s, ban_n) end
  return struct.pack('<ddddd', S, N, verdict, x1, y1)
end
if ban then
  return struct.pack('<dddddddddd', S, N, verdict, x1, y1, x2, y2, ban, ban_s, ban_n)
end
return struct.pack('<ddddddd', S, N, verdict, x1, y1, x2, y2)
