-- In-flight slots shared by every node: one key's held slots, its line of
-- waiters, and its cap, kept under leases on Redis's clock (milliseconds,
-- exact in Lua numbers).
--
-- Per key, four Redis keys (KEYS, in this order, for every key a call
-- touches):
--   held  sorted set: a holder id -> the moment (ms) its lease runs out
--   line  sorted set: a waiter id -> its ticket (first come, first served)
--   wait  sorted set: a waiter id -> the moment (ms) its waiter lease runs out
--   cap   string: the cap of the key's latest new request
-- Expired holders and waiters are dropped before anything is decided. Every
-- key expires with its latest lease, and is deleted when it holds nothing,
-- so once traffic stops the database empties.
--
-- ARGV[1] = 'a': one request asks for a slot (or polls its place in line).
--   ARGV[2] id, ARGV[3] cap, ARGV[4] '1' for a new request ('0' for a
--   waiter's poll), ARGV[5] the most waiters allowed, ARGV[6] '1' if the
--   request may join the line ('0': it would time out at once), ARGV[7] the
--   slot lease (ms), ARGV[8] the waiter lease (ms).
--   Returns { verdict, in flight, position in line, line length }, with
--   verdict 1 granted, 2 waiting, 3 full (refused), 4 would wait (refused:
--   no time to wait).
--
-- ARGV[1] = 'm': the node's upkeep, for each group of four KEYS in turn.
--   ARGV[2] the slot lease (ms); then per group: the number of ids to free,
--   those ids (held slots, waiters, or both), the number of held ids to
--   renew, those ids.
--   Returns the 0-based indexes (counted over every group's renewals) of the
--   ids that were missing (Redis restarted or flushed, or their lease ran
--   out while the node could not reach it): they are held again, for their
--   requests are still in flight.

if redis.replicate_commands then
  pcall(redis.replicate_commands)
end

local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)

-- ZREM of many members, in chunks (Lua's unpack has a stack limit).
local function zrem_all(key, members)
  local i = 1
  while i <= #members do
    local last = math.min(i + 999, #members)
    redis.call('ZREM', key, unpack(members, i, last))
    i = last + 1
  end
end

-- Drops the expired holders and waiters of one key.
local function purge(held, line, wait)
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
  local gone = redis.call('ZRANGEBYSCORE', wait, '-inf', now)
  if #gone > 0 then
    zrem_all(wait, gone)
    zrem_all(line, gone)
  end
end

-- The latest expiry in a sorted set of expiries, minus now (0 if empty).
local function left(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #last == 0 then
    return 0
  end
  return math.max(1, math.ceil(last[2] - now))
end

-- Sets each key's TTL to its latest lease; the line lives as long as its
-- waiters, the cap as long as anything is held or waits.
local function expire(held, line, wait, cap)
  local h = left(held)
  if h > 0 then
    redis.call('PEXPIRE', held, h)
  end
  local w = left(wait)
  if w > 0 then
    redis.call('PEXPIRE', wait, w)
    redis.call('PEXPIRE', line, w)
  else
    redis.call('DEL', line)
  end
  local c = math.max(h, w)
  if c > 0 then
    if redis.call('EXISTS', cap) == 1 then
      redis.call('PEXPIRE', cap, c)
    end
  else
    redis.call('DEL', cap)
  end
end

if ARGV[1] == 'a' then
  local held, line, wait, cap_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  local id = ARGV[2]
  local new = ARGV[4] == '1'
  local max_queued = tonumber(ARGV[5])
  local may_join = ARGV[6] == '1'
  local lease = tonumber(ARGV[7])
  local waiter_lease = tonumber(ARGV[8])
  purge(held, line, wait)

  local cap = tonumber(ARGV[3])
  if new then
    redis.call('SET', cap_key, ARGV[3])
  else
    cap = tonumber(redis.call('GET', cap_key)) or cap
  end

  local n_held = redis.call('ZCARD', held)
  local n_line = redis.call('ZCARD', line)
  local free = cap - n_held
  local rank = redis.call('ZRANK', line, id)
  local verdict, position = 3, 0

  local function grant()
    redis.call('ZADD', held, now + lease, id)
    verdict = 1
  end

  if rank then
    if rank < free then
      redis.call('ZREM', line, id)
      redis.call('ZREM', wait, id)
      grant()
    else
      redis.call('ZADD', wait, now + waiter_lease, id)
      verdict, position = 2, rank
    end
  elseif redis.call('ZSCORE', held, id) then
    -- Granted already (an answer that was lost, then asked again).
    redis.call('ZADD', held, now + lease, id)
    verdict = 1
  elseif n_line == 0 and free > 0 then
    grant()
  elseif n_line < max_queued then
    if may_join then
      local last = redis.call('ZRANGE', line, -1, -1, 'WITHSCORES')
      local ticket = 1
      if #last > 0 then
        ticket = last[2] + 1
      end
      redis.call('ZADD', line, ticket, id)
      redis.call('ZADD', wait, now + waiter_lease, id)
      verdict, position = 2, n_line
    else
      verdict = 4
    end
  end

  expire(held, line, wait, cap_key)
  n_held = redis.call('ZCARD', held)
  n_line = redis.call('ZCARD', line)
  local in_flight = n_held
  if verdict ~= 1 then
    -- Slots free under the cap while someone waits are as good as handed
    -- to the line: they count as in flight.
    in_flight = n_held + math.max(0, math.min(n_line, cap - n_held))
  end
  return { verdict, in_flight, position, n_line }
end

if ARGV[1] == 'm' then
  local lease = tonumber(ARGV[2])
  local lost = {}
  local renewed = 0
  local at = 3
  for g = 1, #KEYS, 4 do
    local held, line, wait, cap_key = KEYS[g], KEYS[g + 1], KEYS[g + 2], KEYS[g + 3]
    purge(held, line, wait)
    local n_free = tonumber(ARGV[at])
    at = at + 1
    if n_free > 0 then
      local ids = {}
      for i = 1, n_free do
        ids[i] = ARGV[at + i - 1]
      end
      zrem_all(held, ids)
      zrem_all(line, ids)
      zrem_all(wait, ids)
      at = at + n_free
    end
    local n_renew = tonumber(ARGV[at])
    at = at + 1
    for i = 1, n_renew do
      local id = ARGV[at + i - 1]
      if not redis.call('ZSCORE', held, id) then
        lost[#lost + 1] = renewed
      end
      redis.call('ZADD', held, now + lease, id)
      renewed = renewed + 1
    end
    at = at + n_renew
    expire(held, line, wait, cap_key)
  end
  return lost
end

return redis.error_reply('unknown slots operation')
