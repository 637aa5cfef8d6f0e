-- Shared by every room script, ahead of its own body. It binds KEYS[1], always the room's members key,
-- and derives the room's other keys from it (the same slot, by the hash tag: the layout is keys.py's);
-- it reads no ARGV. Needs wakeups.lua and webhooks.lua (its remove_peer records peer.left and room.ended).
local members = KEYS[1]
local prefix = string.sub(members, 1, -8)
local room = string.match(prefix, '{(.-)}')
local function peer_key(id) return prefix .. 'peer:' .. id end
local function mbox_key(id) return prefix .. 'mbox:' .. id end
local function removed_key(id) return prefix .. 'removed:' .. id end
local function ban_key(id) return prefix .. 'ban:' .. id end

-- the one shape of a refusal: {'err', code, milliseconds to wait (a limit), the last seq given out (bad_cursor),
-- the application's reason (removed)}
local function refuse(code, retry_ms, seq, reason)
  return {'err', code, retry_ms or false, seq or false, reason or false}
end

-- constant-time comparison of two token hashes
local function same(a, b)
  if not a or not b or #a ~= #b then return false end
  local diff = 0
  for i = 1, #a do diff = bit.bor(diff, bit.bxor(string.byte(a, i), string.byte(b, i))) end
  return diff == 0
end

local function is_live(id, now, ttl)
  local seen = redis.call('ZSCORE', members, id)
  return seen ~= false and tonumber(seen) > now - ttl
end

-- the code of the refusal for a caller that is not this live peer with its token, or nil; for the token
-- of a peer the application removed within PEER_TTL, 'removed' and the reason it gave (remove_by_server)
local function authenticate(id, token_hash, now, ttl)
  local err = nil
  if not is_live(id, now, ttl) then
    err = 'not_joined'
  elseif not same(redis.call('HGET', peer_key(id), 'token'), token_hash) then
    err = 'unauthorized'
  else
    return nil
  end
  local removed = redis.call('HMGET', removed_key(id), 'token', 'reason')
  if same(removed[1], token_hash) then return 'removed', removed[2] end
  return err
end

-- authenticate, as the refusal a script answers (or nil)
local function refused_caller(id, token_hash, now, ttl)
  local err, reason = authenticate(id, token_hash, now, ttl)
  if err then return refuse(err, nil, nil, reason) end
  return nil
end

local function keep_ms(ttl) return math.floor((2 * ttl + 10) * 1000) end

-- Redis at maxmemory (noeviction) refuses a script's first write of a command that may grow memory
-- (ZADD, HSET, RPUSH, ...), and no write after the script's first one of any kind: a script is refused
-- whole or runs whole. A script that stores calls this before its first write, so it is refused whole
-- when Redis is full (an OOM error: 503). It writes nothing: no '' member exists, and XX adds none.
local function refuse_when_full()
  redis.call('ZADD', members, 'XX', 0, '')
end

-- the heartbeat: the peer is live from now, its keys kept as long; once per half PEER_TTL it asks for
-- the room's look in sig:reap and its IP's lease to be renewed (appended to RENEW: {room, peer, its IP
-- or '', now}, sent by the backend after the script). PEXPIRE first: it may not grow memory, so a script
-- that starts with a heartbeat (a poll's acknowledgement, a member list) runs when Redis is full
local function touch(id, now, ttl)
  local pk = peer_key(id)
  local ms = keep_ms(ttl)
  redis.call('PEXPIRE', members, ms)
  redis.call('PEXPIRE', pk, ms)
  redis.call('PEXPIRE', mbox_key(id), ms)
  redis.call('ZADD', members, now, id)
  local v = redis.call('HMGET', pk, 'renewed', 'ip')
  if not v[1] or now - tonumber(v[1]) >= ttl / 2 then
    redis.call('HSET', pk, 'renewed', tostring(now))
    RENEW[#RENEW + 1] = {room, id, v[2] or '', tostring(now)}
  end
end

-- tell the poll that holds `id`'s mailbox, if any, that it changed (with the new envelopes, if given)
local function wake(id, envelopes)
  local holder = redis.call('HGET', peer_key(id), 'holder')
  if holder then mailbox_changed(string.match(holder, '^(%S+) '), room, id, envelopes) end
end

-- an envelope as stored (protocol.with_seq); #text is its size in bytes (MAILBOX_BYTES)
local function with_seq(seq, tail) return '{"seq":' .. seq .. ',' .. tail end

-- a server event's tail, as protocol.envelope_tail writes it: the same keys in the same order
-- (ids need no escaping; `data` is JSON text, `ts` the time as envelopes carry it)
local function event_tail(id, kind, data, ts)
  return '"from":"' .. id .. '","type":"' .. kind .. '","data":' .. data .. ',"ts":' .. ts .. '}'
end

-- store envelopes under the next seqs, oldest first, and wake the peer's poll once; returns their seqs.
-- A member left with UNREAD_EVENTS unacknowledged events is not reading: it is gone at once, as if silent.
local function push(id, tails, is_event, ttl)
  local pk, mb = peer_key(id), mbox_key(id)
  local first = redis.call('HINCRBY', pk, 'seq', #tails) - #tails + 1
  local mark = is_event and 'E' or 'M'
  local seqs, envelopes, stored, size = {}, {}, {}, 0
  for i, tail in ipairs(tails) do
    seqs[i] = first + i - 1
    envelopes[i] = with_seq(seqs[i], tail)
    stored[i] = mark .. envelopes[i]
    size = size + #envelopes[i]
  end
  redis.call('RPUSH', mb, unpack(stored))
  if is_event then
    if redis.call('HINCRBY', pk, 'events', #tails) >= UNREAD_EVENTS then redis.call('ZADD', members, 0, id) end
  else
    redis.call('HINCRBY', pk, 'bytes', size)
  end
  redis.call('PEXPIRE', mb, keep_ms(ttl))
  wake(id, envelopes)
  return seqs
end

-- whether `id`'s mailbox has room for all of `tails`: MAILBOX_LIMIT envelopes and MAILBOX_BYTES as stored
local function has_room(id, tails, limit, max_bytes)
  local v = redis.call('HMGET', peer_key(id), 'seq', 'acked', 'events', 'bytes')
  local seq = tonumber(v[1]) or 0
  if seq - (tonumber(v[2]) or 0) - (tonumber(v[3]) or 0) + #tails > limit then return false end
  local size = tonumber(v[4]) or 0
  for i, tail in ipairs(tails) do size = size + #with_seq(seq + i, tail) end
  return size <= max_bytes
end

-- count `hits` sends in a fixed one-second window; the milliseconds left in it when they go past
-- `limit`. Hits that find the window untouched pass, so a batch larger than the limit is not refused forever.
local function over_rate(id, limit, hits)
  if limit <= 0 then return nil end
  local key = prefix .. 'rate:' .. id
  local n = redis.call('INCRBY', key, hits)
  if n == hits then redis.call('PEXPIRE', key, 1000) end
  if n > limit and n > hits then return redis.call('PTTL', key) end
  return nil
end

-- what a send and a broadcast do first: authenticate the sender, refuse whole when Redis is full, the
-- heartbeat, then count its `hits` envelopes against SENDS_PER_PEER_PER_SECOND; the refusal, or nil
-- The application (the server API, SERVER_SENDER) is no member: nothing to authenticate, no heartbeat, no rate.
local function check_sender(sender, given, now, ttl, per_second, hits)
  if sender == SERVER_SENDER then
    refuse_when_full()
    return nil
  end
  local refused = refused_caller(sender, given, now, ttl)
  if refused then return refused end
  refuse_when_full()
  touch(sender, now, ttl)
  local wait = over_rate(sender, per_second, hits)
  if wait then return refuse('send_rate_limited', wait) end
  return nil
end

local function others_of(id)
  local out = {}
  for _, m in ipairs(redis.call('ZRANGE', members, 0, -1)) do
    if m ~= id then out[#out + 1] = m end
  end
  return out
end

local function live_members(now, ttl)
  return redis.call('ZRANGEBYSCORE', members, '(' .. tostring(now - ttl), '+inf')
end

-- members as member lists show them: {id, meta (JSON text) or false, join time (unix s, as text)} each
local function listed(ids)
  local out = {}
  for i, id in ipairs(ids) do
    local v = redis.call('HMGET', peer_key(id), 'meta', 'since')
    out[i] = {id, v[1] or false, v[2] or '0'}
  end
  return out
end

-- a peer's id and join time: one life of the peer, which its receipts (receipts.lua) are bound to
local function incarnation(id)
  return id .. '@' .. (redis.call('HGET', peer_key(id), 'since') or '0')
end

-- the zset of a sender's receipts, sig:{room}:idem:<id>@<since>: each receipt's key past this one's ':'
-- (its recipient and Idempotency-Key) -> when it expires
local function receipts_of(id) return prefix .. 'idem:' .. incarnation(id) end

-- a peer's life is over: no one can send as it again, so its receipts go with it (at most
-- IDEMPOTENCY_KEYS_PER_PEER, the bound keep_receipt keeps)
local function drop_receipts(id)
  local index = receipts_of(id)
  for _, listed in ipairs(redis.call('ZRANGE', index, 0, -1)) do redis.call('DEL', index .. ':' .. listed) end
  redis.call('DEL', index)
end

-- remove a peer, its mailbox and its receipts; the live others get peer-left with `reason` (an id-like
-- word), the webhooks peer.left, and room.ended when it was the last member
local function remove_peer(id, reason, now, ts, ttl)
  -- a poll it still holds: after its own leave it ends as a newer poll would end it (200, what it has); removed,
  -- it looks again and learns it is gone (404 not_joined)
  local holder = redis.call('HGET', peer_key(id), 'holder')
  if holder and reason == 'left' then
    local instance, poll = string.match(holder, '^(%S+) (%S+)')
    superseded(instance, room, id, poll)
  elseif holder then
    wake(id)
  end
  drop_receipts(id)  -- before its hash goes: the receipts' keys name its join time
  redis.call('ZREM', members, id)
  redis.call('DEL', peer_key(id), mbox_key(id))
  local tail = event_tail(id, 'peer-left', '{"reason":"' .. reason .. '"}', ts)
  for _, m in ipairs(live_members(now, ttl)) do push(m, {tail}, true, ttl) end
  record_event('peer.left', event_data(id, 'reason', '"' .. reason .. '"'))
  if redis.call('ZCARD', members) == 0 then record_event('room.ended', event_data()) end
end

-- The application removes a live member (server API): a leave whose peer-left says `reason` ('removed',
-- 'room_closed'); for PEER_TTL its token is refused 'removed' with `why` (authenticate). Returns the IP
-- whose place it held ('' for none), for the backend to give back.
local function remove_by_server(id, reason, why, now, ts, ttl)
  local v = redis.call('HMGET', peer_key(id), 'token', 'ip')
  local marker = removed_key(id)
  redis.call('HSET', marker, 'token', v[1] or '', 'reason', why)
  redis.call('PEXPIRE', marker, math.floor(ttl * 1000))
  remove_peer(id, reason, now, ts, ttl)
  return v[2] or ''
end

local function reap_room(now, ts, ttl)
  local expired = redis.call('ZRANGEBYSCORE', members, '-inf', tostring(now - ttl))
  for _, id in ipairs(expired) do remove_peer(id, 'timeout', now, ts, ttl) end
  return expired
end
