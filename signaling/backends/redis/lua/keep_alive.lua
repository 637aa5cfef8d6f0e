-- Peers of one room with an open stream are heard from now: a batch of heartbeats, without tokens.
-- Only this life of each peer: one that left, timed out, or joined again under its id (another token)
-- is left alone, to its own requests.
-- include   wakeups.lua webhooks.lua room.lua
-- KEYS[1]   members     sig:{room}:members
-- ARGV[1]   now         unix s
-- ARGV[2]   ttl         PEER_TTL (s)
-- ARGV[3...] listeners  for each streaming peer: its id, then the hash of the token its stream opened with
-- returns   {'ok'}
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local listeners = {unpack(ARGV, 3)}

for i = 1, #listeners, 2 do
  local peer, token_hash = listeners[i], listeners[i + 1]
  if not authenticate(peer, token_hash, now, ttl) then touch(peer, now, ttl) end
end
return {'ok'}
