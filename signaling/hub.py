"""Held polls of this process: they wait here, and wake-ups arrive here.

A held poll costs one `Waiter` (an Event) and no backend connection. Under
gevent's monkey patching the Event is cooperative, so thousands of polls wait
on one OS thread.
"""

from __future__ import annotations

import itertools
import threading


class Waiter:
    """One held poll: woken when its mailbox changes, ended when superseded."""

    __slots__ = ("room", "peer", "poll_id", "ended", "_event")

    def __init__(self, room: str, peer: str, poll_id: int):
        self.room, self.peer, self.poll_id = room, peer, poll_id
        self.ended = False
        self._event = threading.Event()

    def wait(self, timeout: float) -> bool:
        """Block until woken or ended (True) or `timeout` passes (False); re-arms."""
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken

    def wake(self) -> None:
        self._event.set()

    def end(self) -> None:
        self.ended = True
        self._event.set()


class Hub:
    """At most one held poll per peer in this process: a newer one ends the older."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], Waiter] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.closing = False

    def hold(self, room: str, peer: str) -> Waiter:
        waiter = Waiter(room, peer, next(self._ids))
        with self._lock:
            older = self._held.get((room, peer))
            self._held[(room, peer)] = waiter
        if older is not None:
            older.end()
        if self.closing:
            waiter.end()
        return waiter

    def release(self, waiter: Waiter) -> None:
        with self._lock:
            if self._held.get((waiter.room, waiter.peer)) is waiter:
                del self._held[(waiter.room, waiter.peer)]

    def wake(self, room: str, peer: str) -> None:
        waiter = self._held.get((room, peer))
        if waiter is not None:
            waiter.wake()

    def supersede(self, room: str, peer: str, poll_id: int) -> None:
        """End the held poll `poll_id` of that peer: a newer poll started elsewhere."""
        waiter = self._held.get((room, peer))
        if waiter is not None and waiter.poll_id == poll_id:
            waiter.end()

    def wake_all(self) -> None:
        """Make every held poll look again, e.g. after wake-ups may have been missed."""
        for waiter in list(self._held.values()):
            waiter.wake()

    def close(self) -> None:
        """End every held poll now and refuse to hold new ones: the process is stopping."""
        self.closing = True
        for waiter in list(self._held.values()):
            waiter.end()

    def __len__(self) -> int:
        return len(self._held)
