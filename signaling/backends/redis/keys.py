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
    sig:{room}:removed:<id>       hash  token (the removed peer's hash), reason: the server API removed it;
                                        its token is answered 403 removed for PEER_TTL
    sig:{room}:ban:<id>           string  the id is banned from the room until the key expires

Abuse limits per client IP use the IP as hash tag:

    sig:ip:{<ip>}:joins           string  joins in the current minute
    sig:ip:{<ip>}:peers           zset    "<room> <peer>" -> lease expiry

Peer keys expire 2 * PEER_TTL + 10 s after the last heartbeat, so a crash
leaves nothing behind for long. One global key, `sig:reap` (zset room ->
when to look for expired peers next), lets any instance find rooms to reap
without scanning; scripts never touch it, so no script crosses slots.

Each instance also has a wake-up channel, `sig:wake:{<instance>}` (wakeups.py).
"""

from __future__ import annotations

#: zset room -> when to look for its expired peers next (unix s): the one key outside any room's slot
REAP = "sig:reap"


def members(room: str) -> str:
    """The room's members: the one room key Python names, KEYS[1] of every room script."""
    return f"sig:{{{room}}}:members"


def ip_joins(client_ip: str) -> str:
    return f"sig:ip:{{{client_ip}}}:joins"


def ip_leases(client_ip: str) -> str:
    return f"sig:ip:{{{client_ip}}}:peers"
