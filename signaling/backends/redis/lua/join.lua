-- Add a peer, or resume it when the presented token is its own; reaps the room's expired peers first.
-- One script, so no other request comes between its checks and its writes: of two joins with one
-- single-use ticket only one finds its jti unused, and a refused join leaves nothing behind.
-- include   wakeups.lua webhooks.lua room.lua
-- KEYS[1]   members     sig:{room}:members
-- KEYS[2]   hooks       the room's webhook outbox index (keys.hooks_index)
-- ARGV[1]   peer        the peer id
-- ARGV[2]   new_hash    the hash of the token a fresh join gets
-- ARGV[3]   given       the hash of the token presented ('' for none): a resume when it is the live peer's
-- ARGV[4]   since       now, unix s (a fresh peer's join time)
-- ARGV[5]   ts          now as envelopes carry it (their "ts")
-- ARGV[6]   ttl         PEER_TTL (s)
-- ARGV[7]   capacity    ROOM_CAPACITY
-- ARGV[8]   refused     the code to refuse a fresh join with ('' when it may be fresh: tickets off, or its ticket passed)
-- ARGV[9]   jti         the ticket's single-use id ('' for none; kept at sig:{room}:jti:<jti> once it admitted a join)
-- ARGV[10]  jti_until   until when that jti is kept (unix ms: the ticket's exp plus the leeway)
-- ARGV[11]  ip          the client IP whose place the peer takes ('' when per-IP limits are off)
-- ARGV[12]  hook        the ids of the webhook events it records ('' when webhooks are off: webhooks.lua)
-- ARGV[13]  meta        a fresh peer's meta, compact JSON text ('' for none); a resume keeps its own
-- returns   {'ok', 1 if created else 0, the last acknowledged seq, {listed others}, own meta or false}
--           | refuse(code)
local peer, new_hash, given = ARGV[1], ARGV[2], ARGV[3]
local since, ts, ttl, capacity = ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local refused, jti, jti_until, ip, hook, meta = ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local now = tonumber(since)
record_events_as(hook, ts)

local pk = peer_key(peer)
local jti_key = prefix .. 'jti:' .. jti
if not (is_live(peer, now, ttl) and same(redis.call('HGET', pk, 'token'), given)) then  -- not a resume
  if redis.call('EXISTS', ban_key(peer)) == 1 then return refuse('banned') end  -- ticket or not
  local err, reason = authenticate(peer, given, now, ttl)
  if err == 'removed' then return refuse(err, nil, nil, reason) end  -- its client stops, not joins again
  if refused ~= '' then return refuse(refused) end
  if jti ~= '' and redis.call('EXISTS', jti_key) == 1 then return refuse('bad_ticket') end
end
refuse_when_full()
reap_room(now, ts, ttl)
if redis.call('ZSCORE', members, peer) then
  if not same(redis.call('HGET', pk, 'token'), given) then return refuse('peer_id_taken') end
  if ip ~= '' and redis.call('HGET', pk, 'ip') ~= ip then  -- resumed from another address: its place now
    redis.call('HSET', pk, 'ip', ip)
    redis.call('HDEL', pk, 'renewed')
  end
  touch(peer, now, ttl)
  local v = redis.call('HMGET', pk, 'acked', 'meta')
  return {'ok', 0, tonumber(v[1] or '0'), listed(others_of(peer)), v[2] or false}
end
if redis.call('ZCARD', members) >= capacity then return refuse('room_full') end
local others = others_of(peer)
if #others == 0 then record_event('room.started', event_data()) end
redis.call('DEL', pk, mbox_key(peer))
redis.call('HSET', pk, 'token', new_hash, 'since', since, 'seq', 0, 'acked', 0, 'events', 0, 'bytes', 0, 'ip', ip)
local data = 'null'
if meta ~= '' then
  redis.call('HSET', pk, 'meta', meta)
  data = '{"meta":' .. meta .. '}'
end
touch(peer, now, ttl)
local joined = event_tail(peer, 'peer-joined', data, ts)
for _, m in ipairs(others) do push(m, {joined}, true, ttl) end
record_event('peer.joined', event_data(peer, 'meta', redis.call('HGET', pk, 'meta') or 'null'))
if jti ~= '' then redis.call('SET', jti_key, peer, 'PXAT', jti_until) end
return {'ok', 1, 0, listed(others), meta ~= '' and meta or false}
