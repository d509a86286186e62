-- Arbitrary-size exact integers, as tables of 24-bit limbs (least
-- significant first), for the decision's rare paths, whose values pass 2^53
-- (a quota change rescales a debt by new / old interval; a fixed window of a
-- period that is not whole milliseconds divides a time by it). Redis runs
-- Lua 5.1, whose numbers are doubles: every intermediate value here stays
-- below 2^53, so the arithmetic is exact. Built on demand: creating these
-- functions on every call would cost every decision.
local LIMB = 16777216 -- 2^24

local function bignum()
  -- Drops leading zero limbs (zero is {0}).
  local function norm(a)
    local n = #a
    while n > 1 and a[n] == 0 do
      a[n] = nil
      n = n - 1
    end
    return a
  end

  -- An exact integer 0 <= x < 2^53 as a number.
  local function from_int(x)
    local a = {}
    repeat
      local r = x % LIMB
      a[#a + 1] = r
      x = (x - r) / LIMB
    until x == 0
    return a
  end

  local ONE = from_int(1)

  -- The value as a double: exact below 2^53, an estimate above.
  local function to_num(a)
    local x = 0
    for i = #a, 1, -1 do
      x = x * LIMB + a[i]
    end
    return x
  end

  local function is_zero(a)
    return #a == 1 and a[1] == 0
  end

  -- -1, 0 or 1 as a < b, a == b, a > b (both normalized).
  local function cmp(a, b)
    if #a ~= #b then
      return #a < #b and -1 or 1
    end
    for i = #a, 1, -1 do
      if a[i] ~= b[i] then
        return a[i] < b[i] and -1 or 1
      end
    end
    return 0
  end

  local function add(a, b)
    local r, carry = {}, 0
    for i = 1, math.max(#a, #b) do
      local t = (a[i] or 0) + (b[i] or 0) + carry
      if t >= LIMB then
        r[i] = t - LIMB
        carry = 1
      else
        r[i] = t
        carry = 0
      end
    end
    if carry > 0 then
      r[#r + 1] = carry
    end
    return r
  end

  -- a - b, for a >= b.
  local function sub(a, b)
    local r, borrow = {}, 0
    for i = 1, #a do
      local t = a[i] - (b[i] or 0) - borrow
      if t < 0 then
        r[i] = t + LIMB
        borrow = 1
      else
        r[i] = t
        borrow = 0
      end
    end
    return norm(r)
  end

  -- a * m + c in place, for m, c < 2^24 (with m = 1, a's limbs may be
  -- larger: it then carries them into 24-bit limbs).
  local function mul_small_add(a, m, c)
    local carry = c
    for i = 1, #a do
      local t = a[i] * m + carry
      local low = t % LIMB
      a[i] = low
      carry = (t - low) / LIMB
    end
    while carry > 0 do
      local low = carry % LIMB
      a[#a + 1] = low
      carry = (carry - low) / LIMB
    end
    return norm(a)
  end

  local function mul(a, b)
    local r = {}
    for i = 1, #a + #b do
      r[i] = 0
    end
    for i = 1, #a do
      local carry = 0
      for j = 1, #b do
        -- < 2^25 + 2^48 + 2^25: exact
        local t = r[i + j - 1] + a[i] * b[j] + carry
        local low = t % LIMB
        r[i + j - 1] = low
        carry = (t - low) / LIMB
      end
      r[i + #b] = carry
    end
    -- The top limb of each row may exceed 2^24: carry it on.
    return mul_small_add(r, 1, 0)
  end

  -- Quotient and remainder (a number) of a / d, for 0 < d < 2^29.
  local function divmod_small(a, d)
    local q, r = {}, 0
    for i = #a, 1, -1 do
      local cur = r * LIMB + a[i] -- < 2^53
      local digit = math.floor(cur / d)
      local rest = cur - digit * d
      if rest < 0 then
        digit, rest = digit - 1, rest + d
      elseif rest >= d then
        digit, rest = digit + 1, rest - d
      end
      q[i] = digit
      r = rest
    end
    return norm(q), r
  end

  -- Quotient and remainder of a / b, for b > 0.
  local function divmod(a, b)
    if cmp(a, b) < 0 then
      return from_int(0), a
    end
    if #b == 1 then
      local q, r = divmod_small(a, b[1])
      return q, from_int(r)
    end
    -- A quotient below 2^50 is estimated in doubles (off by a few units at
    -- most) and then corrected exactly.
    local estimate = math.floor(to_num(a) / to_num(b))
    if estimate < 1125899906842624 then
      local q = from_int(estimate)
      local p = mul(q, b)
      local steps = 0
      while cmp(p, a) > 0 do
        q, p = sub(q, ONE), sub(p, b)
        steps = steps + 1
        if steps > 64 then error('tower-ratelimit: division did not converge') end
      end
      local r = sub(a, p)
      while cmp(r, b) >= 0 do
        q, r = add(q, ONE), sub(r, b)
        steps = steps + 1
        if steps > 64 then error('tower-ratelimit: division did not converge') end
      end
      return q, r
    end
    -- Otherwise bit by bit.
    local q, r = from_int(0), from_int(0)
    for i = #a, 1, -1 do
      local limb = a[i]
      for bit = 23, 0, -1 do
        local weight = 2 ^ bit
        r = add(r, r)
        if limb >= weight then
          limb = limb - weight
          r = add(r, ONE)
        end
        q = add(q, q)
        if cmp(r, b) >= 0 then
          r = sub(r, b)
          q = add(q, ONE)
        end
      end
    end
    return norm(q), r
  end

  -- Parses a decimal string of digits.
  local function dec(s)
    if type(s) ~= 'string' or not string.match(s, '^%d+$') then
      error('tower-ratelimit: not a decimal integer: ' .. tostring(s))
    end
    local a = { 0 }
    local first = #s % 6
    if first == 0 then first = 6 end
    local at = 1
    local len = first
    while at <= #s do
      local chunk = string.sub(s, at, at + len - 1)
      mul_small_add(a, 10 ^ len, tonumber(chunk))
      at = at + len
      len = 6
    end
    return a
  end

  return {
    from_int = from_int,
    ONE = ONE,
    to_num = to_num,
    is_zero = is_zero,
    cmp = cmp,
    add = add,
    sub = sub,
    mul = mul,
    divmod = divmod,
    dec = dec,
  }
end
