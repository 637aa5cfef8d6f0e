-- Count a join attempt from a client IP and lease it a place ("<room> <peer>").
-- KEYS[1]   joins       sig:ip:{ip}:joins
-- KEYS[2]   leases      sig:ip:{ip}:peers
-- ARGV[1]   now         unix s
-- ARGV[2]   place       "<room> <peer>"
-- ARGV[3]   room        the room of that place
-- ARGV[4]   per_minute  JOINS_PER_IP_PER_MINUTE
-- ARGV[5]   max_peers   PEERS_PER_IP
-- ARGV[6]   max_rooms   ROOMS_PER_IP
-- ARGV[7]   expiry      the lease's end (unix s)
-- returns   {'ok', 1 if the lease is new else 0} | {'err', code, milliseconds to wait, false, false}
local joins_key, leases_key = KEYS[1], KEYS[2]
local now, place, room = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local per_minute, max_peers, max_rooms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local expiry = ARGV[7]

if per_minute > 0 then
  local n = redis.call('INCR', joins_key)
  if n == 1 then redis.call('PEXPIRE', joins_key, 60000) end
  if n > per_minute then return {'err', 'join_rate_limited', redis.call('PTTL', joins_key), false, false} end
end
if max_peers <= 0 and max_rooms <= 0 then return {'ok', 0} end
redis.call('ZREMRANGEBYSCORE', leases_key, '-inf', now)
local new = redis.call('ZSCORE', leases_key, place) == false
if new then
  local leases = redis.call('ZRANGE', leases_key, 0, -1, 'WITHSCORES')
  if #leases > 0 then
    local wait = math.ceil((tonumber(leases[2]) - now) * 1000)
    if max_peers > 0 and #leases / 2 >= max_peers then return {'err', 'too_many_peers', wait, false, false} end
    local rooms, count = {}, 0
    for i = 1, #leases, 2 do
      local r = string.match(leases[i], '^(%S+) ')
      if not rooms[r] then rooms[r] = true; count = count + 1 end
    end
    if max_rooms > 0 and not rooms[room] and count >= max_rooms then return {'err', 'too_many_rooms', wait, false, false} end
  end
end
redis.call('ZADD', leases_key, 'GT', expiry, place)  -- never shortens a lease a heartbeat renewed
-- the key lasts as long as its longest lease (a heartbeat's renewal may have set one beyond this one)
local last = redis.call('ZRANGE', leases_key, -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', leases_key, math.ceil(tonumber(last[2]) * 1000))
return {'ok', new and 1 or 0}
