"""Mailbox semantics as properties, on every backend: any run of joins, sends, polls, streams, leaves and
expiries answers like a plain Python model of PROTOCOL.md.

Hypothesis drives the app through Flask's test client: peers join (fresh, resuming, with wrong or stale
tokens; with join tickets on, carrying good, single-use, reused, missing or failing tickets), send,
broadcast (with and without Idempotency-Key), poll with `after` anywhere from the acknowledged cursor to the
last seq seen (and beyond it), list members, leave (DELETE or beacon), and time passes so that peers expire
and are reaped. Streams (1.2) open from any cursor, resume from the last id they delivered, are read, closed
by the client, superseded, and keep their peers live when the keep-alive ticks. Every answer is compared with
the model: nothing accepted (202) is lost, nothing acknowledged comes back, order per mailbox is kept, seqs
have no gaps, and no envelope comes twice to a client that resumes from the last id it saw.

Time is a fake clock: the views read `time.time()` of `signaling.api` and `signaling.messages`, which the
test replaces, and the reaper and the keep-alive of streams are driven by hand with `backend.reap(now)` and
`keep_alive.tick(now)`. Each example gets a fresh app and
an emptied store; the run is derandomized and bounded (about 5 s on memory, 10 s on Redis, 30 s on the Redis Cluster).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import types
import urllib.parse
from typing import Any
from unittest import mock

import hypothesis
import pytest
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

import signaling.api
import signaling.messages
from signaling import create_app, tickets
from signaling.config import Settings
from signaling.service import Service

from ..conftest import BACKEND_URLS, NO_LIMITS
from ..support.helpers import Api, Events, Reply

ROOMS = ("r1", "r2")
PEERS = ("a", "b", "c", "d")
TTL = 10.0
IDEMPOTENCY_TTL = 600.0
SETTINGS = {
    "peer_ttl": TTL, "poll_wait": 1.0, "mailbox_limit": 2, "room_capacity": 3,
    "reap_interval": 3600.0,  # the reaper thread never runs: the test reaps with its own clock
    "stream_heartbeat": 0.01, "stream_max": 3600.0,  # a read of a stream stops at its first heartbeat
}
RUN = hypothesis.settings(max_examples=200, stateful_step_count=40, suppress_health_check=[HealthCheck.too_slow])
# With tickets on, what changes is who gets in: fewer examples check that, the mailboxes having been checked above.
TICKETS_RUN = hypothesis.settings(RUN, max_examples=100)
EVENTS = ("peer-joined", "peer-left")
JOIN_SECRET = "the-properties-join-secret-32-bytes-long"
#: the tickets a join carries when tickets are on: mostly good ones, single-use ones, and each way to fail
TICKET_KINDS = ("good", "good", "for-me", "once", "once", "reused", "none", "another-room", "another-peer", "expired")


def envelope(sender: str, kind: str, data: Any, ts: float) -> str:
    """An envelope's content, comparable and hashable: canonical JSON of everything but its seq."""
    return json.dumps([sender, kind, data, ts], sort_keys=True)


class Clock:
    """The time the views see; only the test moves it."""

    def __init__(self, now: float):
        self.now = now

    def time(self) -> float:
        return self.now


# -- the model


@dataclasses.dataclass
class Entry:
    """One envelope in a model mailbox. `content` is None until seen when `group` leaves the order open."""

    seq: int
    content: str | None  # envelope(from, type, data, ts)
    group: int | None = None  # events of one reap: their order among themselves is not specified

    @property
    def is_event(self) -> bool:
        return self.group is not None or json.loads(self.content)[1] in EVENTS


@dataclasses.dataclass
class ModelPeer:
    token: str
    last_seen: float
    since: float  # when it joined: Idempotency-Key receipts belong to one life of each peer
    seq: int = 0  # the last seq given out
    acked: int = 0
    seen: int = 0  # the highest seq a poll or stream returned
    mailbox: list[Entry] = dataclasses.field(default_factory=list)  # seq > acked, oldest first
    history: dict[int, Entry] = dataclasses.field(default_factory=dict)  # every envelope it was given, by seq


@dataclasses.dataclass
class ModelStream:
    """A stream the client holds open: the life of the peer it is for, and the last id it delivered."""

    events: Events
    peer: ModelPeer
    position: int
    superseded: bool = False  # a newer stream of the peer started: it must end, delivering nothing more


class Model:
    """PROTOCOL.md's rooms and mailboxes in plain Python, on the same clock as the app."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.rooms: dict[str, dict[str, ModelPeer]] = {}  # expired peers stay until reaped, as in the backends
        self.receipts: dict[tuple, tuple[str, Any, float]] = {}  # key -> (digest, answer, expires)
        self.pools: dict[tuple, collections.Counter] = {}  # (room, peer, group) -> contents not yet seen
        self.groups = itertools.count(1)
        self.old_tokens: dict[tuple[str, str], list[str]] = collections.defaultdict(list)

    def live(self, peer: ModelPeer | None) -> bool:
        return peer is not None and peer.last_seen > self.clock.now - TTL

    def peer(self, room: str, peer_id: str) -> ModelPeer | None:
        return self.rooms.get(room, {}).get(peer_id)

    def push(self, room: str, peer_id: str, content: str, group: int | None = None) -> int:
        peer = self.rooms[room][peer_id]
        peer.seq += 1
        if group is None:
            peer.mailbox.append(Entry(peer.seq, content))
        else:
            peer.mailbox.append(Entry(peer.seq, None, group))
            self.pools.setdefault((room, peer_id, group), collections.Counter())[content] += 1
        peer.history[peer.seq] = peer.mailbox[-1]
        return peer.seq

    def remove(self, room: str, peer_id: str, reason: str, group: int | None = None) -> None:
        members = self.rooms[room]
        self.old_tokens[room, peer_id].append(members.pop(peer_id).token)
        for other in members:
            self.push(room, other, envelope(peer_id, "peer-left", {"reason": reason}, self.ts()), group)
        if not members:
            del self.rooms[room]

    def reap_room(self, room: str) -> list[str]:
        expired = [pid for pid, p in self.rooms.get(room, {}).items() if not self.live(p)]
        group = next(self.groups) if len(expired) > 1 else None
        for peer_id in expired:
            self.remove(room, peer_id, "timeout", group)
        return expired

    def ts(self) -> float:
        return round(self.clock.now, 3)

    def full(self, peer: ModelPeer, count: int = 1) -> bool:
        """No room for `count` more envelopes (server events do not count)."""
        return sum(not entry.is_event for entry in peer.mailbox) + count > SETTINGS["mailbox_limit"]

    def receipt(self, key: tuple, digest: str) -> tuple[str, Any] | None:
        """('same', answer) for a live receipt with this digest, ('reused', None) for another digest."""
        found = self.receipts.get(key)
        if found is None or found[2] <= self.clock.now:
            return None
        return ("same", found[1]) if found[0] == digest else ("reused", None)


# -- the machine


class Mailboxes(RuleBasedStateMachine):
    """Drives one fresh app per example; `make_app` and `flush` are set by the test."""

    make_app: Any = None
    flush: Any = None
    memory: bool = False  # the memory backend: wake-ups are immediate
    fake_time: types.SimpleNamespace
    mint: Any = None  # with join tickets on: mint(room, peer=None, ttl=..., once=False) -> a ticket

    def __init__(self):
        super().__init__()
        self.flush()
        self.clock = Clock(1_700_000_000.0)
        self.fake_time.time = self.clock.time
        self.app = self.make_app()
        self.service = Service.of(self.app)
        self.service.keep_alive.stop()  # its thread never ticks: the test ticks with its own clock
        self.api = Api.over_flask(self.app.test_client())
        self.streams: dict[tuple[str, str], ModelStream] = {}  # the open one of each peer, at most
        self.model = Model(self.clock)
        self.used_tickets: dict[str, list[str]] = collections.defaultdict(list)  # room -> single-use ones used
        self.once: set[str] = set()  # every single-use ticket minted

    def teardown(self):
        for stream in self.streams.values():
            stream.events.close()
        self.service.close()

    # -- helpers

    def token_of(self, room: str, peer_id: str) -> str:
        """The peer's current token, or one that is no token of any member."""
        peer = self.model.peer(room, peer_id)
        return peer.token if peer is not None else f"{peer_id}.not-a-token"

    def auth(self, room: str, peer_id: str) -> ModelPeer | None:
        """The model's side of authenticating a peer with its own token: the live peer, heartbeat done."""
        peer = self.model.peer(room, peer_id)
        if not self.model.live(peer):
            return None
        peer.last_seen = self.clock.now
        return peer

    def pick(self, data, room: str | None = None) -> tuple[str, str]:
        """(room, peer): mostly a live member (of `room` if given), sometimes anyone, member or not."""
        live = sorted((r, p) for r, peers in self.model.rooms.items() for p, peer in peers.items()
                      if self.model.live(peer) and room in (None, r))
        if live and data.draw(st.integers(0, 9), label="member?") < 9:
            return data.draw(st.sampled_from(live), label="member")
        return room or data.draw(st.sampled_from(ROOMS), label="room"), data.draw(st.sampled_from(PEERS), label="peer")

    def expect(self, reply: Reply, status: int, code: str | None = None) -> None:
        assert reply.status == status, (status, code, reply.status, reply.raw)
        if code is not None:
            assert reply.code == code, (code, reply.raw)

    # -- rules

    @initialize(data=st.data())
    def some_members(self, data):
        """Start with a few members, so that most runs get to mailboxes quickly."""
        for room, peer_id in data.draw(st.lists(st.tuples(st.sampled_from(ROOMS), st.sampled_from(PEERS)),
                                                min_size=2, max_size=4, unique=True), label="members"):
            self.join(room, peer_id, "none", data)

    @rule(room=st.sampled_from(ROOMS), peer_id=st.sampled_from(PEERS),
          token=st.sampled_from(["none", "own", "other", "stale"]), data=st.data())
    def join(self, room, peer_id, token, data):
        model = self.model
        presented = None
        if token == "own" and model.peer(room, peer_id):
            presented = model.peer(room, peer_id).token
        elif token == "other":
            others = [p.token for r in model.rooms.values() for pid, p in r.items() if pid != peer_id]
            presented = data.draw(st.sampled_from(others)) if others else None
        elif token == "stale" and model.old_tokens[room, peer_id]:
            presented = data.draw(st.sampled_from(model.old_tokens[room, peer_id]))
        ticket, refusal = self.ticket_for(room, peer_id, data)
        reply = self.api.join(room, peer_id, token=presented, ticket=ticket)

        existing = model.peer(room, peer_id)
        if refusal is not None and not (model.live(existing) and presented == existing.token):
            return self.expect(reply, 401, refusal)  # not a resume: refused before anything, reaping included
        model.reap_room(room)
        members = model.rooms.get(room, {})
        existing = members.get(peer_id)
        if existing is not None:
            if presented != existing.token:
                return self.expect(reply, 409, "peer_id_taken")
            self.expect(reply, 200)
            existing.last_seen = self.clock.now
            assert reply.body["token"] == existing.token
            assert reply.body["cursor"] == existing.acked
            assert sorted(reply.body["peers"]) == sorted(pid for pid in members if pid != peer_id)
            return None
        if len(members) >= SETTINGS["room_capacity"]:
            return self.expect(reply, 409, "room_full")
        self.expect(reply, 201)
        if ticket in self.once:
            self.used_tickets[room].append(ticket)
        assert reply.body["cursor"] == 0 and reply.body["token"] != presented
        assert sorted(reply.body["peers"]) == sorted(members)
        model.rooms.setdefault(room, {})[peer_id] = ModelPeer(reply.body["token"], self.clock.now, self.clock.now)
        for other in members:
            if other != peer_id:
                model.push(room, other, envelope(peer_id, "peer-joined", None, model.ts()))
        return None

    def ticket_for(self, room: str, peer_id: str, data) -> tuple[str | None, str | None]:
        """(the ticket a join carries, the error code it gets unless it resumes); (None, None) with tickets off."""
        if self.mint is None:
            return None, None
        kind = data.draw(st.sampled_from(TICKET_KINDS), label="ticket")
        if kind == "reused" and self.used_tickets[room]:
            return data.draw(st.sampled_from(self.used_tickets[room]), label="used ticket"), "bad_ticket"
        if kind in ("once", "reused"):
            ticket = self.mint(room, once=True)
            self.once.add(ticket)
            return ticket, None
        return {
            "good": (self.mint(room), None),
            "for-me": (self.mint(room, peer_id), None),
            "none": (None, "ticket_required"),
            "another-room": (self.mint(next(r for r in ROOMS if r != room)), "bad_ticket"),
            "another-peer": (self.mint(room, next(p for p in PEERS if p != peer_id)), "bad_ticket"),
            "expired": (self.mint(room, ttl=-120), "bad_ticket"),
        }[kind]

    @rule(kind=st.sampled_from(["offer", "note"]), payload=st.integers(0, 2),
          key=st.sampled_from([None, None, "k1", "k2"]), data=st.data())
    def send(self, kind, payload, key, data):
        room, sender = self.pick(data)
        _, to = self.pick(data, room)
        headers = {"Idempotency-Key": key} if key else None
        reply = self.api.request("POST", f"/rooms/{room}/peers/{to}/messages", {"type": kind, "data": payload},
                                 token=self.token_of(room, sender), headers=headers)
        model = self.model
        if self.auth(room, sender) is None:
            return self.expect(reply, 404, "not_joined")
        recipient = model.peer(room, to)
        if not model.live(recipient):
            return self.expect(reply, 404, "peer_not_found")
        receipt_key = (room, sender, model.peer(room, sender).since, to, recipient.since, key)
        found = model.receipt(receipt_key, json.dumps([kind, payload])) if key else None
        if found is not None and found[0] == "reused":
            return self.expect(reply, 422, "idempotency_key_reused")
        if found is not None:
            self.expect(reply, 202)
            assert reply.body == {"seq": found[1]}  # answered like the first; nothing stored
            return None
        if model.full(recipient):
            self.expect(reply, 429, "mailbox_full")
            assert reply.headers["retry-after"].isdigit()
            return None
        seq = model.push(room, to, envelope(sender, kind, payload, model.ts()))
        self.expect(reply, 202)
        assert reply.body == {"seq": seq}
        if key:
            model.receipts[receipt_key] = (json.dumps([kind, payload]), seq, self.clock.now + IDEMPOTENCY_TTL)
        return None

    @rule(payloads=st.lists(st.integers(0, 2), min_size=1, max_size=3),
          key=st.sampled_from([None, None, "k1", "k3"]), broadcast=st.booleans(), data=st.data())
    def send_batch(self, payloads, key, broadcast, data):
        """A 1.1 batch to one member or to all: stored whole with consecutive seqs, or not at all."""
        room, sender = self.pick(data)
        _, to = self.pick(data, room)
        headers = {"Idempotency-Key": key} if key else None
        path = f"/rooms/{room}/messages" if broadcast else f"/rooms/{room}/peers/{to}/messages"
        body = {"messages": [{"type": "note", "data": p} for p in payloads]}
        reply = self.api.request("POST", path, body, token=self.token_of(room, sender), headers=headers)
        model, digest = self.model, json.dumps(["messages", payloads])
        if len(payloads) > SETTINGS["mailbox_limit"]:  # refused as it is read, before the backend is asked
            return self.expect(reply, 413, "payload_too_large")
        if self.auth(room, sender) is None:
            return self.expect(reply, 404, "not_joined")
        recipients = [] if broadcast else [to]
        if broadcast:
            recipients = [p for p, peer in model.rooms[room].items() if p != sender and model.live(peer)]
        elif not model.live(model.peer(room, to)):
            return self.expect(reply, 404, "peer_not_found")
        since = model.peer(room, sender).since
        receipt_key = (room, sender, since, "*", key) if broadcast else (
            room, sender, since, to, model.peer(room, to).since, key)
        found = model.receipt(receipt_key, digest) if key else None
        if found is not None and found[0] == "reused":
            return self.expect(reply, 422, "idempotency_key_reused")
        if found is not None:  # answered like the first; nothing stored
            self.expect(reply, 202)
            answer = {name: sorted(ids) for name, ids in reply.body.items()} if broadcast else reply.body
            assert answer == found[1]
            return None
        full = [p for p in recipients if model.full(model.peer(room, p), len(payloads))]
        if not broadcast and full:
            self.expect(reply, 429, "mailbox_full")
            return None
        delivered, stored = [p for p in recipients if p not in full], {}
        for peer_id in delivered:
            stored[peer_id] = [model.push(room, peer_id, envelope(sender, "note", p, model.ts())) for p in payloads]
        self.expect(reply, 202)
        if broadcast:
            answer = {"delivered_to": sorted(delivered), "mailbox_full": sorted(full)}
            assert {name: sorted(ids) for name, ids in reply.body.items()} == answer
        else:
            answer = {"seqs": stored[to]}
            assert reply.body == answer
        if key and delivered:
            model.receipts[receipt_key] = (digest, answer, self.clock.now + IDEMPOTENCY_TTL)
        return None

    @rule(payload=st.integers(0, 2), key=st.sampled_from([None, "b1"]), data=st.data())
    def broadcast(self, payload, key, data):
        room, sender = self.pick(data)
        headers = {"Idempotency-Key": key} if key else None
        reply = self.api.request("POST", f"/rooms/{room}/messages", {"type": "note", "data": payload},
                                 token=self.token_of(room, sender), headers=headers)
        model = self.model
        if self.auth(room, sender) is None:
            return self.expect(reply, 404, "not_joined")
        receipt_key = (room, sender, model.peer(room, sender).since, "*", key)
        found = model.receipt(receipt_key, json.dumps(["note", payload])) if key else None
        if found is not None and found[0] == "reused":
            return self.expect(reply, 422, "idempotency_key_reused")
        self.expect(reply, 202)
        answer = {name: sorted(ids) for name, ids in reply.body.items()}
        if found is not None:
            assert answer == found[1]
            return None
        delivered, full = [], []
        for peer_id, peer in model.rooms[room].items():
            if peer_id == sender or not model.live(peer):
                continue
            if model.full(peer):
                full.append(peer_id)
            else:
                model.push(room, peer_id, envelope(sender, "note", payload, model.ts()))
                delivered.append(peer_id)
        expected = {"delivered_to": sorted(delivered), "mailbox_full": sorted(full)}
        assert answer == expected
        if key and delivered:
            model.receipts[receipt_key] = (json.dumps(["note", payload]), expected, self.clock.now + IDEMPOTENCY_TTL)
        return None

    @rule(limit=st.sampled_from([1, 2, 100]), wrong_token=st.sampled_from([False] * 9 + [True]), data=st.data())
    def poll(self, limit, wrong_token, data):
        model = self.model
        room, peer_id = self.pick(data)
        peer = model.peer(room, peer_id)
        if peer is None:
            after = data.draw(st.integers(0, 3), label="after")
        else:
            # mostly between the acknowledged cursor and the last seq seen; sometimes anywhere, beyond included
            after = data.draw(st.one_of(st.integers(peer.acked, max(peer.acked, peer.seen)),
                                        st.integers(0, peer.seq + 2)), label="after")
        other = next(p for p in PEERS if p != peer_id)
        token = self.token_of(room, other if wrong_token else peer_id)  # another's is never this peer's own
        query = urllib.parse.urlencode({"after": after, "limit": limit, "wait": 0})
        reply = self.api.request("GET", f"/rooms/{room}/peers/{peer_id}/messages?{query}", token=token)
        if not model.live(peer):
            return self.expect(reply, 404, "not_joined")
        if wrong_token:
            return self.expect(reply, 401, "unauthorized")
        peer.last_seen = self.clock.now
        if after > peer.seq:
            return self.expect(reply, 400, "bad_cursor")
        self.expect(reply, 200)
        peer.acked = max(peer.acked, after)
        peer.mailbox = [entry for entry in peer.mailbox if entry.seq > peer.acked]
        expected = peer.mailbox[:limit]
        messages = reply.body["messages"]
        # order kept, no gaps, nothing acknowledged back, nothing accepted lost
        assert [m["seq"] for m in messages] == [entry.seq for entry in expected], (after, peer.acked, messages)
        for entry, message in zip(expected, messages, strict=True):
            content = envelope(message["from"], message["type"], message["data"], message["ts"])
            if entry.content is None:  # one of a reap's events: any of those not seen yet
                pool = model.pools[room, peer_id, entry.group]
                assert pool[content] > 0, (content, pool)
                pool[content] -= 1
                entry.content = content
            assert content == entry.content, (message, entry)
        assert reply.body["cursor"] == (messages[-1]["seq"] if messages else after)
        peer.seen = max(peer.seen, reply.body["cursor"])
        return None

    def check_delivered(self, room: str, peer_id: str, peer: ModelPeer, position: int, messages: list[dict]) -> int:
        """Envelopes a poll or stream delivered past `position`: in order, none skipped, none acknowledged
        before `position`, each what was sent. Returns the new position."""
        for message in messages:
            seq = message["seq"]
            assert seq > position, (seq, position)  # never twice, never back
            skipped = [entry.seq for entry in peer.mailbox if position < entry.seq < seq]
            assert not skipped, (skipped, seq)  # nothing accepted lost
            entry = peer.history.get(seq)
            assert entry is not None and (seq > peer.acked or entry not in peer.mailbox), (seq, message)
            content = envelope(message["from"], message["type"], message["data"], message["ts"])
            if entry.content is None:  # one of a reap's events: any of those not seen yet
                pool = self.model.pools[room, peer_id, entry.group]
                assert pool[content] > 0, (content, pool)
                pool[content] -= 1
                entry.content = content
            assert content == entry.content, (message, entry)
            position = seq
        peer.seen = max(peer.seen, position)
        return position

    def read_stream(self, room: str, peer_id: str) -> None:
        """Read an open stream up to its next heartbeat or its end, and check what it delivered."""
        stream = self.streams[room, peer_id]
        messages = stream.events.until_quiet()
        if stream.superseded:
            assert stream.events.ended and messages == [], messages
        stream.position = self.check_delivered(room, peer_id, stream.peer, stream.position, messages)
        current = self.model.peer(room, peer_id)
        if not stream.events.ended and self.memory:  # wake-ups are immediate: it delivered all there is
            assert current is not stream.peer or not any(e.seq > stream.position for e in stream.peer.mailbox)
            assert current is stream.peer, "a stream outlived its peer"
        if stream.events.ended:
            stream.events.close()
            del self.streams[room, peer_id]

    @rule(wrong_token=st.sampled_from([False] * 9 + [True]), data=st.data())
    def open_stream(self, wrong_token, data):
        """A stream from any cursor; mostly a resume from the last id the peer's previous stream delivered."""
        model = self.model
        room, peer_id = self.pick(data)
        peer = model.peer(room, peer_id)
        previous = self.streams.get((room, peer_id))
        if peer is None:
            after = data.draw(st.integers(0, 3), label="after")
        elif previous is not None and previous.peer is peer and data.draw(st.booleans(), label="resume?"):
            after = previous.position
        else:
            after = data.draw(st.one_of(st.integers(peer.acked, max(peer.acked, peer.seen)),
                                        st.integers(0, peer.seq + 2)), label="after")
        other = next(p for p in PEERS if p != peer_id)
        token = self.token_of(room, other if wrong_token else peer_id)
        events = self.api.stream(f"/rooms/{room}/peers/{peer_id}/messages", token=token,
                                 headers={"Last-Event-ID": str(after)})
        if not model.live(peer):
            return self.expect(events, 404, "not_joined")
        if wrong_token:
            return self.expect(events, 401, "unauthorized")
        peer.last_seen = self.clock.now
        if after > peer.seq:
            return self.expect(events, 400, "bad_cursor")
        self.expect(events, 200)
        assert events.streaming
        peer.acked = max(peer.acked, after)
        peer.mailbox = [entry for entry in peer.mailbox if entry.seq > peer.acked]
        if previous is not None:  # the newer stream ends the older one, which delivers nothing more
            previous.superseded = True
            self.read_stream(room, peer_id)
        self.streams[room, peer_id] = ModelStream(events, peer, after)
        self.read_stream(room, peer_id)
        return None

    @rule(close=st.booleans(), data=st.data())
    def stream_goes_on(self, close, data):
        """An open stream is read on, or its client goes away (which acknowledges nothing)."""
        if not self.streams:
            return
        room, peer_id = data.draw(st.sampled_from(sorted(self.streams)), label="stream")
        if close:
            self.streams.pop((room, peer_id)).events.close()
        else:
            self.read_stream(room, peer_id)

    @rule()
    def keep_alive_ticks(self):
        """Each open stream's peer (the life that opened it, while live) counts as heard from now."""
        self.service.keep_alive.tick(self.clock.now)
        for (room, peer_id), stream in self.streams.items():
            if self.model.peer(room, peer_id) is stream.peer and self.model.live(stream.peer):
                stream.peer.last_seen = self.clock.now

    @rule(data=st.data())
    def members(self, data):
        room, peer_id = self.pick(data)
        reply = self.api.request("GET", f"/rooms/{room}/peers", token=self.token_of(room, peer_id))
        if self.auth(room, peer_id) is None:
            return self.expect(reply, 404, "not_joined")
        self.expect(reply, 200)
        live = sorted(pid for pid, p in self.model.rooms[room].items() if self.model.live(p))
        # 1.2: `members` beside `peers`, each with its meta (the model's peers join without one)
        assert reply.body == {"room": room, "peers": live, "members": [{"peer_id": pid, "meta": None} for pid in live]}
        return None

    @rule(how=st.sampled_from(["delete", "beacon-json", "beacon-text", "beacon-form", "wrong-token"]), data=st.data())
    def leave(self, how, data):
        room, peer_id = self.pick(data)
        path, token = f"/rooms/{room}/peers/{peer_id}", self.token_of(room, peer_id)
        if how == "delete":
            reply = self.api.request("DELETE", path, token=token)
        elif how == "beacon-json":
            reply = self.api.request("POST", f"{path}/leave", {"token": token})
        elif how == "beacon-text":
            reply = self.api.request("POST", f"{path}/leave", data=json.dumps({"token": token}),
                                     headers={"Content-Type": "text/plain;charset=UTF-8"})
        elif how == "beacon-form":
            reply = self.api.request("POST", f"{path}/leave", data=urllib.parse.urlencode({"token": token}),
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        else:
            reply = self.api.request("DELETE", path, token=f"{peer_id}.wrong")
        model = self.model
        if not model.live(model.peer(room, peer_id)):
            return self.expect(reply, 204)  # not a member: nothing happens
        if how == "wrong-token":
            return self.expect(reply, 401, "unauthorized")
        self.expect(reply, 204)
        model.remove(room, peer_id, "left")
        return None

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, TTL / 2, TTL + 1]), reap=st.booleans())
    def time_passes(self, seconds, reap):
        """The clock moves; peers silent for PEER_TTL are gone at once, and the reaper may run."""
        self.clock.now += seconds
        if reap:
            self.reap()

    @rule(reap=st.booleans(), data=st.data())
    def one_goes_silent(self, reap, data):
        """Every live member but one is heard from, then time passes until that one times out."""
        self.clock.now += 0.5  # so the others' heartbeats come strictly after the silent one's last word
        live = sorted((r, p) for r, peers in self.model.rooms.items() for p, peer in peers.items()
                      if self.model.live(peer))
        if not live:
            return
        room, silent = data.draw(st.sampled_from(live), label="silent")
        for other_room, other in live:
            if (other_room, other) != (room, silent):
                reply = self.api.request("GET", f"/rooms/{other_room}/peers", token=self.token_of(other_room, other))
                self.expect(reply, 200)
                self.model.peer(other_room, other).last_seen = self.clock.now
        self.clock.now = self.model.peer(room, silent).last_seen + TTL
        if reap:
            self.reap()

    def reap(self):
        removed = Service.of(self.app).backend.reap(self.clock.now)
        expected = [(room, pid) for room in list(self.model.rooms) for pid in self.model.reap_room(room)]
        assert sorted(removed) == sorted(expected)


SERVERS = {"redis": "redis_server", "cluster": "redis_cluster"}  # the fixtures that can empty each store


@pytest.fixture
def flush(request, backend_name):
    """Empties the store before each example: Redis is flushed; a memory app starts empty anyway."""
    if backend_name == "memory":
        return lambda: None
    request.getfixturevalue(BACKEND_URLS[backend_name])
    return request.getfixturevalue(SERVERS[backend_name]).flush


@pytest.fixture(params=["open", "tickets"])
def admission(request) -> str:
    """Anyone may join ("open"), or every fresh join needs a ticket (JOIN_SECRET set)."""
    return request.param


@pytest.fixture
def app_factory(request, backend_name, admission):
    """Fresh apps on the test's backend, abuse limits off (the model's bursts would trip them)."""
    overrides = {**SETTINGS, **NO_LIMITS}
    if admission == "tickets":
        overrides["join_secret"] = (JOIN_SECRET,)
    if BACKEND_URLS[backend_name]:
        overrides["redis_url"] = request.getfixturevalue(BACKEND_URLS[backend_name])
    return lambda: create_app(dataclasses.replace(Settings(), **overrides))


@pytest.fixture
def mint(admission):
    """Mints the join tickets the machine's joins carry (None: tickets are off). They expire in real time,
    like PyJWT's checks, not on the fake clock."""
    if admission == "open":
        return None
    return lambda room, peer=None, ttl=3600, once=False: tickets.mint(JOIN_SECRET, room, peer, ttl, once)


def test_mailboxes_match_the_model(app_factory, flush, mint, backend_name):
    fake_time = types.SimpleNamespace(time=None, monotonic=signaling.api.time.monotonic, sleep=signaling.api.time.sleep)
    machine = type("Mailboxes", (Mailboxes,), {"make_app": staticmethod(app_factory), "flush": staticmethod(flush),
                                               "fake_time": fake_time, "mint": staticmethod(mint) if mint else None,
                                               "memory": backend_name == "memory"})
    with mock.patch.object(signaling.api, "time", fake_time), mock.patch.object(signaling.messages, "time", fake_time):
        hypothesis.stateful.run_state_machine_as_test(machine, settings=RUN if mint is None else TICKETS_RUN)
