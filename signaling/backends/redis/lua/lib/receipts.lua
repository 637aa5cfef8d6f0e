-- Idempotency receipts: what a send or broadcast with an Idempotency-Key answered, kept `receipt_ttl`
-- seconds to answer its repeats. Needs room.lua (incarnation, receipts_of; its remove_peer drops a
-- peer's receipts).
-- A receipt lives at sig:{room}:idem:<sender>@<since>:<recipient>@<since>:<key> (a broadcast's recipient
-- is '*'): bound to both peers' lives, so a peer that joins again under the same id starts afresh.
-- Its value is JSON, {"digest": the body's digest, "answer": what the script answered}. A sender's
-- receipts are listed in sig:{room}:idem:<sender>@<since> (receipts_of), which bounds them.

-- the receipt's key for a send from `sender` to `to` (nil: a broadcast) with this Idempotency-Key
local function receipt_key(sender, to, key)
  local recipient = to and incarnation(to) or '*'
  return receipts_of(sender) .. ':' .. recipient .. ':' .. key
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

-- Keep `sender`'s receipt for `receipt_ttl` seconds. A sender (one life of a peer) keeps its newest
-- IDEMPOTENCY_KEYS_PER_PEER receipts, listed by when they expire, each a little after the one kept before
-- it (so within one clock tick too the order is the order kept): past the bound the oldest go, their
-- receipts with them. The list lives as long as its newest receipt.
local function keep_receipt(sender, receipt, digest, answer, now, receipt_ttl)
  local index = receipts_of(sender)
  local expires = now + tonumber(receipt_ttl)
  redis.call('SET', receipt, cjson.encode({digest = digest, answer = answer}), 'EX', receipt_ttl)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  local last = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')[2]
  if last and tonumber(last) >= expires then expires = tonumber(last) + 0.000001 end
  redis.call('ZADD', index, expires, string.sub(receipt, #index + 2))
  local over = redis.call('ZCARD', index) - IDEMPOTENCY_KEYS_PER_PEER
  if over > 0 then
    local oldest = redis.call('ZPOPMIN', index, over)
    for i = 1, #oldest, 2 do redis.call('DEL', index .. ':' .. oldest[i]) end
  end
  redis.call('EXPIRE', index, receipt_ttl)
end
