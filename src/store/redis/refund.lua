-- Takes back the charges a decision script made for a request that was
-- then refused by a later group of its checks (another principal, another
-- hash slot), or for shadow checks another group's shadow check refused.
--
-- KEYS: the buckets to refund (one hash slot). ARGV, per key: W, the
-- number of its windows to refund, then per window its tag (as in
-- decide.lua) and
--   GCRA ('g…'):    the arrival time the charge wrote and the one before it
--                   (seconds, nanoseconds each)
--   fixed ('f…'):   the window's index and the cost charged
--
-- A GCRA window is restored only if it still holds the time the charge
-- wrote with the same interval: under one interval a GCRA time only grows,
-- so then no other request was charged since. If one was, the charge stays
-- (subtracting it could take back part of the other request's charge: see
-- the module documentation). A fixed window still in the same window gives
-- back exactly the cost, whatever else was counted since.
--
-- Returns { the number of windows refunded }.

local refunded = 0
local a = 1
for k = 1, #KEYS do
  local key = KEYS[k]
  local W = ARGV[a] + 0
  a = a + 1
  local raw = redis.call('GET', key)
  local entries, at = {}, {}
  if raw then
    local pos = 1
    while pos <= #raw do
      local tag = string.match(raw, '^[gf]%d+@?%d*=', pos)
      if not tag or pos + #tag + 15 > #raw then
        return redis.error_reply('tower-ratelimit: unexpected value at key ' .. key)
      end
      local x, y, nxt = struct.unpack('<dd', raw, pos + #tag)
      entries[#entries + 1] = { tag, x, y }
      at[tag] = entries[#entries]
      pos = nxt
    end
  end
  local changed = false
  for _ = 1, W do
    local tag = ARGV[a]
    local e = at[tag]
    if string.sub(tag, 1, 1) == 'g' then
      if e and e[2] == ARGV[a + 1] + 0 and e[3] == ARGV[a + 2] + 0 then
        e[2], e[3] = ARGV[a + 3] + 0, ARGV[a + 4] + 0
        changed = true
        refunded = refunded + 1
      end
      a = a + 5
    else
      if e and e[2] == ARGV[a + 1] + 0 then
        e[3] = math.max(e[3] - ARGV[a + 2], 0)
        changed = true
        refunded = refunded + 1
      end
      a = a + 3
    end
  end
  if changed then
    -- A window back to a fresh one's state (no arrival time, no count) is
    -- dropped, and a key left with none is deleted.
    local parts = {}
    for _, e in ipairs(entries) do
      if e[3] ~= 0 or (string.sub(e[1], 1, 1) == 'g' and e[2] ~= 0) then
        parts[#parts + 1] = e[1] .. struct.pack('<dd', e[2], e[3])
      end
    end
    local ttl = redis.call('PTTL', key)
    if #parts == 0 then
      redis.call('DEL', key)
    elseif ttl > 0 then
      redis.call('SET', key, table.concat(parts), 'PX', ttl)
    else
      redis.call('SET', key, table.concat(parts))
    end
  end
end
return { refunded }
