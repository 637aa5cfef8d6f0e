"""The key layout: every key the Redis backend writes, one function per kind that Python names.

Every key of a room carries the hash tag `{room}`, so a room lives on one
Redis Cluster shard and a script may touch all of its keys. Python names only
the members key; the room scripts derive the others from it (lua/lib/room.lua
and receipts.lua), in the same slot:

    sig:{room}:members            zset  peer id -> last heartbeat (unix s)
    sig:{room}:peer:<id>          hash  token (sha256), since (join time), seq, acked, events, bytes, holder,
                                        ip (whose place it holds), renewed (when it last asked for a renewal),
                                        meta (its meta, compact JSON; absent without)
    sig:{room}:mbox:<id>          list  "M"|"E" + envelope JSON, oldest first
    sig:{room}:idem:<from>@<since>:<to>@<since>:<key>   string  a receipt, JSON {"digest", "answer"}, 10 minutes
    sig:{room}:idem:<from>@<since>  zset  a sender's receipts ("<to>@<since>:<key>", "*:<key>" for a broadcast)
                                        -> when they expire; its newest IDEMPOTENCY_KEYS_PER_PEER are kept
    sig:{room}:jti:<jti>          string  the peer a single-use join ticket admitted, until its exp (+ leeway)
    sig:{room}:rate:<id>          string  sends in the current second
    sig:{room}:hooks              list    the room's webhook outbox, oldest first: "<id> <type> <ts> <data JSON>"
    sig:{room}:hook               hash    lease (of the attempt out with the first event), attempts (failed so far)
    sig:{room}:removed:<id>       hash    token (the removed peer's hash), reason: the server API removed it;
                                          its token is answered 403 removed for PEER_TTL
    sig:{room}:ban:<id>           string  the id is banned from the room until the key expires

The outbox outlives the room's other keys (it has no expiry: an ended room's
events are delivered for up to WEBHOOK_RETRY_FOR); it goes when emptied.

Abuse limits per client IP use the IP as hash tag:

    sig:ip:{<ip>}:joins           string  joins in the current minute
    sig:ip:{<ip>}:peers           zset    "<room> <peer>" -> lease expiry

Peer keys expire 2 * PEER_TTL + 10 s after the last heartbeat, so a crash
leaves nothing behind for long. One global key, `sig:reap` (zset room ->
when to look for expired peers next), lets any instance find rooms to reap
without scanning; scripts never touch it, so no script crosses slots.

Webhook outboxes are found through an index of the rooms that have one, written
by the same script that records an event, so it cannot miss one:

    <index>                       zset    room -> when its first event is due (a lease's end while leased)
    <index>:oldest                zset    room -> when its first event happened
    <index>:count                 string  events in the outboxes it indexes

A script may only touch its room's slot, so on one Redis the index is
`sig:hooks`, and on Redis Cluster there is one per slot, `sig:hooks:{<tag>}`,
`<tag>` a short string of that slot (`hooks_index`): every instance sweeps
them all now and then, and in between looks at the rooms it recorded or
settled itself (redis/backend.py, "Webhook outboxes on a cluster").

Each instance also has a wake-up channel, `sig:wake:{<instance>}` (wakeups.py).
"""

from __future__ import annotations

import functools

from redis.crc import key_slot

#: zset room -> when to look for its expired peers next (unix s): the one key outside any room's slot
REAP = "sig:reap"


#: the webhook outbox index on one Redis (see above)
HOOKS = "sig:hooks"
CLUSTER_SLOTS = 16384


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """A hash tag for each Redis Cluster slot, the shortest hex number in it (half a second, once a process)."""
    tags: list[str | None] = [None] * CLUSTER_SLOTS
    missing, n = CLUSTER_SLOTS, 0
    while missing:
        tag = format(n, "x")
        slot = key_slot(tag.encode())
        if tags[slot] is None:
            tags[slot], missing = tag, missing - 1
        n += 1
    return tuple(tags)


def hooks_index(room: str, sharded: bool) -> str:
    """The webhook outbox index of the room's slot (see above)."""
    if not sharded:
        return HOOKS
    return f"{HOOKS}:{{{slot_tags()[key_slot(room.encode())]}}}"


def hooks_indexes(sharded: bool) -> list[str]:
    """Every webhook outbox index: the one of one Redis, or one a slot on a cluster."""
    return [f"{HOOKS}:{{{tag}}}" for tag in slot_tags()] if sharded else [HOOKS]


def members(room: str) -> str:
    """The room's members: the one room key Python names, KEYS[1] of every room script."""
    return f"sig:{{{room}}}:members"


def ip_joins(client_ip: str) -> str:
    return f"sig:ip:{{{client_ip}}}:joins"


def ip_leases(client_ip: str) -> str:
    return f"sig:ip:{{{client_ip}}}:peers"
