"""Presence: every instance looks for silent peers; the backend removes each exactly once."""

from __future__ import annotations

import logging
import threading
import time

from . import errors, metrics
from .backends.base import Backend

log = logging.getLogger(__name__)


class Reaper:
    """A background loop that calls `backend.reap` every `interval` seconds."""

    def __init__(self, backend: Backend, interval: float):
        self.backend = backend
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="signaling-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                removed = self.backend.reap(time.time())
                metrics.PEERS_TIMED_OUT.inc(len(removed))
                for room, peer in removed:
                    log.info("peer %s left room %s: timed out", peer, room)
            except errors.BackendUnavailable:
                log.warning("reaper: backend unavailable, will retry")
            except Exception:
                log.exception("reaper failed; will retry")
