-- Remove the room's expired peers (peer-left timeout to the others).
-- include   wakeups.lua webhooks.lua room.lua
-- KEYS[1]   members     sig:{room}:members
-- KEYS[2]   hooks       the room's webhook outbox index (keys.hooks_index)
-- ARGV[1]   now         unix s
-- ARGV[2]   ts          now as envelopes carry it (their "ts")
-- ARGV[3]   ttl         PEER_TTL (s)
-- ARGV[4]   hook        the ids of the webhook events it records ('' when webhooks are off: webhooks.lua)
-- returns   {'ok', when to look next (unix s, as text; '-1': the room is empty), {removed ids}}
local now, ts, ttl, hook = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
record_events_as(hook, ts)

local removed = reap_room(now, ts, ttl)
local oldest = redis.call('ZRANGE', members, 0, 0, 'WITHSCORES')
local next_look = -1
if #oldest > 0 then next_look = tonumber(oldest[2]) + ttl end
return {'ok', tostring(next_look), removed}
