-- Remove the room's expired peers (peer-left timeout to the others).
-- include   wakeups.lua room.lua
-- KEYS[1]   members     sig:{room}:members
-- ARGV[1]   now         unix s
-- ARGV[2]   ts          now as envelopes carry it (their "ts")
-- ARGV[3]   ttl         PEER_TTL (s)
-- returns   {'ok', when to look next (unix s, as text; '-1': the room is empty), {removed ids}}
local now, ts, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])

local removed = reap_room(now, ts, ttl)
local oldest = redis.call('ZRANGE', members, 0, 0, 'WITHSCORES')
local next_look = -1
if #oldest > 0 then next_look = tonumber(oldest[2]) + ttl end
return {'ok', tostring(next_look), removed}
