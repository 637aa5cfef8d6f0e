-- A poll's or stream's look at its mailbox: acknowledge (drop) the envelopes up to `after`, record the poll
-- or stream that holds the mailbox (superseding an older one on another instance), return what is left past
-- `read_after`.
-- include   wakeups.lua webhooks.lua room.lua
-- KEYS[1]   members     sig:{room}:members
-- ARGV[1]   peer        the polling peer
-- ARGV[2]   given       its token's hash
-- ARGV[3]   now         unix s
-- ARGV[4]   ttl         PEER_TTL (s)
-- ARGV[5]   after       acknowledge seqs up to this one
-- ARGV[6]   limit       return at most this many envelopes
-- ARGV[7]   holder      the held poll or stream, "<instance> <poll id>" ('' for none: a poll that does not wait)
-- ARGV[8]   read_after  return envelopes past this seq: `after` for a poll; a stream reads on past what it
--                       delivered, acknowledging only the cursor it opened with
-- returns   {'ok', cursor, {stored envelopes, each with its mark}} | refuse(code[, nil, last seq given out])
local peer, given = ARGV[1], ARGV[2]
local now, ttl, after, limit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local holder, read_after = ARGV[7], tonumber(ARGV[8])

local refused = refused_caller(peer, given, now, ttl)
if refused then return refused end
touch(peer, now, ttl)
local pk, mb = peer_key(peer), mbox_key(peer)
local v = redis.call('HMGET', pk, 'seq', 'acked', 'holder')
local seq, acked = tonumber(v[1]) or 0, tonumber(v[2]) or 0
if after > seq then return refuse('bad_cursor', nil, seq) end
if after > acked then
  local n = after - acked
  local events, size = 0, 0
  for _, text in ipairs(redis.call('LRANGE', mb, 0, n - 1)) do
    if string.byte(text, 1) == 69 then events = events + 1 else size = size + #text - 1 end  -- 'E', or 'M' .. text
  end
  if events > 0 then redis.call('HINCRBY', pk, 'events', -events) end
  if size > 0 then redis.call('HINCRBY', pk, 'bytes', -size) end
  redis.call('LTRIM', mb, n, -1)
  redis.call('HSET', pk, 'acked', after)
  acked = after
end
if holder ~= '' then
  local old = v[3]
  redis.call('HSET', pk, 'holder', holder)
  if old and old ~= holder then
    local old_instance, old_poll = string.match(old, '^(%S+) (%S+)$')
    if old_instance ~= string.match(holder, '^(%S+) ') then superseded(old_instance, room, peer, old_poll) end
  end
end
local skip = math.max(read_after - acked, 0)  -- the list holds seqs acked + 1, acked + 2, ...
local items = redis.call('LRANGE', mb, skip, skip + limit - 1)
local cursor = read_after
if #items > 0 then cursor = acked + skip + #items end
return {'ok', cursor, items}
