"""Held polls and open streams of this process: they wait here, and wake-ups arrive here.

A held poll costs one `Waiter` (an Event) and no backend connection. Under
gevent's monkey patching the Event is cooperative, so thousands of polls wait
on one OS thread. A stream (`signaling/stream.py`) is the same held look at a
mailbox that does not end at its first delivery: both read through a `Reader`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

from . import metrics
from .protocol import Fetch, seq_of

#: a look in the backend (`Backend.acknowledge_and_read` of the request's `Fetch`): (hold: this poll's or stream's
#: id for the first look, else None; read after this seq) -> (envelopes, cursor: the seq of the last one, or the seq
#: read after)
Look = Callable[[int | None, int], tuple[list[str], int]]


class Waiter:
    """One held poll: woken when its mailbox changes, ended when superseded.

    A wake-up may carry the envelopes that caused it (the Redis backend's do,
    on one Redis); then the poll can answer without looking in the backend.
    """

    __slots__ = ("room", "peer", "poll_id", "ended", "_event", "_carried")

    def __init__(self, room: str, peer: str, poll_id: int):
        self.room, self.peer, self.poll_id = room, peer, poll_id
        self.ended = False
        self._event = threading.Event()
        self._carried: list[str] | None = []  # None: a wake-up came without its envelope

    def wait(self, timeout: float) -> bool:
        """Block until woken or ended (True) or `timeout` passes (False); re-arms."""
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken

    def wake(self, envelopes: list[str] | None = None) -> None:
        if envelopes is None:
            self._carried = None
        elif self._carried is not None:
            self._carried += envelopes
        self._event.set()

    def carried(self, after: int, limit: int) -> tuple[list[str], int] | None:
        """(envelopes, cursor) from what the wake-ups since the last call carried, or None: look in the backend.

        Call it before each look in the backend. Wake-ups of one holder come in
        seq order, and an envelope stored before the last look was found by it;
        so carried envelopes that start right past `after` are exactly the newest
        ones. Anything unexpected (a wake-up without its envelope, a gap, a first
        seq past `after + 1`: a look held back by `limit` left some) means: look.
        """
        carried, self._carried = self._carried, []
        fresh: list[str] = []
        for envelope in carried or ():
            seq = seq_of(envelope)
            if seq <= after:
                continue
            if len(fresh) == limit:
                break
            if seq != after + 1 + len(fresh):
                return None
            fresh.append(envelope)
        return (fresh, after + len(fresh)) if fresh else None

    def end(self) -> None:
        self.ended = True
        self._event.set()


class Reader:
    """A held look at one mailbox: its first look, then each new batch as wake-ups bring it.

    A poll takes the first batch and closes; a stream keeps reading. Reading
    acknowledges nothing: every look passes the request's own cursor, and
    reads past `cursor`, the last seq this reader handed out.
    """

    __slots__ = ("_hub", "_waiter", "_look", "_limit", "_more", "first", "cursor")

    def __init__(self, hub: Hub, waiter: Waiter, look: Look, limit: int, first: list[str], cursor: int):
        self._hub, self._waiter, self._look, self._limit = hub, waiter, look, limit
        self.first, self.cursor = first, cursor
        self._more = len(first) >= limit  # a full look may have left envelopes behind: look again before waiting

    @property
    def ended(self) -> bool:
        """Superseded by a newer poll or stream of the peer, or the process is stopping."""
        return self._waiter.ended

    def next(self, until: float) -> list[str] | None:
        """The next envelopes past `cursor`, waiting for a wake-up until `until` (time.monotonic());
        None when that time passed or the reader was ended. Raises what a look raises (not_joined...)."""
        waiter = self._waiter
        while not waiter.ended:
            if self._more:
                found = None
            else:
                remaining = until - time.monotonic()
                if remaining <= 0 or not waiter.wait(remaining) or waiter.ended:
                    return None
                found = waiter.carried(self.cursor, self._limit)
            messages, cursor = found or self._look(None, self.cursor)
            self._more = len(messages) >= self._limit
            if messages:
                self.cursor = cursor
                return messages
        return None

    def close(self) -> None:
        """Stop holding: no more wake-ups come here. Safe to call twice."""
        self._hub.release(self._waiter)


class Hub:
    """Held polls and streams by peer. A newer poll of a peer ends the older ones, once it is authenticated."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], list[Waiter]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._count = 0
        self.closing = False

    def hold(self, room: str, peer: str) -> Waiter:
        """Register a poll or stream before it looks at its mailbox, so no wake-up can slip between the two."""
        waiter = Waiter(room, peer, next(self._ids))
        with self._lock:
            self._held.setdefault((room, peer), []).append(waiter)
            self._count += 1
        if self.closing:
            waiter.end()
        return waiter

    def poll(self, fetch: Fetch, wait: float, look: Look) -> tuple[list[str], int]:
        """A long poll for `fetch`: the first delivery of a `Reader`, or nothing once `wait` seconds pass."""
        if wait <= 0:
            return look(None, fetch.after)
        started = time.monotonic()
        metrics.HELD_POLLS.inc()
        try:
            reader = self.read(fetch, look)  # authenticates
            try:
                messages = reader.first or reader.next(started + wait) or []
            finally:
                reader.close()
            metrics.POLL_WAIT.observe(time.monotonic() - started)
        finally:
            metrics.HELD_POLLS.dec()
        return messages, reader.cursor

    def read(self, fetch: Fetch, look: Look) -> Reader:
        """Hold a look at the peer's mailbox for `fetch`, look once (`Reader.first`), and end the peer's older ones.

        The reader is held before its first look, so no wake-up slips between
        the two; once that look has accepted the token it ends the peer's older
        polls and streams. An error of the look (not_joined...) releases it.
        """
        waiter = self.hold(fetch.room, fetch.peer)
        try:
            first, cursor = look(waiter.poll_id, fetch.after)
        except BaseException:
            self.release(waiter)
            raise
        self.claim(waiter)
        return Reader(self, waiter, look, fetch.limit, first, cursor)

    def claim(self, waiter: Waiter) -> None:
        """End the peer's older held polls and streams: call once the backend accepted this poll's token."""
        for other in tuple(self._held.get((waiter.room, waiter.peer), ())):
            if other.poll_id < waiter.poll_id:
                other.end()

    def release(self, waiter: Waiter) -> None:
        key = (waiter.room, waiter.peer)
        with self._lock:
            waiters = self._held.get(key, [])
            if waiter in waiters:
                waiters.remove(waiter)
                self._count -= 1
                if not waiters:
                    del self._held[key]

    def wake(self, room: str, peer: str, envelopes: list[str] | None = None) -> None:
        """The peer's mailbox changed; `envelopes`, when given, are the ones just stored, in seq order."""
        for waiter in tuple(self._held.get((room, peer), ())):
            waiter.wake(envelopes)

    def supersede(self, room: str, peer: str, poll_id: int) -> None:
        """End the held poll `poll_id` of that peer: a newer poll started on another instance."""
        for waiter in tuple(self._held.get((room, peer), ())):
            if waiter.poll_id == poll_id:
                waiter.end()

    def end_held(self, room: str, peer: str) -> None:
        """End every held poll and stream of that peer: it left, and they answer as superseded ones do."""
        for waiter in tuple(self._held.get((room, peer), ())):
            waiter.end()

    def _all(self) -> list[Waiter]:
        with self._lock:
            return [w for waiters in self._held.values() for w in waiters]

    def wake_all(self) -> None:
        """Make every held poll look again, e.g. after wake-ups may have been missed."""
        for waiter in self._all():
            waiter.wake()

    def close(self) -> None:
        """End every held poll and stream now and refuse to hold new ones: the process is stopping."""
        self.closing = True
        for waiter in self._all():
            waiter.end()

    def __len__(self) -> int:
        return self._count
