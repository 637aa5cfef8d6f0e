-- The application removes a peer (server API): a leave whose peer-left says 'removed'; for PEER_TTL its
-- token is refused 'removed' with the reason; with a ban, a join with its id is refused until the ban ends.
-- One script, so a join or a resume of the same id on another instance comes wholly before the removal
-- (and is removed) or wholly after it (and is refused).
-- include   wakeups.lua webhooks.lua room.lua
-- KEYS[1]   members     sig:{room}:members
-- KEYS[2]   hooks       the room's webhook outbox index (keys.hooks_index)
-- ARGV[1]   peer        the peer removed
-- ARGV[2]   reason      the application's reason, which the peer's requests are told
-- ARGV[3]   ban_ms      how long its id is banned from the room (ms; 0 for no ban)
-- ARGV[4]   now         unix s
-- ARGV[5]   ts          now as envelopes carry it (their "ts")
-- ARGV[6]   ttl         PEER_TTL (s)
-- ARGV[7]   hook        the ids of the webhook events it records ('' when webhooks are off: webhooks.lua)
-- returns   {'ok', 1 if it was a live member else 0, the IP whose place it held ('' for none)}
local peer, reason, ban_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now, ts, ttl, hook = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), ARGV[7]
record_events_as(hook, ts)

refuse_when_full()
if ban_ms > 0 then redis.call('SET', ban_key(peer), '1', 'PX', ban_ms) end
if not is_live(peer, now, ttl) then return {'ok', 0, ''} end
return {'ok', 1, remove_by_server(peer, 'removed', reason, now, ts, ttl)}
