-- Idempotency receipts: what a send or broadcast with an Idempotency-Key answered, kept `receipt_ttl`
-- seconds to answer its repeats. Needs room.lua.
-- A receipt lives at sig:{room}:idem:<sender>@<since>:<recipient>@<since>:<key> (a broadcast's recipient
-- is '*'): bound to both peers' lives, so a peer that joins again under the same id starts afresh.
-- Its value is JSON, {"digest": the body's digest, "answer": what the script answered}.

-- a peer's id and join time
local function incarnation(id)
  return id .. '@' .. (redis.call('HGET', peer_key(id), 'since') or '0')
end

-- the receipt's key for a send from `sender` to `to` (nil: a broadcast) with this Idempotency-Key
local function receipt_key(sender, to, key)
  local recipient = to and incarnation(to) or '*'
  return prefix .. 'idem:' .. incarnation(sender) .. ':' .. recipient .. ':' .. key
end

-- what the first send with this receipt answered, or nil when there was none; the code of the
-- refusal (as the second value) when it was sent with another body
local function recall(receipt, digest)
  local seen = redis.call('GET', receipt)
  if not seen then return nil end
  local kept = cjson.decode(seen)
  if kept.digest ~= digest then return nil, 'idempotency_key_reused' end
  return kept.answer
end

local function keep_receipt(receipt, digest, answer, receipt_ttl)
  redis.call('SET', receipt, cjson.encode({digest = digest, answer = answer}), 'EX', receipt_ttl)
end
