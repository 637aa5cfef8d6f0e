"""Settings: every default in one place, read from the environment in one place."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple, NoReturn


class ConfigError(ValueError):
    """A setting from the environment cannot be used; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """The service's configuration (docs/protocol.md, "Configuration", and docs/configuration.md for all of them)."""

    port: int = 8000
    redis_url: str | None = None
    poll_wait: float = 25.0
    peer_ttl: float = 60.0
    max_message_bytes: int = 65536
    mailbox_limit: int = 1000
    mailbox_bytes: int = 1048576
    room_capacity: int = 50
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None
    turn_ttl: int = 86400
    allowed_origins: tuple[str, ...] = ("*",)
    # Join tickets (signaling/tickets.py): either set, every fresh join needs one.
    join_secret: tuple[str, ...] = ()  # HS256 secrets, comma-separated: any of them verifies (rotation)
    join_public_key: str | None = None  # a PEM public key, inline or a file's path
    # Streaming receive (protocol 1.2, signaling/stream.py)
    stream_heartbeat: float = 15.0  # longest silence on an open stream
    stream_max: float = 300.0  # longest life of one stream (each spread down by up to 10 %)
    # Webhooks (protocol 1.2, signaling/webhooks.py): both set, every membership change is POSTed, signed.
    webhook_url: str | None = None
    webhook_secret: tuple[str, ...] = ()  # whsec_<base64>, comma-separated: each signs (rotation)
    # The server API (protocol 1.2, signaling/server_api.py): any of these keys is accepted (rotation); none: off.
    server_api_keys: tuple[str, ...] = ()
    # Beyond the protocol's table: operator knobs, documented in docs/configuration.md.
    redis_max_connections: int = 32
    # Managed and highly available Redis (docs/deploying.md): TLS trust, and writes confirmed by replicas.
    redis_tls_ca: str | None = None  # the CA that signed the Redis server's certificate: a PEM, inline or a file's path
    redis_tls_verify: str = "full"  # "full": the certificate and its host name; "none": neither (a host's own advice)
    redis_wait_replicas: int = 0  # a write answers only once this many replicas have it (Redis WAIT)
    redis_wait_timeout: float = 0.5  # seconds WAIT may take before the write answers 503
    reap_interval: float = 1.0
    # Webhook delivery (docs/webhooks.md): seconds per attempt, the waits between attempts (the last one
    # repeats), and how long after an event it is tried before it is given up.
    webhook_timeout: float = 10.0
    webhook_retry_schedule: tuple[str, ...] = ("5", "30", "120", "600", "1800", "3600")
    webhook_retry_for: float = 86400.0
    # Seconds a request may take to arrive whole, headers and body (signaling/worker.py); past it: 408.
    request_read_timeout: float = 10.0
    # Abuse limits, kept in the backend so they hold across instances; 0 turns one off.
    joins_per_ip_per_minute: int = 60
    sends_per_peer_per_second: int = 50
    peers_per_ip: int = 100
    rooms_per_ip: int = 20
    # How many proxies in front append to X-Forwarded-For; 0 means the peer's address is the client's.
    trusted_proxies: int = 0
    # gunicorn's, read by gunicorn.conf.py; checked here with the rest.
    host: str = "0.0.0.0"
    web_concurrency: int = 1
    worker_connections: int = 10000
    graceful_timeout: int = 10
    log_level: str = "info"
    # Observability (docs/observability.md): /metrics answers a request bearing this token; unset, only a local one.
    metrics_token: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables; unset or empty means the default."""
        env = os.environ if environ is None else environ
        values = {}
        for field in dataclasses.fields(cls):
            raw = env.get(field.name.upper(), "").strip()
            if raw:
                values[field.name] = _parse(field.name.upper(), raw, field.default)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse settings that cannot work, naming the variable to fix and what it accepts."""
        for name, check in CHECKS.items():
            value = getattr(self, name.lower())
            if value is not None and not check.ok(value):
                shown = _shown(redacted(value) if name == "REDIS_URL" else value)
                raise ConfigError(f"{name}={shown} ({check.accepts})")
        self._validate_tickets()
        if self.poll_wait >= self.peer_ttl:
            raise ConfigError(
                f"POLL_WAIT={self.poll_wait:g} must be below PEER_TTL={self.peer_ttl:g}, "
                "or a peer waiting in a poll would time out"
            )
        if self.stream_heartbeat >= self.stream_max:
            raise ConfigError(
                f"STREAM_HEARTBEAT={self.stream_heartbeat:g} must be below STREAM_MAX={self.stream_max:g}, "
                "or a stream would say nothing from its first line to its end, and proxies close quiet streams"
            )
        if self.webhook_url and not self.webhook_secret:
            raise ConfigError(
                f"WEBHOOK_URL={_shown(self.webhook_url)} needs WEBHOOK_SECRET (whsec_<base64>): "
                "receivers verify every event's signature with it"
            )
        if self.turn_urls and not self.turn_secret:
            raise ConfigError(
                f"TURN_URLS={_shown(self.turn_urls)} needs TURN_SECRET (the TURN server's static-auth-secret): "
                "browsers refuse a TURN server without credentials"
            )
        self._validate_redis()
        if self.web_concurrency > 1 and not self.redis_url:
            raise ConfigError(
                f"WEB_CONCURRENCY={self.web_concurrency} needs REDIS_URL: without it every worker would keep "
                "its own rooms in memory and peers on different workers could not see each other. "
                "Set REDIS_URL to run several workers, or use WEB_CONCURRENCY=1"
            )

    def _validate_redis(self) -> None:
        """TLS settings need a TLS URL; WAIT needs one primary to ask (one Redis or Sentinel's, not a cluster)."""
        url = self.redis_url or ""
        tls = url.startswith("rediss")
        if self.redis_tls_ca and not tls:
            raise ConfigError("REDIS_TLS_CA is set, but it needs REDIS_URL with a TLS scheme (rediss://, "
                              "rediss+sentinel://, rediss+cluster://): without TLS no certificate is checked")
        if self.redis_tls_verify != "full" and not tls:
            raise ConfigError(f"REDIS_TLS_VERIFY={_shown(self.redis_tls_verify)} needs REDIS_URL with a TLS scheme "
                              "(rediss://, ...)")
        if self.redis_wait_replicas and "+cluster://" in url:
            raise ConfigError(f"REDIS_WAIT_REPLICAS={self.redis_wait_replicas} works with one Redis or Sentinel "
                              "(redis://, redis+sentinel://), not with Redis Cluster")
        if self.redis_wait_replicas and not url:
            raise ConfigError(f"REDIS_WAIT_REPLICAS={self.redis_wait_replicas} needs REDIS_URL: "
                              "the memory backend has no replicas")

    def _validate_tickets(self) -> None:
        """A JOIN_SECRET or JOIN_PUBLIC_KEY that could never verify a ticket is refused at start."""
        if not (self.join_secret or self.join_public_key):
            return
        from .ticket_keys import check_secret, load_public_key  # PyJWT and cryptography load only when asked for

        try:
            for secret in self.join_secret:
                check_secret(secret)
        except ValueError as exc:
            raise ConfigError(f"JOIN_SECRET is not valid: {exc}") from None
        if self.join_public_key:
            try:
                load_public_key(self.join_public_key)
            except ValueError as exc:
                raise ConfigError(f"JOIN_PUBLIC_KEY is not valid: {exc}") from None


def settings_or_exit() -> Settings:
    """The settings from the environment, or the process ends with one line naming what is wrong.

    For the entry points (`python -m signaling`, gunicorn.conf.py): never a traceback.
    """
    try:
        return Settings.from_env()
    except ConfigError as exc:
        refuse(str(exc))


def refuse(message: str) -> NoReturn:
    """End the start with one line on stderr, exit status 2: a setting that cannot work (startup.py's too)."""
    sys.stderr.write(f"signaling: bad configuration: {message}\n")
    sys.stderr.flush()
    sys.exit(2)


def redacted(url: str | None) -> str | None:
    """A URL with its password (and a user name standing alone, as Redis ACLs take it) written `***`.

    Every place that prints REDIS_URL prints this: the start line, a refused setting, the logs.
    """
    if not url or "@" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    hidden = f"{user}:***" if colon else "***"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{hidden}@{hostinfo}"))


class Check(NamedTuple):
    """What one setting accepts: a test of its parsed value, and those words for the error message."""

    ok: Callable[[object], bool]
    accepts: str


def _is_positive_number(value: str) -> bool:
    try:
        return 0 < float(value) < float("inf")
    except ValueError:
        return False


def _is_webhook_secret(value: str) -> bool:
    """`whsec_` and the base64 of at least 16 bytes: what Standard Webhooks libraries take."""
    key = value.removeprefix("whsec_")
    try:
        return key != value and len(base64.b64decode(key, validate=True)) >= 16
    except ValueError:
        return False


def _each(ok: Callable[[str], bool]) -> Callable[[tuple[str, ...]], bool]:
    return lambda values: all(ok(value) for value in values)


def _is_redis_url(value: str) -> bool:
    scheme, found, _ = value.partition("://")
    if scheme.endswith("+sentinel"):
        return bool(_SENTINEL_URL.fullmatch(value))
    return bool(found) and scheme in REDIS_SCHEMES


def _is_ca(value: str) -> bool:
    """A PEM certificate that OpenSSL reads, inline or in a file (REDIS_TLS_CA)."""
    import ssl

    try:
        pem = value if "-----BEGIN" in value else Path(value).read_text(encoding="ascii")
        ssl.create_default_context(cadata=pem)
        return True
    except (OSError, ValueError, ssl.SSLError):
        return False


def _is_host(value: str) -> bool:
    """An IP address or a DNS name: what gunicorn can bind."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return bool(_HOSTNAME.fullmatch(value))


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")
_ICE_HOST = r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
#: RFC 7064 and 7065, as RTCPeerConnection parses them: no "//", a host, an optional port (and transport)
_STUN_URL = re.compile(f"stun:{_ICE_HOST}")
_TURN_URL = re.compile(f"turns?:{_ICE_HOST}(\\?transport=(udp|tcp))?")
#: an Origin header as browsers send it: scheme://host[:port], no path, no trailing slash
_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]+")
#: a server API key: sent as `Authorization: Bearer <key>`, so printable ASCII without spaces; long enough to guess
_SERVER_KEY = re.compile(r"[!-~]{32,}")
REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster", "unix")
REDIS_TLS_VERIFY = ("full", "none")
#: sentinels (host:port, comma-separated), then the service they watch, then the database
_SENTINEL_URL = re.compile(r"rediss?\+sentinel://([^@/]*@)?[^@/:,]+:[0-9]{1,5}(,[^@/:,]+:[0-9]{1,5})*/[^/]+(/[0-9]+)?/?")
_HTTP_URL = re.compile(r"https?://[^/?#\s]+(/\S*)?")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: the smallest MAX_MESSAGE_BYTES: a join's body with the longest peer id and a ticket (an RS256 ticket from a
#: 2048-bit key is about 600 bytes) fits, with room; below it a join may be refused 413 however it is made
MIN_BODY_BYTES = 1024

#: One row per setting: what it accepts. A value that does not parse gets the same message.
CHECKS: dict[str, Check] = {
    "PORT": Check(lambda v: 0 < v < 65536, "a port number 1-65535"),
    "REDIS_URL": Check(_is_redis_url, "a URL with scheme " + ", ".join(f"{s}://" for s in REDIS_SCHEMES)
                       + "; Sentinel's as redis+sentinel://host:port[,host:port]/service_name[/db]"),
    "POLL_WAIT": Check(lambda v: v >= 0, "seconds >= 0, below PEER_TTL"),
    "PEER_TTL": Check(lambda v: v > 0, "seconds > 0"),
    "MAX_MESSAGE_BYTES": Check(lambda v: v >= MIN_BODY_BYTES,
                               f"a whole number of bytes >= {MIN_BODY_BYTES}: a join with a ticket must fit"),
    "MAILBOX_LIMIT": Check(lambda v: v > 0, "a whole number > 0"),
    "MAILBOX_BYTES": Check(lambda v: 1024 <= v <= 2**30, "a whole number of bytes from 1024 to 1073741824 (1 GiB)"),
    "ROOM_CAPACITY": Check(lambda v: v > 0, "a whole number > 0"),
    "STUN_URLS": Check(_each(_STUN_URL.fullmatch), "comma-separated stun:host[:port] URLs"),
    "TURN_URLS": Check(_each(_TURN_URL.fullmatch),
                       "comma-separated turn:host[:port] or turns:host[:port] URLs, optionally ?transport=udp|tcp"),
    "TURN_TTL": Check(lambda v: v > 0, "a whole number of seconds > 0"),
    "ALLOWED_ORIGINS": Check(_each(lambda v: v == "*" or _ORIGIN.fullmatch(v)),
                             "* or comma-separated origins like https://app.example (no path, no trailing /)"),
    "WEBHOOK_URL": Check(_HTTP_URL.fullmatch, "an http:// or https:// URL"),
    "WEBHOOK_SECRET": Check(_each(_is_webhook_secret),
                            "comma-separated whsec_<base64 of at least 16 bytes>, as Standard Webhooks has them"),
    "WEBHOOK_TIMEOUT": Check(lambda v: v > 0, "seconds > 0"),
    "WEBHOOK_RETRY_SCHEDULE": Check(lambda v: bool(v) and all(map(_is_positive_number, v)),
                                    "comma-separated seconds > 0, the waits between attempts (the last repeats)"),
    "WEBHOOK_RETRY_FOR": Check(lambda v: v > 0, "seconds > 0"),
    "SERVER_API_KEYS": Check(_each(_SERVER_KEY.fullmatch),
                             "comma-separated keys of at least 32 printable ASCII characters each, no spaces"),
    "REDIS_MAX_CONNECTIONS": Check(lambda v: v > 0, "a whole number > 0"),
    "REDIS_TLS_CA": Check(_is_ca, "a PEM certificate, inline or a readable file's path"),
    "REDIS_TLS_VERIFY": Check(lambda v: v in REDIS_TLS_VERIFY, "full (the certificate and its host name) or none"),
    "REDIS_WAIT_REPLICAS": Check(lambda v: v >= 0, "a whole number of replicas >= 0; 0 does not wait"),
    "REDIS_WAIT_TIMEOUT": Check(lambda v: 0.001 <= v <= 10, "seconds from 0.001 to 10"),
    "STREAM_HEARTBEAT": Check(lambda v: v > 0, "seconds > 0, below STREAM_MAX"),
    "STREAM_MAX": Check(lambda v: v > 0, "seconds > 0"),
    "REAP_INTERVAL": Check(lambda v: v > 0, "seconds > 0"),
    "REQUEST_READ_TIMEOUT": Check(lambda v: v > 0, "seconds > 0"),
    "JOINS_PER_IP_PER_MINUTE": Check(lambda v: v >= 0, "a whole number >= 0; 0 turns the limit off"),
    "SENDS_PER_PEER_PER_SECOND": Check(lambda v: v >= 0, "a whole number >= 0; 0 turns the limit off"),
    "PEERS_PER_IP": Check(lambda v: v >= 0, "a whole number >= 0; 0 turns the limit off"),
    "ROOMS_PER_IP": Check(lambda v: v >= 0, "a whole number >= 0; 0 turns the limit off"),
    "TRUSTED_PROXIES": Check(lambda v: v >= 0, "a whole number of proxies >= 0"),
    "HOST": Check(_is_host, "an IP address or host name to listen on, like 127.0.0.1 or 0.0.0.0"),
    "WEB_CONCURRENCY": Check(lambda v: v >= 1, "a whole number of worker processes >= 1"),
    "WORKER_CONNECTIONS": Check(lambda v: v >= 1, "a whole number of connections per worker >= 1"),
    "GRACEFUL_TIMEOUT": Check(lambda v: v >= 0, "a whole number of seconds >= 0"),
    "LOG_LEVEL": Check(lambda v: v.lower() in LOG_LEVELS, "one of " + ", ".join(LOG_LEVELS)),
    "METRICS_TOKEN": Check(lambda v: len(v) >= 16 and v.isascii() and v.isprintable() and " " not in v,
                           "at least 16 printable ASCII characters, no space (a bearer token)"),
}


def _shown(value: object) -> str:
    """A value as the environment would spell it, quoted."""
    return repr(",".join(value) if isinstance(value, tuple) else value)

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
    except ValueError:
        accepts = CHECKS[name].accepts if name in CHECKS else f"a {type(default).__name__}"
        raise ConfigError(f"{name}={raw!r} ({accepts})") from None
    return raw
