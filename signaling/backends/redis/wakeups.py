"""Wake-ups: how a script tells the instance holding a poll that its mailbox changed.

A held poll records its `holder` ("<instance> <poll id>") on the peer hash.
Each instance listens on its own channel, `sig:wake:{<instance>}`
(listener.py), and hands what arrives to its hub (`dispatch`). A message is
one of:

    M <room> <peer>                    that peer's mailbox changed: its poll looks again
    M <room> <peer> <envelopes>        the same, carrying the new envelopes, one per line, oldest first
    S <room> <peer> <poll id>          that held poll is superseded by a newer poll of its peer

Scripts write them (lua/lib/wakeups.lua: `mailbox_changed`, `superseded`).
On one Redis the script PUBLISHes itself, and "M" carries the envelopes: a
holder's wake-ups arrive in the order of their seqs, so the woken poll
answers with what they carried, without a second round trip (a batch is one
wake-up). On Redis Cluster a script may not reach a channel of another slot,
so it returns its wake-ups and the backend SPUBLISHes them (`spublish`):
sharded pub/sub, each instance's channel on the shard its hash tag picks.
There two requests may publish out of order, so "M" carries nothing and the
poll looks. With REDIS_WAIT_REPLICAS a script publishes before its round
trip's WAIT confirms the envelopes, so what a published "M" carries is not
used: the poll looks, and its own round trip's WAIT confirms what it answers with.

A wake-up for the instance that runs the script is not published at all: the
script returns it, and the backend hands it to its own hub (most of them,
with few instances, and the hop through Redis and the listener is a quarter
of a stream delivery's cost). Two replies may be handled out of order, or
interleave with published wake-ups; `hub.Waiter.carried` finds the gap and
the poll looks, as after any wake-up that carries nothing. Such a reply
comes after its round trip's WAIT confirmed it, so its envelopes are used.
"""

from __future__ import annotations

from ...hub import Hub


def channel(instance: str) -> str:
    """The channel of one instance's wake-ups."""
    return f"sig:wake:{{{instance}}}"


def spublish(wakes: list[list[str]]) -> list[tuple]:
    """The commands that send a cluster script's wake-ups ({instance, message} pairs)."""
    return [("SPUBLISH", channel(instance), message) for instance, message in wakes]


def dispatch(hub: Hub, message: str, carried: bool = True) -> None:
    """Hand one wake-up to the hub; without `carried`, an "M" wake-up's envelopes are left for the poll to read."""
    kind, _, rest = message.partition(" ")
    if kind == "M":
        room, peer, *envelopes = rest.split(" ", 2)
        hub.wake(room, peer, envelopes[0].split("\n") if envelopes and carried else None)
    elif kind == "S":
        room, peer, poll_id = rest.split(" ")
        hub.supersede(room, peer, int(poll_id))
