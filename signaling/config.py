"""Settings: every default in one place, read from the environment in one place."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping


class ConfigError(ValueError):
    """A setting from the environment cannot be used; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """The service's configuration (PROTOCOL.md, "Configuration")."""

    port: int = 8000
    redis_url: str | None = None
    poll_wait: float = 25.0
    peer_ttl: float = 60.0
    max_message_bytes: int = 65536
    mailbox_limit: int = 1000
    room_capacity: int = 50
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None
    turn_ttl: int = 86400
    allowed_origins: tuple[str, ...] = ("*",)
    # Beyond the protocol's table: operator knobs, documented in the README.
    redis_max_connections: int = 32
    reap_interval: float = 1.0
    # Seconds a request may take to arrive whole, headers and body (signaling/worker.py); past it: 408.
    request_read_timeout: float = 10.0
    # Abuse limits, kept in the backend so they hold across instances; 0 turns one off.
    joins_per_ip_per_minute: int = 60
    sends_per_peer_per_second: int = 50
    peers_per_ip: int = 100
    rooms_per_ip: int = 20
    # How many proxies in front append to X-Forwarded-For; 0 means the peer's address is the client's.
    trusted_proxies: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables; unset or empty means the default."""
        env = os.environ if environ is None else environ
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for name, field in fields.items():
            raw = env.get(name.upper(), "").strip()
            if raw:
                values[name] = _parse(name.upper(), raw, field.default)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse settings that cannot work, naming the variable to fix."""
        positive = {
            "POLL_WAIT": self.poll_wait >= 0,
            "PEER_TTL": self.peer_ttl > 0,
            "MAX_MESSAGE_BYTES": self.max_message_bytes > 0,
            "MAILBOX_LIMIT": self.mailbox_limit > 0,
            "ROOM_CAPACITY": self.room_capacity > 0,
            "TURN_TTL": self.turn_ttl > 0,
            "REDIS_MAX_CONNECTIONS": self.redis_max_connections > 0,
            "REAP_INTERVAL": self.reap_interval > 0,
            "REQUEST_READ_TIMEOUT": self.request_read_timeout > 0,
            "PORT": 0 < self.port < 65536,
            "JOINS_PER_IP_PER_MINUTE": self.joins_per_ip_per_minute >= 0,
            "SENDS_PER_PEER_PER_SECOND": self.sends_per_peer_per_second >= 0,
            "PEERS_PER_IP": self.peers_per_ip >= 0,
            "ROOMS_PER_IP": self.rooms_per_ip >= 0,
            "TRUSTED_PROXIES": self.trusted_proxies >= 0,
        }
        for name, ok in positive.items():
            if not ok:
                raise ConfigError(f"{name} is out of range: {getattr(self, name.lower())!r}")
        if self.poll_wait >= self.peer_ttl:
            raise ConfigError(
                f"POLL_WAIT ({self.poll_wait:g}) must be below PEER_TTL ({self.peer_ttl:g}), "
                "or a peer waiting in a poll would time out"
            )


def _parse(name: str, raw: str, default: object) -> object:
    """Convert one raw value to the type of its default."""
    try:
        if isinstance(default, tuple):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError("not a finite number")
            return value
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not valid: {exc}") from None
    return raw
