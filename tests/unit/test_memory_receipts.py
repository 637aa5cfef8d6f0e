"""The memory backend's idempotency receipts: small, expired without a scan, and still answering repeats.

Work is counted, not timed: the lines of memory.py that `reap()` runs, which must not grow with the
receipts that are still live (they all sat in one dict scanned every second, under the lock).
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import tracemalloc

import pytest

from signaling import errors
from signaling.backends import memory
from signaling.backends.base import Broadcast
from signaling.backends.memory import MemoryBackend
from signaling.config import Settings
from signaling.hub import Hub
from signaling.protocol import IDEMPOTENCY_KEYS_PER_PEER, IDEMPOTENCY_TTL, Fetch, Join, Outgoing
from signaling.tokens import new_token

T0 = 1_700_000_000.0
#: retained bytes per receipt of a send, measured with tracemalloc (550 with the dataclass of the request's strings)
RECEIPT_BYTES = 250


class Room:
    """alice, bob and `others` more in room r1 of a memory backend whose peers outlive the test's clock jumps."""

    def __init__(self, others: int = 0, peer_ttl: float = 10 * IDEMPOTENCY_TTL):
        settings = dataclasses.replace(Settings(), peer_ttl=peer_ttl, mailbox_limit=10**9,
                                       mailbox_bytes=2**30,
                                       sends_per_peer_per_second=0, joins_per_ip_per_minute=0)
        self.backend = MemoryBackend(settings, Hub())
        self.tokens = {peer: new_token(peer) for peer in ("alice", "bob", *(f"s{i}" for i in range(others)))}
        for peer, token in self.tokens.items():
            self.backend.join(Join("r1", peer, token, None, T0))

    def send(self, key: str, now: float, body: bytes = b'{"type":"x"}', to: str | None = "bob", sender="alice"):
        """`sender` sends (to None: broadcasts) with this Idempotency-Key; the strings are fresh, as a request's are."""
        out = Outgoing.read(body, "r" + "1", sender[:1] + sender[1:], self.tokens[sender], to and "b" + to[1:], key,
                            now)
        return self.backend.send(out) if to else self.backend.broadcast(out)


def lines_run(call) -> int:
    """How many lines of memory.py `call()` runs."""
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != memory.__file__:
            return None
        if event == "line":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        call()
    finally:
        sys.settrace(None)
    return count


def reap_work(live: int) -> int:
    """Lines run by the reap that expires alice's 50 receipts while `live` others are still good.

    The live ones are one of alice's and 20 other senders' (each keeps at most IDEMPOTENCY_KEYS_PER_PEER).
    """
    senders = 20
    room = Room(others=senders)
    for i in range(50):
        room.send(f"old-{i}", T0)
    room.send("new", T0 + 300)
    for i in range(live):
        room.send(f"new-{i}", T0 + 300, sender=f"s{i % senders}")
    return lines_run(lambda: room.backend.reap(T0 + IDEMPOTENCY_TTL + 1))


def test_reaping_receipts_touches_only_those_that_expired():
    assert reap_work(live=20_000) == reap_work(live=20)


def test_an_expired_receipt_is_gone_and_a_live_one_answers_its_repeat():
    room = Room()
    first = room.send("old", T0)
    kept = room.send("new", T0 + 300, body=b'{"messages":[{"type":"a"},{"type":"b"}]}')
    room.backend.reap(T0 + IDEMPOTENCY_TTL + 1)
    assert room.send("old", T0 + IDEMPOTENCY_TTL + 2) != first  # stored anew: the receipt is gone
    later = T0 + IDEMPOTENCY_TTL + 2
    assert room.send("new", later, body=b'{"messages":[{"type":"a"},{"type":"b"}]}') == kept
    with pytest.raises(errors.IdempotencyKeyReused):
        room.send("new", later, body=b'{"type":"other"}')
    room.backend.reap(T0 + 300 + IDEMPOTENCY_TTL + 1)
    assert room.send("new", T0 + 300 + IDEMPOTENCY_TTL + 2, body=b'{"messages":[{"type":"a"},{"type":"b"}]}') != kept


def test_a_broadcast_receipt_answers_its_repeat_with_the_same_lists():
    room = Room()
    first = room.send("b1", T0, to=None)
    assert first == Broadcast(["bob"], [])
    assert room.send("b1", T0 + 1, to=None) == first
    messages, _ = room.backend.acknowledge_and_read(Fetch("r1", "bob", room.tokens["bob"], 0, 100), T0 + 2)
    assert len(messages) == 1  # b1, once


def test_a_receipt_kept_again_after_it_expired_is_not_dropped_with_the_old_one():
    room = Room()
    room.send("k", T0)
    again = room.send("k", T0 + IDEMPOTENCY_TTL + 0.5)  # the first has expired but was not reaped yet
    room.backend.reap(T0 + IDEMPOTENCY_TTL + 1.5)  # the first's file goes
    assert room.send("k", T0 + IDEMPOTENCY_TTL + 2) == again


def test_a_sender_holds_its_newest_receipts_only_and_none_once_they_expired():
    room = Room()
    for i in range(IDEMPOTENCY_KEYS_PER_PEER + 50):
        room.send(f"k{i}", T0 + i / 100)
    assert len(room.backend._receipts) == IDEMPOTENCY_KEYS_PER_PEER
    room.backend.reap(T0 + 11 + IDEMPOTENCY_TTL)
    assert len(room.backend._receipts) == 0
    assert not room.backend._receipts._by_sender  # nothing left of the sender either


def test_a_peer_that_is_gone_takes_its_receipts_with_it():
    room = Room(others=1, peer_ttl=60)
    for i in range(10):
        room.send(f"a{i}", T0)
        room.send(f"s{i}", T0, to=None, sender="s0")
    room.backend.leave("r1", "alice", room.tokens["alice"], T0 + 1)
    assert len(room.backend._receipts) == 10  # s0's
    room.backend.members("r1", "bob", room.tokens["bob"], T0 + 50)
    room.backend.reap(T0 + 61)  # s0 timed out; bob did not
    assert len(room.backend._receipts) == 0
    assert not room.backend._receipts._by_sender
    room.backend.reap(T0 + IDEMPOTENCY_TTL + 1)  # their files come due: nothing to drop, nothing breaks


def retained_per_send(keyed: bool, count: int = IDEMPOTENCY_KEYS_PER_PEER) -> float:
    room = Room()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            room.send(f"key-{i:08d}-{'k' * 20}" if keyed else None, T0)
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()


def test_a_receipt_costs_little_memory():
    """A send's receipt, beyond what the same send without a key keeps (its envelope in the mailbox)."""
    assert retained_per_send(keyed=True) - retained_per_send(keyed=False) < RECEIPT_BYTES
