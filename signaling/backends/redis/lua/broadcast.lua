-- Store a broadcast's envelopes for every other live member with room for all of them.
-- include   wakeups.lua webhooks.lua room.lua receipts.lua
-- KEYS[1]   members          sig:{room}:members
-- ARGV[1]   sender           the sending peer
-- ARGV[2]   given            its token's hash
-- ARGV[3]   now              unix s
-- ARGV[4]   ttl              PEER_TTL (s)
-- ARGV[5]   digest           the body's digest, what an Idempotency-Key is bound to
-- ARGV[6]   key              the Idempotency-Key ('' for none)
-- ARGV[7]   limit            MAILBOX_LIMIT
-- ARGV[8]   max_bytes        MAILBOX_BYTES
-- ARGV[9]   receipt_ttl      how long a receipt answers repeats (s)
-- ARGV[10]  per_second       SENDS_PER_PEER_PER_SECOND
-- ARGV[11...] tails          each envelope's tail (protocol.envelope_tail), in order
-- returns   {'ok', {delivered ids}, {ids whose mailbox was full}} | refuse(code[, milliseconds to wait])
local sender, given, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local digest, key, limit, max_bytes = ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local receipt_ttl, per_second = ARGV[9], tonumber(ARGV[10])
local tails = {unpack(ARGV, 11)}

local refused = check_sender(sender, given, now, ttl, per_second, #tails)
if refused then return refused end
local receipt = nil
if key ~= '' then
  receipt = receipt_key(sender, nil, key)
  local answer, reused = recall(receipt, digest)
  if reused then return refuse(reused) end
  if answer then return {'ok', answer.delivered, answer.full} end
end
local delivered, full = {}, {}
for _, m in ipairs(live_members(now, ttl)) do
  if m ~= sender then
    if not has_room(m, tails, limit, max_bytes) then
      full[#full + 1] = m
    else
      push(m, tails, false, ttl)
      delivered[#delivered + 1] = m
    end
  end
end
if receipt and #delivered > 0 then
  keep_receipt(sender, receipt, digest, {delivered = delivered, full = full}, now, receipt_ttl)
end
return {'ok', delivered, full}
