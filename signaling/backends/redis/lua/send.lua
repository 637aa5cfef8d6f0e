-- Store a send's envelopes in one mailbox, all of them or none, and wake its poll once.
-- include   wakeups.lua webhooks.lua room.lua receipts.lua
-- KEYS[1]   members          sig:{room}:members
-- ARGV[1]   sender           the sending peer
-- ARGV[2]   given            its token's hash
-- ARGV[3]   now              unix s
-- ARGV[4]   ttl              PEER_TTL (s)
-- ARGV[5]   to               the recipient
-- ARGV[6]   digest           the body's digest, what an Idempotency-Key is bound to
-- ARGV[7]   key              the Idempotency-Key ('' for none)
-- ARGV[8]   limit            MAILBOX_LIMIT
-- ARGV[9]   max_bytes        MAILBOX_BYTES
-- ARGV[10]  receipt_ttl      how long a receipt answers repeats (s)
-- ARGV[11]  per_second       SENDS_PER_PEER_PER_SECOND
-- ARGV[12...] tails          each envelope's tail (protocol.envelope_tail), in order
-- returns   {'ok', {seqs}} | refuse(code[, milliseconds to wait])
local sender, given, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local to, digest, key = ARGV[5], ARGV[6], ARGV[7]
local limit, max_bytes, receipt_ttl, per_second = tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10], tonumber(ARGV[11])
local tails = {unpack(ARGV, 12)}

local refused = check_sender(sender, given, now, ttl, per_second, #tails)
if refused then return refused end
if not is_live(to, now, ttl) then return refuse('peer_not_found') end
local receipt = nil
if key ~= '' then
  receipt = receipt_key(sender, to, key)
  local seqs, reused = recall(receipt, digest)
  if reused then return refuse(reused) end
  if seqs then return {'ok', seqs} end
end
if not has_room(to, tails, limit, max_bytes) then return refuse('mailbox_full') end
local seqs = push(to, tails, false, ttl)
if receipt then keep_receipt(sender, receipt, digest, seqs, now, receipt_ttl) end
return {'ok', seqs}
