-- The live members, for a member.
-- include   wakeups.lua webhooks.lua room.lua
-- KEYS[1]   members     sig:{room}:members
-- ARGV[1]   peer        the asking peer
-- ARGV[2]   given       its token's hash
-- ARGV[3]   now         unix s
-- ARGV[4]   ttl         PEER_TTL (s)
-- returns   {'ok', {live ids}} | refuse(code)
local peer, given, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])

local err = authenticate(peer, given, now, ttl)
if err then return refuse(err) end
touch(peer, now, ttl)
return {'ok', live_members(now, ttl)}
