-- Webhook events (signaling/webhooks.py, docs/webhooks.md). A script that changes a room's membership
-- records each event in the room's outbox, sig:{room}:hooks, in the same script as the change, and puts
-- the room in the outbox index KEYS[2] (keys.py: sig:hooks, or on a cluster the one of the room's slot).
-- Binds the room's hook keys from KEYS[1], its members key, as room.lua does; reads no ARGV: a script
-- that records says so with `record_events_as`, which it is given its ids by.
local hook_prefix = string.sub(KEYS[1], 1, -8)
local hook_room = string.match(hook_prefix, '{(.-)}')
local outbox = hook_prefix .. 'hooks'
local hook_state = hook_prefix .. 'hook'
local recording = {ids = '', ts = '', n = 0}

-- events recorded from here on get the ids "<ids>.1", "<ids>.2", ... and happened at `ts`
-- (unix s, as text); with ids '' (webhooks off) none is recorded
local function record_events_as(ids, ts) recording.ids, recording.ts = ids, ts end

-- record an event: its type and its data as JSON text
local function record_event(kind, data)
  if recording.ids == '' then return end
  local index = KEYS[2]
  recording.n = recording.n + 1
  redis.call('RPUSH', outbox, recording.ids .. '.' .. recording.n .. ' ' .. kind .. ' ' .. recording.ts .. ' ' .. data)
  redis.call('INCR', index .. ':count')
  redis.call('ZADD', index, 'NX', recording.ts, hook_room)  -- a room already waiting keeps its time
  redis.call('ZADD', index .. ':oldest', 'NX', recording.ts, hook_room)
end

-- an event's data: the room, and the peer's id and one more field (JSON text) when given
local function event_data(peer, field, value)
  local data = '{"room":"' .. hook_room .. '"'
  if peer then data = data .. ',"peer_id":"' .. peer .. '"' end
  if field then data = data .. ',"' .. field .. '":' .. value end
  return data .. '}'
end

-- lease the outbox's first event to the attempt `lease` until `lease_until`: {its record, failed attempts
-- so far}, or false when the outbox is empty (the room then leaves the index)
local function lease_first(lease, lease_until)
  local index = KEYS[2]
  local first = redis.call('LINDEX', outbox, 0)
  if not first then
    redis.call('ZREM', index, hook_room)
    redis.call('ZREM', index .. ':oldest', hook_room)
    redis.call('DEL', hook_state)
    return false
  end
  redis.call('ZADD', index, lease_until, hook_room)
  redis.call('ZADD', index .. ':oldest', string.match(first, '^%S+ %S+ (%S+)'), hook_room)
  redis.call('HSET', hook_state, 'lease', lease)
  return {first, tonumber(redis.call('HGET', hook_state, 'attempts') or '0')}
end
