-- The application closes a room (server API): every member removed as remove.lua removes one, with
-- 'room_closed' as the reason; the expired ones are reaped first (peer-left timeout), as a join does.
-- include   wakeups.lua room.lua
-- KEYS[1]   members     sig:{room}:members
-- ARGV[1]   now         unix s
-- ARGV[2]   ts          now as envelopes carry it (their "ts")
-- ARGV[3]   ttl         PEER_TTL (s)
-- returns   {'ok', {removed ids}, {the IP whose place each held, '' for none}}
local now, ts, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])

refuse_when_full()
reap_room(now, ts, ttl)
local gone, ips = redis.call('ZRANGE', members, 0, -1), {}
for i, id in ipairs(gone) do ips[i] = remove_by_server(id, 'room_closed', 'room_closed', now, ts, ttl) end
return {'ok', gone, ips}
