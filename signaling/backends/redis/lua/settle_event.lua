-- End a webhook attempt: the event delivered or given up (then the next one is leased at once), or tried
-- again later. Nothing happens when the lease was lost (the room was taken over: that attempt delivers it).
-- include   webhooks.lua
-- KEYS[1]   members     sig:{room}:members (the room's hook keys are named after it)
-- KEYS[2]   index       the room's webhook outbox index (keys.hooks_index)
-- ARGV[1]   lease       the attempt's lease (claim_event.lua)
-- ARGV[2]   retry_at    unix s of the next attempt; '' when the event was delivered or given up
-- ARGV[3]   lease_until unix s: the lease of the room's next event, if it has one
-- returns   {'ok', the next event's record, 0} | {'ok', false}: none, later, or the lease was lost
local lease, retry_at, lease_until = ARGV[1], ARGV[2], ARGV[3]

if redis.call('HGET', hook_state, 'lease') ~= lease then return {'ok', false} end
if retry_at ~= '' then
  redis.call('HINCRBY', hook_state, 'attempts', 1)
  redis.call('HDEL', hook_state, 'lease')
  redis.call('ZADD', KEYS[2], retry_at, hook_room)
  return {'ok', false}
end
redis.call('LPOP', outbox)
redis.call('DECR', KEYS[2] .. ':count')
redis.call('HSET', hook_state, 'attempts', 0)
local leased = lease_first(lease, lease_until)
if not leased then return {'ok', false} end
return {'ok', leased[1], leased[2]}
