-- Lease the first webhook event of a room whose outbox is due (webhooks.lua) to one delivery attempt.
-- include   webhooks.lua
-- KEYS[1]   members     sig:{room}:members (the room's hook keys are named after it)
-- KEYS[2]   index       the room's webhook outbox index (keys.hooks_index)
-- ARGV[1]   now         unix s
-- ARGV[2]   lease       names this attempt: settling it needs the lease still held
-- ARGV[3]   lease_until unix s: the room is due again then if the attempt never settles
-- returns   {'ok', the event's record, failed attempts so far} | {'ok', false}: not due (or leased), or no outbox
local now, lease, lease_until = tonumber(ARGV[1]), ARGV[2], ARGV[3]

local due = redis.call('ZSCORE', KEYS[2], hook_room)
if not due or tonumber(due) > now then return {'ok', false} end
local leased = lease_first(lease, lease_until)
if not leased then return {'ok', false} end
return {'ok', leased[1], leased[2]}
