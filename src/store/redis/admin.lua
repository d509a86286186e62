-- For operators (the admin API), off a request's path: one principal's keys
-- (one hash slot) at a time.
--
-- ARGV[1] = 'p': where keys stand, writing nothing. KEYS[1 .. ARGV[2]] are
--   read as they are (buckets and bans); the rest are in-flight `held` sets
--   (see slots.lua), whose live slots are counted on Redis's clock.
--   Returns Redis's TIME (seconds, microseconds), each value read (nil for
--   none), then each count, as text.
-- ARGV[1] = 'f': forgets KEYS (buckets, bans and refusals), and publishes
--   ARGV[3] (what was reset, see resets.rs) on the channel ARGV[2], so that
--   every store forgets what it remembers of them; returns how many keys
--   there were, and 1 if the reset was published, 0 if Redis refused it
--   (an ACL without the channel): the keys are deleted either way.

if ARGV[1] == 'f' then
  local deleted = redis.call('DEL', unpack(KEYS))
  local published = redis.pcall('PUBLISH', ARGV[2], ARGV[3])
  if type(published) == 'table' and published.err then
    return { deleted, 0 }
  end
  return { deleted, 1 }
end
local t = redis.call('TIME')
local out = { t[1], t[2] }
local read = tonumber(ARGV[2])
for i = 1, read do
  out[i + 2] = redis.call('GET', KEYS[i])
end
local now = t[1] * 1000 + math.floor(t[2] / 1000)
for i = read + 1, #KEYS do
  out[i + 2] = tostring(redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf'))
end
return out
