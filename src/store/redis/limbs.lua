-- Exact unsigned integers for the rate-limit script.
--
-- Redis runs Lua 5.1, whose numbers are doubles: exact only up to 2^53,
-- while a nanosecond Unix time is about 2^61. So every time, interval and
-- state is kept as 24-bit limbs; every intermediate value of every
-- operation stays below 2^53, so the arithmetic is exact.

local LIMB = 16777216 -- 2^24

-- Values below 2^72 as three 24-bit limbs held in locals
-- (most significant first), so that a decision allocates no table and calls
-- no library function (both are slow in Redis's Lua). `%` and `/` on exact
-- integers below 2^53 are exact.

-- Carries c0, c1, c2 (each an exact integer, possibly >= 2^24) into limbs;
-- the fourth value is what overflows 2^72.
local function norm3(c2, c1, c0)
  local r0 = c0 % LIMB
  c1 = c1 + (c0 - r0) / LIMB
  local r1 = c1 % LIMB
  c2 = c2 + (c1 - r1) / LIMB
  local r2 = c2 % LIMB
  return r2, r1, r0, (c2 - r2) / LIMB
end

local function add3(a2, a1, a0, b2, b1, b0)
  local r2, r1, r0 = norm3(a2 + b2, a1 + b1, a0 + b0)
  return r2, r1, r0
end

-- a - b, for a >= b.
local function sub3(a2, a1, a0, b2, b1, b0)
  local d2, d1, d0 = a2 - b2, a1 - b1, a0 - b0
  if d0 < 0 then d0, d1 = d0 + LIMB, d1 - 1 end
  if d1 < 0 then d1, d2 = d1 + LIMB, d2 - 1 end
  return d2, d1, d0
end

local function cmp3(a2, a1, a0, b2, b1, b0)
  if a2 ~= b2 then return a2 < b2 and -1 or 1 end
  if a1 ~= b1 then return a1 < b1 and -1 or 1 end
  if a0 ~= b0 then return a0 < b0 and -1 or 1 end
  return 0
end

-- The value as a double (exact below 2^53).
local function num3(a2, a1, a0)
  return (a2 * LIMB + a1) * LIMB + a0
end

-- a / d rounded up, for 0 < d < 2^29, as a number (the quotient must be
-- below 2^53).
local function div_ceil3(a2, a1, a0, d)
  local q, r = 0, 0
  local cur = a2
  r = cur % d
  q = (cur - r) / d
  cur = r * LIMB + a1
  r = cur % d
  q = q * LIMB + (cur - r) / d
  cur = r * LIMB + a0
  r = cur % d
  q = q * LIMB + (cur - r) / d
  if r > 0 then q = q + 1 end
  return q
end

-- Quotient (a number, which must be below 2^48) and remainder (limbs) of
-- n / p, for p > 0.
local function divmod3(n2, n1, n0, p2, p1, p0)
  local q = num3(n2, n1, n0) / num3(p2, p1, p0)
  q = q - q % 1
  if q >= 281474976710656 then
    error('tower-ratelimit: quotient out of range')
  end
  local q0 = q % LIMB
  local q1 = (q - q0) / LIMB
  -- q * p, exactly: every partial product is below 2^48.
  local m2, m1, m0, over = norm3(q0 * p2 + q1 * p1, q0 * p1 + q1 * p0, q0 * p0)
  if over + q1 * p2 > 0 then
    error('tower-ratelimit: product out of range')
  end
  local steps = 0
  while cmp3(m2, m1, m0, n2, n1, n0) > 0 do
    m2, m1, m0 = sub3(m2, m1, m0, p2, p1, p0)
    q = q - 1
    steps = steps + 1
    if steps > 64 then error('tower-ratelimit: division did not converge') end
  end
  local r2, r1, r0 = sub3(n2, n1, n0, m2, m1, m0)
  while cmp3(r2, r1, r0, p2, p1, p0) >= 0 do
    r2, r1, r0 = sub3(r2, r1, r0, p2, p1, p0)
    q = q + 1
    steps = steps + 1
    if steps > 64 then error('tower-ratelimit: division did not converge') end
  end
  return q, r2, r1, r0
end
