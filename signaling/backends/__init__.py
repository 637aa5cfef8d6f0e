"""Backends keep rooms, peers and mailboxes; this is the one place that picks one."""

from __future__ import annotations

from ..config import Settings
from ..hub import Hub
from .base import Backend


def create_backend(settings: Settings, hub: Hub) -> Backend:
    """Redis when `REDIS_URL` is set, else the in-process memory backend."""
    if settings.redis_url:
        from .redis import RedisBackend

        return RedisBackend(settings, hub)
    from .memory import MemoryBackend

    return MemoryBackend(settings, hub)
