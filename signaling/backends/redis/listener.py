"""The listener: one thread a process, one pub/sub connection, feeding this instance's wake-ups to its hub."""

from __future__ import annotations

import contextlib
import threading
import time

from ...config import Settings
from ...hub import Hub
from ...logs import Episode
from . import wakeups
from .connection import UNREACHABLE, connect, is_cluster


class Listener:
    """Subscribes to `wakeups.channel(instance)`; reconnects with capped backoff; `stop` ends it.

    Losing the connection is part of the backend's `outage`: one line when it starts, one when it ends.
    """

    def __init__(self, settings: Settings, instance: str, hub: Hub, outage: Episode):
        self.settings, self.instance, self.hub, self.outage = settings, instance, hub, outage
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="signaling-wakeups", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        channel, sharded = wakeups.channel(self.instance), is_cluster(self.settings)
        carried = not self.settings.redis_wait_replicas  # see wakeups.py: unconfirmed envelopes are not answered
        backoff = 0.1
        while not self._stopped.is_set():
            pubsub = None
            try:
                pubsub = connect(self.settings, f"signaling:{self.instance}:wake", None).pubsub(
                    ignore_subscribe_messages=True
                )
                if sharded:
                    pubsub.ssubscribe(channel)
                    receive = pubsub.get_sharded_message
                else:
                    pubsub.subscribe(channel)
                    receive = pubsub.get_message
                receive(timeout=1.0)  # the subscription is confirmed
                # Wake-ups published while we were not listening are lost: every held poll looks again.
                self.hub.wake_all()
                self.outage.end()
                backoff = 0.1
                while not self._stopped.is_set():
                    message = receive(timeout=1.0)
                    if message is not None and message["type"] in ("message", "smessage"):
                        wakeups.dispatch(self.hub, message["data"], carried)
            except UNREACHABLE as exc:
                if self._stopped.is_set():
                    break
                self.hub.wake_all()  # held polls look again now: they answer 503 rather than wait it out
                self.outage.begin(f"wake-up channel lost ({exc}); reconnecting")
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()
