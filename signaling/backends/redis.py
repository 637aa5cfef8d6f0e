"""The Redis backend: each operation is one Lua script, in one round trip shared with concurrent requests.

Key layout. Every key of a room carries the hash tag `{room}`, so a room
lives on one Redis Cluster shard and a script may touch all of its keys:

    sig:{room}:members            zset  peer id -> last heartbeat (unix s)
    sig:{room}:peer:<id>          hash  token (sha256), since (join time), seq, acked, events, holder,
                                        ip (whose place it holds), renewed (when it last asked for a renewal)
    sig:{room}:mbox:<id>          list  "M"|"E" + envelope JSON, oldest first
    sig:{room}:idem:<from>@<since>:<to>@<since>:<key>   string  "<digest> <answer>", 10 minutes
    sig:{room}:idem:<from>@<since>  zset  a sender's receipts ("<to>@<since>:<key>", "*:<key>" for a broadcast)
                                        -> when they expire; its newest IDEMPOTENCY_KEYS_PER_PEER are kept
    sig:{room}:jti:<jti>          string  the peer a single-use join ticket admitted, until its exp (+ leeway)

    sig:{room}:rate:<id>          string  sends in the current second

Abuse limits per client IP use the IP as hash tag:

    sig:ip:{<ip>}:joins           string  joins in the current minute
    sig:ip:{<ip>}:peers           zset    "<room> <peer>" -> lease expiry

Peer keys expire 2 * PEER_TTL + 10 s after the last heartbeat, so a crash
leaves nothing behind for long. One global key, `sig:reap` (zset room ->
when to look for expired peers next), lets any instance find rooms to reap
without scanning; scripts never touch it, so no script crosses slots.

Renewals. A heartbeat keeps two things alive outside its room's slot: the
room's entry in `sig:reap` and the lease of the IP the peer counts against.
A script cannot reach them, so once it has authenticated the caller it asks
for them (`RENEW`), at most once per PEER_TTL / 2 per peer (the peer hash's
`renewed`), and the backend sends the commands after it (`_renew`). A
request that fails its token check writes nothing at all.

Wake-ups: a held poll records its `holder` ("<instance> <poll id>") on the
peer hash. A script that adds to that mailbox sends "M <room> <peer>" to
channel `sig:wake:{<instance>}`; a poll that replaces a holder of another
instance sends "S <room> <peer> <poll id>" there. Each process subscribes to
its own channel on one connection and hands what arrives to its hub. On one
Redis the script PUBLISHes itself (one round trip in all). On Redis Cluster
(a `redis+cluster://` URL) a script may not reach a channel of another slot,
so it returns the wake-ups and this module SPUBLISHes them: sharded pub/sub,
each instance's channel living on the one shard its hash tag picks.

On one Redis, "M" carries the new envelopes too ("M <room> <peer> <envelopes>",
one per line; a batch is one wake-up):
a holder's wake-ups arrive in the order of their seqs, so the woken poll
answers with what they carried, without a second round trip. On a cluster
two requests may SPUBLISH out of order, so there the poll fetches.

Round trips: requests do not borrow a connection each; their commands queue
for a few lanes, and one round trip carries everything waiting
(`autopipeline.py`), so a burst of woken polls costs a few pipelines, not a
queue for the connection pool.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import secrets
import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import errors
from ..protocol import IDEMPOTENCY_KEYS_PER_PEER, IDEMPOTENCY_TTL, envelope_tail
from ..tokens import hash_token
from .autopipeline import Autopipeline
from .base import UNREAD_EVENTS, Backend, Broadcast, Joined

log = logging.getLogger(__name__)

REAP_KEY = "sig:reap"
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
#: seconds a Redis that does not answer (or a request waiting for a round trip) may take before 503
TIMEOUT = 2
#: round trips in flight at once per process (each on a connection of its own), carrying every request's commands
LANES = 4


def members_key(room: str) -> str:
    return f"sig:{{{room}}}:members"


def room_of(members: str) -> str:
    """The room of its members key (`members_key`)."""
    return members[len("sig:{"):-len("}:members")]


def ip_keys(client_ip: str) -> list[str]:
    return [f"sig:ip:{{{client_ip}}}:joins", f"sig:ip:{{{client_ip}}}:peers"]


def wake_channel(instance: str) -> str:
    return f"sig:wake:{{{instance}}}"


# Heads every script. Wake-ups go out through `notify`: published at once on
# one Redis, collected in WAKES (returned beside the result) on a cluster.
# RENEW lists what heartbeats asked for, {peer, its IP ('' for none), now} each:
# the renewals the backend sends after the script (see the module docstring).
_NOTIFY = r"""
local WAKES = {}
local RENEW = {}
local function notify(instance, message)
  if SHARDED then
    WAKES[#WAKES + 1] = instance
    WAKES[#WAKES + 1] = message
  else
    redis.call('PUBLISH', 'sig:wake:{' .. instance .. '}', message)
  end
end
"""


# Shared by every room script, ahead of its own body. It reads KEYS[1], always
# the room's members key, and derives the room's other keys from it (the same
# slot, by the hash tag); it reads no ARGV.
_PRELUDE = r"""
local members = KEYS[1]
local prefix = string.sub(members, 1, -8)
local room = string.match(prefix, '{(.-)}')
local function peer_key(id) return prefix .. 'peer:' .. id end
local function mbox_key(id) return prefix .. 'mbox:' .. id end

-- constant-time comparison of two token hashes
local function same(a, b)
  if not a or not b or #a ~= #b then return false end
  local diff = 0
  for i = 1, #a do diff = bit.bor(diff, bit.bxor(string.byte(a, i), string.byte(b, i))) end
  return diff == 0
end

local function is_live(id, now, ttl)
  local seen = redis.call('ZSCORE', members, id)
  return seen ~= false and tonumber(seen) > now - ttl
end

local function authenticate(id, token_hash, now, ttl)
  if not is_live(id, now, ttl) then return 'not_joined' end
  if not same(redis.call('HGET', peer_key(id), 'token'), token_hash) then return 'unauthorized' end
  return nil
end

local function keep_ms(ttl) return math.floor((2 * ttl + 10) * 1000) end

-- Redis at maxmemory (noeviction) refuses a script's first write of a command that may grow memory
-- (ZADD, HSET, RPUSH, ...), and no write after the script's first one of any kind: a script is refused
-- whole or runs whole. A script that stores calls this before its first write, so it is refused whole
-- when Redis is full (an OOM error: 503). It writes nothing: no '' member exists, and XX adds none.
local function refuse_when_full()
  redis.call('ZADD', members, 'XX', 0, '')
end

-- the heartbeat: the peer is live from now, its keys kept as long; once per half PEER_TTL it asks for
-- the room's look in sig:reap and its IP's lease to be renewed. PEXPIRE first: it may not grow memory,
-- so a script that starts with a heartbeat (a poll's acknowledgement, a member list) runs when Redis is full
local function touch(id, now, ttl)
  local pk = peer_key(id)
  local ms = keep_ms(ttl)
  redis.call('PEXPIRE', members, ms)
  redis.call('PEXPIRE', pk, ms)
  redis.call('PEXPIRE', mbox_key(id), ms)
  redis.call('ZADD', members, now, id)
  local v = redis.call('HMGET', pk, 'renewed', 'ip')
  if not v[1] or now - tonumber(v[1]) >= ttl / 2 then
    redis.call('HSET', pk, 'renewed', tostring(now))
    RENEW[#RENEW + 1] = {id, v[2] or '', tostring(now)}
  end
end

-- On one Redis a holder's wake-ups arrive in the order of their seqs, so the new
-- envelopes ride along (one per line) and the woken poll answers without a second round trip.
local function wake(id, envelopes)
  local holder = redis.call('HGET', peer_key(id), 'holder')
  if holder then
    local message = 'M ' .. room .. ' ' .. id
    if envelopes and not SHARDED then message = message .. ' ' .. table.concat(envelopes, '\n') end
    notify(string.match(holder, '^(%S+) '), message)
  end
end

-- an envelope as stored (protocol.with_seq); #text is its size in bytes (MAILBOX_BYTES)
local function with_seq(seq, tail) return '{"seq":' .. seq .. ',' .. tail end

-- store envelopes under the next seqs, oldest first, and wake the peer's poll once; returns their seqs.
-- A member left with UNREAD_EVENTS unacknowledged events is not reading: it is gone at once, as if silent.
local function push(id, tails, is_event, ttl)
  local pk, mb = peer_key(id), mbox_key(id)
  local first = redis.call('HINCRBY', pk, 'seq', #tails) - #tails + 1
  local mark = is_event and 'E' or 'M'
  local seqs, envelopes, stored, size = {}, {}, {}, 0
  for i, tail in ipairs(tails) do
    seqs[i] = first + i - 1
    envelopes[i] = with_seq(seqs[i], tail)
    stored[i] = mark .. envelopes[i]
    size = size + #envelopes[i]
  end
  redis.call('RPUSH', mb, unpack(stored))
  if is_event then
    if redis.call('HINCRBY', pk, 'events', #tails) >= UNREAD_EVENTS then redis.call('ZADD', members, 0, id) end
  else
    redis.call('HINCRBY', pk, 'bytes', size)
  end
  redis.call('PEXPIRE', mb, keep_ms(ttl))
  wake(id, envelopes)
  return seqs
end

-- a peer's id and join time: an Idempotency-Key receipt is bound to these two peers' lives
local function incarnation(id)
  return id .. '@' .. (redis.call('HGET', peer_key(id), 'since') or '0')
end

-- Keep a send's Idempotency-Key receipt (`receipt`, a key under sig:{room}:idem:<from>@<since>:) for
-- `receipt_ttl` seconds. A sender (one life of a peer) keeps its newest IDEMPOTENCY_KEYS_PER_PEER receipts,
-- listed in the zset sig:{room}:idem:<from>@<since> by when they expire, each a little after the one kept
-- before it (so within one clock tick too the order is the order kept): past the bound the oldest go, their
-- receipts with them. The list lives as long as its newest receipt.
local function keep_receipt(from, receipt, answer, now, receipt_ttl)
  local index = prefix .. 'idem:' .. incarnation(from)
  local expires = now + tonumber(receipt_ttl)
  redis.call('SET', receipt, answer, 'EX', receipt_ttl)
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

-- a peer's life is over: no one can send as it again, so its receipts go with it (at most the bound's)
local function drop_receipts(id)
  local index = prefix .. 'idem:' .. incarnation(id)
  for _, listed in ipairs(redis.call('ZRANGE', index, 0, -1)) do redis.call('DEL', index .. ':' .. listed) end
  redis.call('DEL', index)
end

-- whether `id`'s mailbox has room for all of `tails`: MAILBOX_LIMIT envelopes and MAILBOX_BYTES as stored
local function has_room(id, tails, limit, max_bytes)
  local v = redis.call('HMGET', peer_key(id), 'seq', 'acked', 'events', 'bytes')
  local seq = tonumber(v[1]) or 0
  if seq - (tonumber(v[2]) or 0) - (tonumber(v[3]) or 0) + #tails > limit then return false end
  local size = tonumber(v[4]) or 0
  for i, tail in ipairs(tails) do size = size + #with_seq(seq + i, tail) end
  return size <= max_bytes
end

-- count `hits` sends in a fixed one-second window; the milliseconds left in it when they go past
-- `limit`. Hits that find the window untouched pass, so a batch larger than the limit is not refused forever.
local function over_rate(id, limit, hits)
  if limit <= 0 then return nil end
  local key = prefix .. 'rate:' .. id
  local n = redis.call('INCRBY', key, hits)
  if n == hits then redis.call('PEXPIRE', key, 1000) end
  if n > limit and n > hits then return redis.call('PTTL', key) end
  return nil
end

-- a peer-left (or peer-joined) tail for `id`, from the two halves around its quoted id
local function about(id, before, after) return before .. '"' .. id .. '"' .. after end

local function others_of(id)
  local out = {}
  for _, m in ipairs(redis.call('ZRANGE', members, 0, -1)) do
    if m ~= id then out[#out + 1] = m end
  end
  return out
end

local function live_members(now, ttl)
  return redis.call('ZRANGEBYSCORE', members, '(' .. tostring(now - ttl), '+inf')
end

local function remove_peer(id, tail, now, ttl)
  wake(id)  -- a poll it still holds looks again and learns it is gone
  drop_receipts(id)
  redis.call('ZREM', members, id)
  redis.call('DEL', peer_key(id), mbox_key(id))
  for _, m in ipairs(live_members(now, ttl)) do push(m, {tail}, true, ttl) end
end

local function reap_room(now, ttl, before, after)
  local expired = redis.call('ZRANGEBYSCORE', members, '-inf', tostring(now - ttl))
  for _, id in ipairs(expired) do remove_peer(id, about(id, before, after), now, ttl) end
  return expired
end
"""

JOIN = r"""
-- Add a peer, or resume it when the presented token is its own; reaps the room's expired peers first.
-- One script, so no other request comes between its checks and its writes: of two joins with one
-- single-use ticket only one finds its jti unused, and a refused join leaves nothing behind.
-- KEYS[1]  sig:{room}:members
-- ARGV     peer, new token's hash, presented token's hash ('' for none), now, peer ttl, room capacity,
--          peer-joined tail, peer-left (timeout) tail's halves before and after the id,
--          the code to refuse a fresh join with ('' when it may be fresh: tickets off, or its ticket passed),
--          the ticket's jti ('' for none; kept at sig:{room}:jti:<jti> once it admitted a join),
--          until when that jti is kept (unix ms: the ticket's exp plus the leeway),
--          the client IP whose place the peer takes ('' when per-IP limits are off)
-- returns  {'created' | 'resumed', cursor, other ids...} | {'err', code}
local id, new_hash, given = ARGV[1], ARGV[2], ARGV[3]
local since, now, ttl, capacity = ARGV[4], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local joined_tail, left_before, left_after = ARGV[7], ARGV[8], ARGV[9]
local refused, jti, jti_until, ip = ARGV[10], ARGV[11], ARGV[12], ARGV[13]

local pk = peer_key(id)
local jti_key = prefix .. 'jti:' .. jti
if not (is_live(id, now, ttl) and same(redis.call('HGET', pk, 'token'), given)) then  -- not a resume
  if refused ~= '' then return {'err', refused} end
  if jti ~= '' and redis.call('EXISTS', jti_key) == 1 then return {'err', 'bad_ticket'} end
end
refuse_when_full()
reap_room(now, ttl, left_before, left_after)
if redis.call('ZSCORE', members, id) then
  if not same(redis.call('HGET', pk, 'token'), given) then return {'err', 'peer_id_taken'} end
  if ip ~= '' and redis.call('HGET', pk, 'ip') ~= ip then  -- resumed from another address: its place now
    redis.call('HSET', pk, 'ip', ip)
    redis.call('HDEL', pk, 'renewed')
  end
  touch(id, now, ttl)
  local acked = redis.call('HGET', pk, 'acked') or '0'
  return {'resumed', acked, unpack(others_of(id))}
end
if redis.call('ZCARD', members) >= capacity then return {'err', 'room_full'} end
local others = others_of(id)
redis.call('DEL', pk, mbox_key(id))
redis.call('HSET', pk, 'token', new_hash, 'since', since, 'seq', 0, 'acked', 0, 'events', 0, 'bytes', 0, 'ip', ip)
touch(id, now, ttl)
for _, m in ipairs(others) do push(m, {joined_tail}, true, ttl) end
if jti ~= '' then redis.call('SET', jti_key, id, 'PXAT', jti_until) end
return {'created', '0', unpack(others)}
"""

FETCH = r"""
-- A poll's or stream's look: acknowledge seqs <= after, record the holder, return what is left past read_after.
-- KEYS[1]  sig:{room}:members
-- ARGV     peer, token hash, now, peer ttl, after, limit, holder ("<instance> <poll id>", '' for none),
--          read_after (a stream reads on past what it delivered without acknowledging it; '' for after)
-- returns  {'ok', cursor, stored envelopes...} | {'err', code[, last seq given out]}
local id, given = ARGV[1], ARGV[2]
local now, ttl, after, limit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local hold, read_after = ARGV[7], tonumber(ARGV[8]) or tonumber(ARGV[5])

local err = authenticate(id, given, now, ttl)
if err then return {'err', err} end
touch(id, now, ttl)
local pk, mb = peer_key(id), mbox_key(id)
local v = redis.call('HMGET', pk, 'seq', 'acked', 'holder')
local seq, acked = tonumber(v[1]) or 0, tonumber(v[2]) or 0
if after > seq then return {'err', 'bad_cursor', tostring(seq)} end
if after > acked then
  local n = after - acked
  local events, size = 0, 0
  for _, text in ipairs(redis.call('LRANGE', mb, 0, n - 1)) do
    if string.byte(text, 1) == 69 then events = events + 1 else size = size + #text - 1 end  -- 'E', or 'M' .. text
  end
  if events > 0 then redis.call('HINCRBY', pk, 'events', -events) end
  if size > 0 then redis.call('HINCRBY', pk, 'bytes', -size) end
  redis.call('LTRIM', mb, n, -1)
  redis.call('HSET', pk, 'acked', after)
  acked = after
end
if hold ~= '' then
  local old = v[3]
  redis.call('HSET', pk, 'holder', hold)
  if old and old ~= hold then
    local old_instance, old_poll = string.match(old, '^(%S+) (%S+)$')
    if old_instance ~= string.match(hold, '^(%S+) ') then
      notify(old_instance, 'S ' .. room .. ' ' .. id .. ' ' .. old_poll)
    end
  end
end
local skip = math.max(read_after - acked, 0)  -- the list holds seqs acked + 1, acked + 2, ...
local items = redis.call('LRANGE', mb, skip, skip + limit - 1)
local cursor = read_after
if #items > 0 then cursor = acked + skip + #items end
return {'ok', tostring(cursor), unpack(items)}
"""

KEEP_ALIVE = r"""
-- Peers of one room with an open stream are heard from now: a batch of heartbeats, without tokens.
-- KEYS[1]  sig:{room}:members
-- ARGV     now, peer ttl, then for each peer: its id, the hash of the token its stream opened with
-- returns  {'ok'}
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])

for i = 3, #ARGV, 2 do
  local id, token_hash = ARGV[i], ARGV[i + 1]
  -- only this life of the peer: a later one with its id (another token) is left to its own requests
  if is_live(id, now, ttl) and same(redis.call('HGET', peer_key(id), 'token'), token_hash) then
    touch(id, now, ttl)
  end
end
return {'ok'}
"""

SEND = r"""
-- Store a send's envelopes in one mailbox, all of them or none, and wake its poll once.
-- KEYS[1]  sig:{room}:members
-- ARGV     sender, token hash, now, peer ttl, recipient, digest of the body, Idempotency-Key ('' for none),
--          mailbox limit, mailbox bytes, receipt lifetime (s), sends per second, then each envelope's tail, in order
-- returns  {'ok', seqs joined by ','} | {'err', code[, milliseconds to wait]}
local from, given, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local to, digest, key = ARGV[5], ARGV[6], ARGV[7]
local limit, max_bytes, receipt_ttl, per_second = tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10], tonumber(ARGV[11])
local tails = {unpack(ARGV, 12)}

local err = authenticate(from, given, now, ttl)
if err then return {'err', err} end
refuse_when_full()
touch(from, now, ttl)
local wait = over_rate(from, per_second, #tails)
if wait then return {'err', 'send_rate_limited', tostring(wait)} end
if not is_live(to, now, ttl) then return {'err', 'peer_not_found'} end
local receipt = nil
if key ~= '' then
  receipt = prefix .. 'idem:' .. incarnation(from) .. ':' .. incarnation(to) .. ':' .. key
  local seen = redis.call('GET', receipt)
  if seen then
    local d, answer = string.match(seen, '^(%S+) (.*)$')
    if d ~= digest then return {'err', 'idempotency_key_reused'} end
    return {'ok', answer}
  end
end
if not has_room(to, tails, limit, max_bytes) then return {'err', 'mailbox_full'} end
local seqs = table.concat(push(to, tails, false, ttl), ',')
if receipt then keep_receipt(from, receipt, digest .. ' ' .. seqs, now, receipt_ttl) end
return {'ok', seqs}
"""

BROADCAST = r"""
-- Store a broadcast's envelopes for every other live member with room for all of them.
-- KEYS[1]  sig:{room}:members
-- ARGV     sender, token hash, now, peer ttl, digest of the body, Idempotency-Key ('' for none),
--          mailbox limit, mailbox bytes, receipt lifetime (s), sends per second, then each envelope's tail, in order
-- returns  {'ok', delivered ids joined by ',', full ids joined by ','} | {'err', code[, milliseconds to wait]}
local from, given, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local digest, key, limit, max_bytes = ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local receipt_ttl, per_second = ARGV[9], tonumber(ARGV[10])
local tails = {unpack(ARGV, 11)}

local err = authenticate(from, given, now, ttl)
if err then return {'err', err} end
refuse_when_full()
touch(from, now, ttl)
local wait = over_rate(from, per_second, #tails)
if wait then return {'err', 'send_rate_limited', tostring(wait)} end
local receipt = nil
if key ~= '' then
  receipt = prefix .. 'idem:' .. incarnation(from) .. ':*:' .. key
  local seen = redis.call('GET', receipt)
  if seen then
    local d, delivered, full = string.match(seen, '^(%S+) ([^|]*)|(.*)$')
    if d ~= digest then return {'err', 'idempotency_key_reused'} end
    return {'ok', delivered, full}
  end
end
local delivered, full = {}, {}
for _, m in ipairs(live_members(now, ttl)) do
  if m ~= from then
    if not has_room(m, tails, limit, max_bytes) then
      full[#full + 1] = m
    else
      push(m, tails, false, ttl)
      delivered[#delivered + 1] = m
    end
  end
end
local d, f = table.concat(delivered, ','), table.concat(full, ',')
if receipt and #delivered > 0 then keep_receipt(from, receipt, digest .. ' ' .. d .. '|' .. f, now, receipt_ttl) end
return {'ok', d, f}
"""

MEMBERS = r"""
-- The live members, for a member.
-- KEYS[1]  sig:{room}:members
-- ARGV     peer, token hash, now, peer ttl
-- returns  {'ok', live ids...} | {'err', code}
local id, given, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])

local err = authenticate(id, given, now, ttl)
if err then return {'err', err} end
touch(id, now, ttl)
return {'ok', unpack(live_members(now, ttl))}
"""

LEAVE = r"""
-- Remove a peer and its mailbox; the others get peer-left. Not a member: nothing happens.
-- KEYS[1]  sig:{room}:members
-- ARGV     peer, token hash, now, peer ttl, peer-left (left) tail
-- returns  {'ok', the IP whose place it held ('' for none)} | {'ok'} (not a member) | {'err', 'unauthorized'}
local id, given, now, ttl, left_tail = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]

local err = authenticate(id, given, now, ttl)
if err == 'unauthorized' then return {'err', err} end
if err then return {'ok'} end
local ip = redis.call('HGET', peer_key(id), 'ip') or ''
remove_peer(id, left_tail, now, ttl)
return {'ok', ip}
"""

REAP = r"""
-- Remove the room's expired peers (peer-left timeout to the others).
-- KEYS[1]  sig:{room}:members
-- ARGV     now, peer ttl, peer-left (timeout) tail's halves before and after the id
-- returns  {when to look next (unix s; -1: the room is empty), removed ids...}
local now, ttl, left_before, left_after = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]

local removed = reap_room(now, ttl, left_before, left_after)
local oldest = redis.call('ZRANGE', members, 0, 0, 'WITHSCORES')
local next_look = -1
if #oldest > 0 then next_look = tonumber(oldest[2]) + ttl end
return {tostring(next_look), unpack(removed)}
"""

ADMIT = r"""
-- Count a join attempt from a client IP and lease it a place ("<room> <peer>").
-- KEYS[1]  sig:ip:{ip}:joins    KEYS[2]  sig:ip:{ip}:peers
-- ARGV     now, place, room, joins per minute, peers per IP, rooms per IP, lease expiry (unix s)
-- returns  {'ok', 1 if the lease is new else 0} | {'err', code, milliseconds to wait}
local joins_key, leases_key = KEYS[1], KEYS[2]
local now, place, room = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local joins, max_peers, max_rooms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local expiry = ARGV[7]

if joins > 0 then
  local n = redis.call('INCR', joins_key)
  if n == 1 then redis.call('PEXPIRE', joins_key, 60000) end
  if n > joins then return {'err', 'join_rate_limited', tostring(redis.call('PTTL', joins_key))} end
end
if max_peers <= 0 and max_rooms <= 0 then return {'ok', 0} end
redis.call('ZREMRANGEBYSCORE', leases_key, '-inf', now)
local new = redis.call('ZSCORE', leases_key, place) == false
if new then
  local leases = redis.call('ZRANGE', leases_key, 0, -1, 'WITHSCORES')
  if #leases > 0 then
    local wait = tostring(math.ceil((tonumber(leases[2]) - now) * 1000))
    if max_peers > 0 and #leases / 2 >= max_peers then return {'err', 'too_many_peers', wait} end
    local rooms, count = {}, 0
    for i = 1, #leases, 2 do
      local r = string.match(leases[i], '^(%S+) ')
      if not rooms[r] then rooms[r] = true; count = count + 1 end
    end
    if max_rooms > 0 and not rooms[room] and count >= max_rooms then return {'err', 'too_many_rooms', wait} end
  end
end
redis.call('ZADD', leases_key, 'GT', expiry, place)  -- never shortens a lease a heartbeat renewed
-- the key lasts as long as its longest lease (a heartbeat's renewal may have set one beyond this one)
local last = redis.call('ZRANGE', leases_key, -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', leases_key, math.ceil(tonumber(last[2]) * 1000))
return {'ok', new and 1 or 0}
"""

_ROOM_SCRIPTS = {
    "join": JOIN, "fetch": FETCH, "send": SEND, "broadcast": BROADCAST,
    "members": MEMBERS, "leave": LEAVE, "reap": REAP, "keep_alive": KEEP_ALIVE,
}


def scripts(sharded: bool) -> dict[str, str]:
    """Every script's full source; each returns {its result, the wake-ups it left to send, RENEW}."""
    def build(body: str, prelude: str) -> str:
        constants = (f"local SHARDED = {'true' if sharded else 'false'}\nlocal UNREAD_EVENTS = {UNREAD_EVENTS}\n"
                     f"local IDEMPOTENCY_KEYS_PER_PEER = {IDEMPOTENCY_KEYS_PER_PEER}\n")
        head = f"{constants}{_NOTIFY}{prelude}"
        return f"{head}local function main()\n{body}\nend\nreturn {{main(), WAKES, RENEW}}\n"

    return {
        **{name: build(body, _PRELUDE) for name, body in _ROOM_SCRIPTS.items()},
        "admit": build(ADMIT, ""),
    }


#: a script's error reply {'err', code, ...} names one of these
_ERRORS = errors.by_code()


#: what a Redis or Redis Cluster that cannot be reached raises
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError,
               redis.exceptions.RedisClusterException, OSError)


@contextlib.contextmanager
def _reachable():
    """Turn a lost, timed-out or full Redis into `503 backend_unavailable`.

    Full: at `maxmemory` with `noeviction` (the README's deployment), Redis
    refuses writes that may grow memory with an OOM error; a script is refused
    whole, before its first write (`refuse_when_full`).
    """
    try:
        yield
    except UNREACHABLE as exc:
        raise errors.BackendUnavailable() from exc
    except redis.exceptions.OutOfMemoryError as exc:
        log.warning("Redis is full (maxmemory): %s", exc)
        raise errors.BackendUnavailable("the state store is full; try again shortly") from exc


def _halves(peer_tail: str) -> tuple[str, str]:
    """Split a tail made for the placeholder peer "@" into the parts around its quoted id."""
    before, after = peer_tail.split('"@"', 1)
    return before, after


class RedisBackend(Backend):
    """All state in Redis; any number of processes share it."""

    name = "redis"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance = secrets.token_hex(8)
        self.sharded = self.settings.redis_url.startswith(CLUSTER_SCHEMES)
        self.name = "redis-cluster" if self.sharded else "redis"
        self._lanes = max(1, min(LANES, self.settings.redis_max_connections - 1))  # and one left for the pool
        self.client = self._connect(f"signaling:{self.instance}", pooled=True)
        self._scripts = scripts(self.sharded)
        self._sha = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in self._scripts.items()}
        self._loading = threading.Lock()
        self._script_loads = 0  # how many times the scripts were loaded: a NOSCRIPT seen before a load needs none
        self._round_trips = Autopipeline(self.client, self._lanes, TIMEOUT)
        self._closed = threading.Event()
        self._listener: threading.Thread | None = None

    # -- plumbing

    def _connect(self, name: str, pooled: bool) -> redis.Redis | redis.RedisCluster:
        """A client for requests (`pooled`: at most REDIS_MAX_CONNECTIONS, per node) or for pub/sub.

        On one Redis the lanes' connections count among REDIS_MAX_CONNECTIONS:
        the pool keeps the rest (at least one) for the commands outside them.
        No automatic retries: a timed-out send may have run, and running it
        twice would store the envelope twice. The client retries, with an
        Idempotency-Key if it cares.
        """
        options = dict(
            socket_timeout=TIMEOUT if pooled else None, socket_connect_timeout=TIMEOUT, retry=Retry(NoBackoff(), 0),
            decode_responses=True, client_name=name,
        )
        if pooled:
            most = self.settings.redis_max_connections
            options.update(max_connections=most if self.sharded else max(1, most - self._lanes))
        else:
            options.update(health_check_interval=10)
        url = self.settings.redis_url
        if self.sharded:
            if pooled:
                options.update(connection_pool_class=redis.BlockingConnectionPool)
            return redis.RedisCluster.from_url(url.replace("+cluster", "", 1), **options)
        if pooled:
            return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(url, timeout=TIMEOUT, **options))
        return redis.Redis.from_url(url, **options)

    def _pipeline(self, calls: list[tuple[str, list[str], list]]) -> tuple[list, list]:
        """Run scripts (name, keys, args) in one round trip: (their results, the renewals they asked for).

        A renewal is (the script's first key, peer, IP, now): see `_renew`.

        Scripts go by EVALSHA; after a Redis restart forgot them, they are
        loaded and the ones that got NOSCRIPT (and so did not run) run again.
        """
        commands = [("EVALSHA", self._sha[name], len(keys), *keys, *args) for name, keys, args in calls]
        with _reachable():
            loads = self._script_loads
            replies = self._round_trips.execute(commands)
            forgotten = [i for i, reply in enumerate(replies[: len(calls)]) if _noscript(reply)]
            if forgotten:
                with self._loading:  # one request loads them; the others that found them gone meanwhile wait
                    if self._script_loads == loads:
                        for source in self._scripts.values():
                            self.client.script_load(source)
                        self._script_loads += 1
                again = self._round_trips.execute([commands[i] for i in forgotten])
                for i, reply in zip(forgotten, again, strict=True):
                    replies[i] = reply
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            results, renewals, wakes = [], [], []
            for (_, keys, _), (result, notify, renew) in zip(calls, replies, strict=True):
                results.append(result)
                renewals += [(keys[0], *asked) for asked in renew]
                wakes += notify
            if wakes:  # Redis Cluster: the script could not publish to another slot's channel
                self._round_trips.execute(
                    [("SPUBLISH", wake_channel(instance), message)
                     for instance, message in zip(wakes[::2], wakes[1::2], strict=True)]
                )
        return results, renewals

    def _run(self, name: str, room: str, args: list, keys: list[str] | None = None, **context) -> list:
        """Run one script on the room's keys (or `keys`); an error reply becomes the API error."""
        (reply,), renewals = self._pipeline([(name, keys or [members_key(room)], args)])
        self._renew(renewals)  # the caller authenticated, even if the script then refused what it asked
        if reply and reply[0] == "err":
            kind, detail = _ERRORS[reply[1]], reply[2:]
            # the detail is the last seq given out (bad_cursor), or the milliseconds to wait (a limit)
            waits = detail and issubclass(kind, errors.TooManyRequests)
            raise kind.about(room=room, settings=self.settings, seq=detail[0] if detail else "?",
                             retry_after=int(detail[0]) / 1000 if waits else None, **context)
        return reply

    def _renew(self, renewals: list[tuple[str, str, str, str]]) -> None:
        """What heartbeats asked for, in one round trip: each room stays in `sig:reap`, each IP keeps its peer's place.

        A lease runs 1.5 * PEER_TTL + TIMEOUT from a renewal: without another
        renewal the peer outlives this one by at most 1.5 * PEER_TTL (a heartbeat
        just before the next renewal is due, then PEER_TTL of silence), and
        TIMEOUT covers the next renewal's way here. The request's own work is
        done by now: a renewal that fails is logged, not answered.
        """
        if not renewals:
            return
        ttl, commands = self.settings.peer_ttl, []
        for key, peer, client_ip, now in renewals:
            room, since = room_of(key), float(now)
            commands.append(("ZADD", REAP_KEY, "NX", repr(since + ttl), room))
            if client_ip:
                leases, until = ip_keys(client_ip)[1], since + 1.5 * ttl + TIMEOUT
                commands += [("ZADD", leases, "XX", "GT", repr(until), f"{room} {peer}"),
                             ("PEXPIREAT", leases, math.ceil(until * 1000))]
        try:
            failed = [reply for reply in self._round_trips.execute(commands) if isinstance(reply, Exception)]
        except UNREACHABLE as exc:
            failed = [exc]
        if failed:
            log.warning("renewal of %d peers (%s in %s first) failed: %s",
                        len(renewals), renewals[0][1], room_of(renewals[0][0]), failed[0])

    # -- the contract

    def admit(self, client_ip, room, peer, now):
        settings = self.settings
        _, new = self._run(
            "admit", room,
            [repr(now), f"{room} {peer}", room, settings.joins_per_ip_per_minute, settings.peers_per_ip,
             settings.rooms_per_ip, repr(now + settings.peer_ttl)],
            keys=ip_keys(client_ip), client_ip=client_ip,
        )
        return bool(new)

    def release(self, client_ip, room, peer):
        if not (self.settings.peers_per_ip or self.settings.rooms_per_ip):
            return
        with _reachable():
            self.client.zrem(ip_keys(client_ip)[1], f"{room} {peer}")

    def join(self, room, peer, new_token, token, now, jti=None, jti_until=0.0, refusal=None, client_ip=None):
        settings = self.settings
        before, after = _halves(envelope_tail("@", "peer-left", {"reason": "timeout"}, now))
        leased_to = client_ip if client_ip and (settings.peers_per_ip or settings.rooms_per_ip) else ""
        try:
            status, cursor, *others = self._run(
                "join", room,
                [peer, hash_token(new_token), _hashed(token), repr(now), repr(settings.peer_ttl),
                 settings.room_capacity, envelope_tail(peer, "peer-joined", None, now), before, after,
                 refusal.code if refusal else "", jti or "", math.ceil(jti_until * 1000) if jti else 0, leased_to],
                peer=peer,
            )
        except (errors.TicketRequired, errors.BadTicket):
            # the script names the code; which check failed, the view's refusal says, or the jti was used
            raise (refusal or errors.BadTicket.used()) from None
        return Joined(created=status == "created", peers=others, cursor=int(cursor))

    def fetch(self, room, peer, token, after, limit, now, hold=None, read_after=None):
        holder = f"{self.instance} {hold}" if hold is not None else ""
        _, cursor, *items = self._run(
            "fetch", room,
            [peer, _hashed(token), repr(now), repr(self.settings.peer_ttl), after, limit, holder,
             "" if read_after is None else read_after],
            peer=peer, after=after,
        )
        return [item[1:] for item in items], int(cursor)

    def keep_alive(self, listeners, now):
        """One round trip: a `keep_alive` script per room; the renewals their heartbeats ask for in a second."""
        by_room: dict[str, list[str]] = {}
        for listener in listeners:
            by_room.setdefault(listener.room, []).extend((listener.peer, listener.token_hash))
        args = [repr(now), repr(self.settings.peer_ttl)]
        _, renewals = self._pipeline([("keep_alive", [members_key(room)], args + peers)
                                      for room, peers in by_room.items()])
        self._renew(renewals)

    def send(self, out):
        _, seqs = self._run(
            "send", out.room,
            [out.sender, _hashed(out.token), repr(out.now), repr(self.settings.peer_ttl), out.to, out.digest,
             out.idempotency_key or "", self.settings.mailbox_limit, self.settings.mailbox_bytes, IDEMPOTENCY_TTL,
             self.settings.sends_per_peer_per_second, *out.tails],
            peer=out.sender, to=out.to,
        )
        return [int(seq) for seq in seqs.split(",")]

    def broadcast(self, out):
        _, delivered, full = self._run(
            "broadcast", out.room,
            [out.sender, _hashed(out.token), repr(out.now), repr(self.settings.peer_ttl), out.digest,
             out.idempotency_key or "", self.settings.mailbox_limit, self.settings.mailbox_bytes, IDEMPOTENCY_TTL,
             self.settings.sends_per_peer_per_second, *out.tails],
            peer=out.sender,
        )
        return Broadcast(delivered.split(",") if delivered else [], full.split(",") if full else [])

    def members(self, room, peer, token, now):
        reply = self._run(
            "members", room, [peer, _hashed(token), repr(now), repr(self.settings.peer_ttl)], peer=peer
        )
        return reply[1:]

    def leave(self, room, peer, token, now):
        tail = envelope_tail(peer, "peer-left", {"reason": "left"}, now)
        _, *place = self._run(
            "leave", room, [peer, _hashed(token), repr(now), repr(self.settings.peer_ttl), tail], peer=peer
        )
        if place and place[0]:
            self.release(place[0], room, peer)

    def reap(self, now):
        with _reachable():
            due = self.client.zrangebyscore(REAP_KEY, "-inf", now, start=0, num=200)
        if not due:
            return []
        before, after = _halves(envelope_tail("@", "peer-left", {"reason": "timeout"}, now))
        args = [repr(now), repr(self.settings.peer_ttl), before, after]
        replies, _ = self._pipeline([("reap", [members_key(room)], args) for room in due])
        removed, empty, next_look = [], [], {}
        for room, (look, *gone) in zip(due, replies, strict=True):
            removed += [(room, peer) for peer in gone]
            if float(look) < 0:
                empty.append(room)
            else:
                next_look[room] = float(look)
        with _reachable():
            pipe = self.client.pipeline(transaction=False)
            if empty:
                pipe.zrem(REAP_KEY, *empty)
            if next_look:
                pipe.zadd(REAP_KEY, next_look)
            pipe.execute()
            if empty:
                self._keep_joined_rooms(empty, now)
        return removed

    def _keep_joined_rooms(self, rooms: list[str], now: float) -> None:
        """Schedule again the rooms found empty that a join has filled since.

        The look and the ZREM are two steps: a join between them adds its room
        to `sig:reap` while it is still there, and the ZREM then takes it out.
        Looking once more after the ZREM closes the gap: a join this look does
        not see comes after the ZREM, and its own renewal puts the room back.
        """
        pipe = self.client.pipeline(transaction=False)
        for room in rooms:
            pipe.exists(members_key(room))
        joined = {room: now for room, found in zip(rooms, pipe.execute(), strict=True) if found}
        if joined:
            self.client.zadd(REAP_KEY, joined, nx=True)

    def ping(self):
        with _reachable():
            self.client.ping()

    # -- wake-ups

    def start(self) -> None:
        self._listener = threading.Thread(target=self._listen, name="signaling-wakeups", daemon=True)
        self._listener.start()

    def close(self) -> None:
        self._closed.set()
        self._round_trips.close()
        if self.sharded:
            self.client.close()
        else:  # Redis.close() leaves a pool it was given alone
            self.client.connection_pool.disconnect()

    def _listen(self) -> None:
        """Feed this instance's wake-up channel to the hub; reconnect with capped backoff."""
        channel = wake_channel(self.instance)
        backoff = 0.1
        while not self._closed.is_set():
            pubsub = None
            try:
                pubsub = self._connect(f"signaling:{self.instance}:wake", pooled=False).pubsub(
                    ignore_subscribe_messages=True
                )
                if self.sharded:
                    pubsub.ssubscribe(channel)
                    receive = pubsub.get_sharded_message
                else:
                    pubsub.subscribe(channel)
                    receive = pubsub.get_message
                receive(timeout=1.0)  # the subscription is confirmed
                # Wake-ups published while we were not listening are lost: every held poll looks again.
                self.hub.wake_all()
                backoff = 0.1
                while not self._closed.is_set():
                    message = receive(timeout=1.0)
                    if message is not None and message["type"] in ("message", "smessage"):
                        self._dispatch(message["data"])
            except UNREACHABLE as exc:
                if self._closed.is_set():
                    break
                self.hub.wake_all()  # held polls look again now: they answer 503 rather than wait it out
                log.warning("wake-up channel lost (%s); reconnecting in %.1fs", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def _dispatch(self, data: str) -> None:
        kind, _, rest = data.partition(" ")
        if kind == "M":  # "M room peer", or "M room peer <envelopes, one per line>" from one Redis
            room, peer, *envelopes = rest.split(" ", 2)
            self.hub.wake(room, peer, envelopes[0].split("\n") if envelopes else None)
        elif kind == "S":
            room, peer, poll_id = rest.split(" ")
            self.hub.supersede(room, peer, int(poll_id))


def _noscript(reply) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError) or (
        isinstance(reply, redis.ResponseError) and str(reply).startswith("NOSCRIPT")
    )


def _hashed(token: str | None) -> str:
    return hash_token(token) if token else ""
