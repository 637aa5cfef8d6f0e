-- The live members, for a member, or for the application (the server API: no caller, no token).
-- include   wakeups.lua webhooks.lua room.lua
-- KEYS[1]   members     sig:{room}:members
-- ARGV[1]   peer        the asking peer ('' for the application, whose key Python checked)
-- ARGV[2]   given       its token's hash
-- ARGV[3]   now         unix s
-- ARGV[4]   ttl         PEER_TTL (s)
-- returns   {'ok', {listed live members}} | refuse(code)
local peer, given, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])

if peer ~= '' then
  local refused = refused_caller(peer, given, now, ttl)
  if refused then return refused end
  touch(peer, now, ttl)
end
return {'ok', listed(live_members(now, ttl))}
