"""Presence: every instance looks for silent peers, and keeps its streaming ones live; the backend removes each
silent peer exactly once."""

from __future__ import annotations

import logging
import threading
import time

from . import errors, metrics
from .backends.base import Backend, Listener

log = logging.getLogger(__name__)


class _Loop:
    """A background thread that calls `tick(time.time())` every `interval` seconds until `stop`.

    A tick that fails is logged, and the next one tries again: a store that
    is away for a while (503s meanwhile) does not end the loop, and is one
    line when it goes and one when it is back (`Backend.outage`), not a line a tick.
    """

    name = "loop"

    def __init__(self, backend: Backend, interval: float):
        self.backend = backend
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"signaling-{self.name}", daemon=True)

    def tick(self, now: float) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick(time.time())
            except errors.BackendUnavailable as exc:
                self.backend.outage.begin(f"{self.name}: {exc}")
            except Exception:
                log.exception("%s failed; will retry", self.name)
            else:
                self.backend.outage.end()


class Reaper(_Loop):
    """A background loop that calls `backend.reap` every `interval` seconds."""

    name = "reaper"

    def tick(self, now: float) -> None:
        removed = self.backend.reap(now)
        metrics.PEERS_TIMED_OUT.inc(len(removed))
        for room, peer in removed:
            log.info("peer %s left room %s: timed out", peer, room)


class KeepAlive(_Loop):
    """The peers of this process's open streams are live: one `backend.keep_alive` call per tick renews them all.

    A streaming peer may hear nothing for longer than PEER_TTL and sends no
    request meanwhile; its stream is its heartbeat. One call a tick for all of
    them (one Redis round trip), not one per stream per heartbeat.
    """

    name = "keep-alive"

    def __init__(self, backend: Backend, interval: float):
        super().__init__(backend, interval)
        self._listeners: dict[int, Listener] = {}  # by stream id

    def add(self, stream_id: int, listener: Listener) -> None:
        self._listeners[stream_id] = listener

    def discard(self, stream_id: int) -> None:
        self._listeners.pop(stream_id, None)

    def __len__(self) -> int:
        return len(self._listeners)

    def tick(self, now: float) -> None:
        """Renew every open stream's peer as of `now` (the loop's step; tests drive it by hand)."""
        listeners = list(self._listeners.values())
        if listeners:
            self.backend.keep_alive(listeners, now)
