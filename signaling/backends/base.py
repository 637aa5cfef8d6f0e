"""The backend contract: where rooms, peers and mailboxes live.

Every method is one atomic step: no other request sees it half done, on any
instance. Every method that takes a `token` authenticates first: a peer that
is not a live member raises `NotJoined` whatever the token; a live member with
a missing or wrong token raises `Unauthorized`. A call that fails its token
check changes nothing in the store (no heartbeat, no lease, no reap schedule).
Every authenticated call, whatever it asks, counts as the peer's heartbeat,
and keeps its place leased to the client IP it joined from (`admit`). A peer
not heard from for `peer_ttl` seconds is no longer live: calls treat it as
absent at once, and `reap` removes it.

Envelopes are stored as the JSON text `protocol.with_seq(seq, tail)` and
handed back as stored. Seqs of one mailbox are 1, 2, 3, ... with no gaps;
the mailbox keeps every envelope above the acknowledged seq, oldest first.

A mailbox holds at most `mailbox_limit` unacknowledged envelopes and at most
`mailbox_bytes` of them (each counted as stored: `protocol.stored_size`).
Server events (`peer-joined`, `peer-left`) count against neither and are
never refused: they go to every live member. What bounds them is
`UNREAD_EVENTS`: a member whose mailbox holds that many unacknowledged events
is not reading it, and stops being live at once, as if silent for `peer_ttl`
(calls treat it as absent, `reap` removes it with a `peer-left` timeout, and
it joins again). So one mailbox holds at most `mailbox_bytes` of envelopes
and `UNREAD_EVENTS` events.

With webhooks on (`settings.webhook_url`), every change of a room's
membership also records an event in the room's outbox, in the same atomic
step as the change (`record_event`'s types: room.started, peer.joined,
peer.left, room.ended), before the call returns. A room's outbox is delivered
oldest first, one event at a time: `claim_events` leases a due room's first
event to one attempt (a lease that expires, so a crashed instance's rooms are
taken over), `settle_event` ends it (docs/webhooks.md).

A store that cannot be reached, or is full (Redis at `maxmemory`), raises
`BackendUnavailable`; a step that stores envelopes or members then stored
nothing.

Abuse limits live here too, so they hold across instances: joins per client
IP per minute and places leased per IP (`admit`), sends per peer per second
(`send`, `broadcast`). A setting of 0 turns a limit off.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from abc import ABC, abstractmethod

from .. import errors
from ..config import Settings
from ..hub import Hub
from ..logs import Episode
from ..protocol import Fetch, Join, Outgoing

#: unacknowledged server events after which a member is taken for gone (see above): far more than a member
#: that polls ever holds (a room's every member joining and leaving ten times over between two of its polls)
UNREAD_EVENTS = 1000
#: the most rooms whose members a census counts; past it, peers are estimated from that many rooms picked at random
CENSUS_ROOMS = 1000


@dataclasses.dataclass(frozen=True)
class Member:
    """A live member as member lists show it (1.2)."""

    peer_id: str
    meta: str | None  # its meta as compact JSON text (`protocol.meta_text`); None: it has none
    joined_at: float  # unix s


@dataclasses.dataclass(frozen=True)
class Joined:
    created: bool  # False when the join resumed a live peer with its own token
    others: list[Member]  # the other members
    cursor: int  # the last acknowledged seq
    meta: str | None  # the joined peer's own meta: a resume's is what its first join gave


@dataclasses.dataclass(frozen=True)
class Broadcast:
    delivered_to: list[str]
    mailbox_full: list[str]


@dataclasses.dataclass(frozen=True, slots=True)
class Listener:
    """A peer with an open stream, which `keep_alive` keeps live."""

    room: str
    peer: str
    token_hash: str  # `tokens.hash_token` of the token the stream opened with


@dataclasses.dataclass(frozen=True)
class Event:
    """A webhook event, the first of its room's outbox, leased to one delivery attempt."""

    room: str
    id: str  # webhook-id: the same on every attempt
    type: str  # room.started, peer.joined, peer.left, room.ended
    ts: float  # when it happened (unix s)
    data: str  # JSON text
    attempts: int  # failed attempts before this one
    lease: str  # names this claim: settling it needs the lease still held

    @classmethod
    def parse(cls, room: str, record: str, attempts: int, lease: str) -> Event:
        """An event from its record as stored: "<id> <type> <ts> <data JSON>" (ids and types hold no space)."""
        event_id, kind, ts, data = record.split(" ", 3)
        return cls(room, event_id, kind, float(ts), data, attempts, lease)


def event_ids() -> str:
    """A fresh base for the ids of the events one atomic step records: "msg_<random>", each event adding ".<n>"."""
    return "msg_" + secrets.token_hex(10)


def event_data(room: str, peer: str | None = None, **more: str) -> str:
    """An event's data as JSON text, as the Lua side writes it (room.lua): ids and reasons need no escaping."""
    fields = [f'"room":"{room}"'] + ([f'"peer_id":"{peer}"'] if peer is not None else [])
    fields += [f'"{name}":{value}' for name, value in more.items()]  # values are JSON text already
    return "{" + ",".join(fields) + "}"


class Backend(ABC):
    """Rooms, members and mailboxes; see the module docstring for the rules."""

    name: str  # shown by /healthz

    def __init__(self, settings: Settings, hub: Hub):
        self.settings = settings
        self.hub = hub  # told when a mailbox changes or a held poll is superseded
        # the store out of reach, as this process's background loops see it: one line when it starts, one when it ends
        self.outage = Episode(logging.getLogger("signaling.backends"), "backend unavailable")

    def join(self, join: Join) -> Joined:
        """Admit the join (`admit`, the per-IP limits), then `add_or_resume` it; a refused join gives its lease back.

        The one way in for a view: admission is the same on every backend, so
        it is done here, once. Without `join.client_ip` nothing is admitted.
        """
        leased = join.client_ip is not None and self.admit(join.client_ip, join.room, join.peer, join.now)
        try:
            return self.add_or_resume(join)
        except errors.SignalingError:
            if leased:
                self.release(join.client_ip, join.room, join.peer)
            raise

    @abstractmethod
    def add_or_resume(self, join: Join) -> Joined:
        """Add `join.peer` with `join.new_token`, or resume it when `join.token` is its own.

        Removes the room's expired peers first (with `peer-left` timeout
        events), so a dead peer never holds a place or an id. A fresh join
        puts `peer-joined` in every other member's mailbox. Raises
        `PeerIdTaken` for a live id whose token is not presented, `RoomFull`
        at `room_capacity`.

        Join tickets (the view has checked the ticket's signature and claims):
        `join.refusal` is the error of a join whose ticket was missing or bad;
        only a resume may then succeed, and anything else raises it before any
        other check. `join.jti` is the single-use id of the ticket that passed,
        kept with the room's state until `join.jti_until`: a fresh join whose
        jti is kept raises `BadTicket` (already used); one that succeeds keeps
        it, in the same atomic step, so of two joins with one ticket exactly
        one succeeds. A resume neither needs nor uses the jti. A join that
        fails changes nothing: no member, no event, no jti kept.

        `join.client_ip` is the address `admit` leased the place to: the
        peer's heartbeats keep that lease (a resume from another address moves
        it there).

        Server API (1.2): a join that is not a resume raises `Banned` while the
        id is banned from the room (before any ticket check), and `Removed`
        when it presents the token of a peer removed within `peer_ttl`. A
        fresh peer keeps `join.meta` for its life; its `peer-joined` carries
        `{"meta": ...}` (null without).
        """

    @abstractmethod
    def admit(self, client_ip: str, room: str, peer: str, now: float) -> bool:
        """Count a join attempt from `client_ip` and lease it a place for `peer`.

        Every attempt counts, before anything is known about the join (a
        refused one too). Raises `JoinRateLimited` past `joins_per_ip_per_minute`,
        and, for a place the IP does not hold yet, `TooManyPeers` or
        `TooManyRooms` past `peers_per_ip` or `rooms_per_ip`. A lease lasts
        `peer_ttl` (the join's time to happen); the joined peer's heartbeats,
        from any address, keep it as long as the peer lives: it ends when the
        peer times out (memory), or at most `peer_ttl / 2` + 2 s after (Redis,
        which renews it every `peer_ttl / 2`). `leave` gives it back. Returns
        True when the lease is new, so a join that then fails can `release` it.
        """

    @abstractmethod
    def release(self, client_ip: str, room: str, peer: str) -> None:
        """Give back the lease of `peer` held by `client_ip`, if any."""

    @abstractmethod
    def acknowledge_and_read(
        self, fetch: Fetch, now: float, hold: int | None = None, read_after: int | None = None,
    ) -> tuple[list[str], int]:
        """A poll's or stream's look: acknowledge seqs <= `fetch.after`, record the holder, read; (envelopes, cursor).

        Acknowledged envelopes are dropped for good. The envelopes read are up
        to `fetch.limit` of those with seq > `read_after` (default `fetch.after`;
        a stream reads on past what it delivered while acknowledging only its
        starting cursor), oldest first; the cursor is the last one's seq, or
        `read_after` when there are none. Raises `BadCursor` when `after` is
        beyond the last seq given out. With `hold` (a poll or stream id), it is
        recorded as the one waiting on this mailbox, so a send wakes it and a
        newer one held on another instance supersedes it. Like every
        authenticated call, it is the peer's heartbeat and renews its lease.
        """

    @abstractmethod
    def keep_alive(self, listeners: list[Listener], now: float) -> None:
        """Count each listener's peer as heard from at `now`: one call for all of a process's open streams.

        Only a peer still live with that token (the same life of that id) is
        renewed, with its IP's lease, as any heartbeat; the others are left
        alone. No token is presented, no error raised for a gone peer: each
        stream authenticated when it opened, and ends when its peer goes.
        """

    @abstractmethod
    def send(self, out: Outgoing) -> list[int]:
        """Store every envelope of `out` for `out.to`, with consecutive seqs, or none; return the seqs.

        Wakes the recipient's poll once, whatever the number of envelopes.
        Raises `PeerNotFound`, `MailboxFull` (when the mailbox has no room for
        all of them, by count or by bytes; nothing stored), `SendRateLimited` (the sender's envelopes
        are counted, not its requests; a batch that finds the second untouched
        is let through whole) and `IdempotencyKeyReused`. A repeated key with
        the same digest returns the first seqs and stores nothing.

        `out.sender` `protocol.SERVER_SENDER`: the application sends (the
        server API, whose key the view checked): no token, no heartbeat, no
        send rate; every other rule holds.
        """

    @abstractmethod
    def broadcast(self, out: Outgoing) -> Broadcast:
        """Store every envelope of `out` for each other live member whose mailbox has room for all of them.

        As `send`, from the application too.
        """

    @abstractmethod
    def members(self, room: str, peer: str | None, token: str | None, now: float) -> list[Member]:
        """Every live member, the caller's included, in join order.

        `peer` None: the application asks (the server API, whose key the view
        checked): no caller, no heartbeat, and an empty room is no error.
        """

    @abstractmethod
    def remove(self, room: str, peer: str, reason: str, ban: float, now: float) -> bool:
        """The application removes `peer` (server API): whether it was a live member.

        As a leave (its mailbox gone, its place given back, its held poll or
        stream woken to find it gone), but the others' `peer-left` says
        `removed`, and for `peer_ttl` every call with its token raises
        `Removed` with `reason`. `ban` > 0: for that many seconds a join with
        this id in this room raises `Banned`, member or not. One atomic step:
        a join or resume of this id comes wholly before it (and is removed) or
        wholly after (and is refused).
        """

    @abstractmethod
    def close_room(self, room: str, now: float) -> list[str]:
        """Remove every member as `remove` does, with reason `room_closed`; return their ids."""

    @abstractmethod
    def leave(self, room: str, peer: str, token: str | None, now: float) -> None:
        """Remove `peer` and its mailbox, and give back its place; others get `peer-left` (left).

        A peer that is not a member is not an error: nothing happens.
        """

    @abstractmethod
    def reap(self, now: float) -> list[tuple[str, str]]:
        """Remove peers silent for `peer_ttl`; return (room, peer) of each removed.

        Safe to run on every instance at once: each expired peer is removed,
        and its `peer-left` (timeout) sent, exactly once.
        """

    @abstractmethod
    def claim_events(self, now: float, lease_until: float, limit: int) -> list[Event]:
        """Lease the first event of up to `limit` rooms whose outbox is due at `now`, until `lease_until`.

        A room is due when its first event was recorded, or its retry time
        came, and no live lease holds it: a room leased to an attempt that
        never settled (its instance died) is due again once `lease_until`
        passes, so some instance takes it over. Only one event of a room is
        ever out: the next waits until this one is settled.
        """

    @abstractmethod
    def settle_event(self, event: Event, now: float, retry_at: float | None, lease_until: float) -> Event | None:
        """End `event`'s attempt: delivered or given up (`retry_at` None), or to be tried again at `retry_at`.

        Done: the event leaves the outbox and the room's next event, if any,
        is returned leased until `lease_until`, so one attempt follows the
        other without a look (a `lease_until` of `now` hands the room back:
        its next event is due at once, for any instance to claim). Does
        nothing (returns None) when the lease was lost: another instance took
        the room over, and will deliver it.
        """

    @abstractmethod
    def event_backlog(self, now: float) -> tuple[int, float | None]:
        """Events recorded and not yet delivered or given up, and when the oldest of them happened (None: none)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise `BackendUnavailable` unless the store answers."""

    @abstractmethod
    def census(self) -> tuple[int, int]:
        """(rooms, peers) in the store, for /metrics: at a bounded cost (past CENSUS_ROOMS rooms, peers estimated)."""

    def start(self) -> None:
        """Begin background work (wake-up listener); called once per process."""
        return None

    def close(self) -> None:
        """Release connections and stop background work."""
        return None
