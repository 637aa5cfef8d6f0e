-- Remove a peer and its mailbox; the others get peer-left (left). Not a member: nothing happens.
-- include   wakeups.lua webhooks.lua room.lua
-- KEYS[1]   members     sig:{room}:members
-- KEYS[2]   hooks       the room's webhook outbox index (keys.hooks_index)
-- ARGV[1]   peer        the leaving peer
-- ARGV[2]   given       its token's hash
-- ARGV[3]   now         unix s
-- ARGV[4]   ts          now as envelopes carry it (their "ts")
-- ARGV[5]   ttl         PEER_TTL (s)
-- ARGV[6]   hook        the ids of the webhook events it records ('' when webhooks are off: webhooks.lua)
-- returns   {'ok', the IP whose place it held ('' for none, or not a member)} | refuse('unauthorized' | 'removed')
local peer, given, now, ts, ttl, hook = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), ARGV[6]
record_events_as(hook, ts)

local err, reason = authenticate(peer, given, now, ttl)
if err == 'not_joined' then return {'ok', ''} end
if err then return refuse(err, nil, nil, reason) end
local ip = redis.call('HGET', peer_key(peer), 'ip') or ''
remove_peer(peer, 'left', now, ts, ttl)
return {'ok', ip}
