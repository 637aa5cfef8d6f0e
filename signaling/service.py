"""The parts one process runs, without Flask: settings, backend, held polls, reaper, the ticket check, webhooks."""

from __future__ import annotations

import dataclasses

from .backends import Backend, create_backend
from .config import Settings
from .hub import Hub
from .presence import KeepAlive, Reaper
from .tickets import Verifier
from .webhooks import Webhooks


@dataclasses.dataclass
class Service:
    """What every view works with; `create_app` makes one per app (`Service.of(app)`): settings, backend,
    held polls and streams, the reaper, the keep-alive of streaming peers, the join ticket check, webhooks."""

    settings: Settings
    backend: Backend
    hub: Hub
    reaper: Reaper
    keep_alive: KeepAlive
    tickets: Verifier | None  # None: tickets are off, anyone may join
    webhooks: Webhooks | None  # None: webhooks are off (no WEBHOOK_URL)

    @classmethod
    def start(cls, settings: Settings) -> Service:
        """Connect the backend and start the reaper; `close` stops them."""
        tickets = Verifier.from_settings(settings)
        hub = Hub()
        backend = create_backend(settings, hub)
        backend.start()
        reaper = Reaper(backend, settings.reap_interval)
        reaper.start()
        # A stream is its peer's heartbeat: renewed in one backend call a tick, well within PEER_TTL.
        keep_alive = KeepAlive(backend, min(settings.stream_heartbeat, settings.peer_ttl / 3))
        keep_alive.start()
        webhooks = Webhooks(backend, settings) if settings.webhook_url else None
        if webhooks:
            webhooks.start()
        return cls(settings, backend, hub, reaper, keep_alive, tickets, webhooks)

    @staticmethod
    def of(app) -> Service:
        """The service an app made by `create_app` runs: the one way to reach it."""
        return app.extensions["signaling"]

    def close(self) -> None:
        self.hub.close()
        self.reaper.stop()
        self.keep_alive.stop()
        if self.webhooks:
            self.webhooks.stop()
        self.backend.close()


# `from signaling.service import create_app` kept working for code written before the factory moved to the package
# (the package imports this module only inside create_app, so this is no import cycle at load time)
from . import create_app  # noqa: E402, F401
