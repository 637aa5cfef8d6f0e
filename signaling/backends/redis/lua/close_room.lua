-- The application closes a room (server API): every member removed as remove.lua removes one, with
-- 'room_closed' as the reason; the expired ones are reaped first (peer-left timeout), as a join does.
-- include   wakeups.lua webhooks.lua room.lua
-- KEYS[1]   members     sig:{room}:members
-- KEYS[2]   hooks       the room's webhook outbox index (keys.hooks_index)
-- ARGV[1]   now         unix s
-- ARGV[2]   ts          now as envelopes carry it (their "ts")
-- ARGV[3]   ttl         PEER_TTL (s)
-- ARGV[4]   hook        the ids of the webhook events it records ('' when webhooks are off: webhooks.lua)
-- returns   {'ok', {removed ids}, {the IP whose place each held, '' for none}}
local now, ts, ttl, hook = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
record_events_as(hook, ts)

refuse_when_full()
reap_room(now, ts, ttl)
local gone, ips = redis.call('ZRANGE', members, 0, -1), {}
for i, id in ipairs(gone) do ips[i] = remove_by_server(id, 'room_closed', 'room_closed', now, ts, ttl) end
return {'ok', gone, ips}
