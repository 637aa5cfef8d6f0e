"""Connections to Redis, Redis behind Sentinel or Redis Cluster, over TLS or not; what a store that cannot
answer becomes (503).

Sentinel: `redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]` names the sentinels and
the service they watch; every new connection asks them for the primary, so after a failover the next
connection (a lane or the listener's, reconnecting once the old primary's is lost) reaches the new one.
The URL's credentials are the Redis servers'; sentinels are asked without any.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import urllib.parse
from pathlib import Path

import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from ... import errors
from ...config import ConfigError, Settings

log = logging.getLogger(__name__)

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
#: seconds a Redis that does not answer (or a request waiting for a round trip) may take before 503
TIMEOUT = 2

#: what a Redis or Redis Cluster that cannot be reached raises
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError,
               redis.exceptions.RedisClusterException, OSError)


def is_cluster(settings: Settings) -> bool:
    return settings.redis_url.startswith(CLUSTER_SCHEMES)


def is_sentinel(settings: Settings) -> bool:
    return settings.redis_url.startswith(SENTINEL_SCHEMES)


def connect(settings: Settings, name: str, pooled_besides: int | None) -> redis.Redis | redis.RedisCluster:
    """A client for requests (`pooled_besides` the lanes' connections) or, given None, for pub/sub.

    A pooled client keeps at most REDIS_MAX_CONNECTIONS (per node); on one
    Redis the lanes' connections count among them, and the pool keeps the rest
    (at least one) for the commands outside them. No automatic retries: a
    timed-out send may have run, and running it twice would store the
    envelope twice. The client retries, with an Idempotency-Key if it cares.
    A round trip may wait for replicas (REDIS_WAIT_TIMEOUT) on top of TIMEOUT.
    """
    pooled, sharded = pooled_besides is not None, is_cluster(settings)
    waits = settings.redis_wait_timeout if settings.redis_wait_replicas else 0
    options = dict(
        socket_timeout=TIMEOUT + waits if pooled else None, socket_connect_timeout=TIMEOUT,
        retry=Retry(NoBackoff(), 0), decode_responses=True, client_name=name, **tls_options(settings),
    )
    if pooled:
        most = settings.redis_max_connections
        options.update(max_connections=most if sharded else max(1, most - pooled_besides))
    else:
        # RESP2: on RESP3, redis-py hands every pub/sub message to a push handler that formats it into a
        # debug line whether or not debug is on (str() of a wake-up carrying envelopes: 5 % of a busy worker).
        options.update(health_check_interval=10, protocol=2)
    url = settings.redis_url
    if sharded:
        if pooled:
            options.update(connection_pool_class=redis.BlockingConnectionPool)
        return redis.RedisCluster.from_url(url.replace("+cluster", "", 1), **options)
    if is_sentinel(settings):
        return _sentinel_primary(url, options, redis.BlockingConnectionPool if pooled else None)
    if pooled:
        return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(url, timeout=TIMEOUT, **options))
    return redis.Redis.from_url(url, **options)


def tls_options(settings: Settings) -> dict:
    """redis-py's TLS options for REDIS_TLS_CA and REDIS_TLS_VERIFY (none for a plain URL).

    Verification is redis-py's default: the chain up to a trusted CA (the
    system's, or REDIS_TLS_CA alone) and the host name. REDIS_TLS_VERIFY=none
    checks neither: the link is encrypted, but to whoever answers.
    """
    if not settings.redis_url.startswith("rediss"):
        return {}
    options: dict = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    ca = settings.redis_tls_ca
    if ca:
        options["ssl_ca_data"] = ca if "-----BEGIN" in ca else Path(ca).read_text(encoding="ascii")
    if settings.redis_tls_verify == "none":
        options.update(ssl_cert_reqs="none", ssl_check_hostname=False)
    return options


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, dict]:
    """`redis+sentinel://[user:password@]h:p[,h:p...]/service[/db]`: (sentinels, service, the primary's options)."""
    scheme, _, rest = url.partition("://")
    parts = urllib.parse.urlsplit(f"x://{rest}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = []
    for address in hosts.split(","):
        host, _, port = address.rpartition(":")
        sentinels.append((host.strip("[]") or "127.0.0.1", int(port or 26379)))
    service, _, db = parts.path.strip("/").partition("/")
    if not service:
        raise ValueError("no service name: redis+sentinel://host:port[,host:port]/service_name[/db]")
    primary: dict = {"db": int(db or 0), "ssl": scheme.startswith("rediss")}
    if userinfo:
        username, _, password = userinfo.partition(":")
        primary.update(username=urllib.parse.unquote(username) or None, password=urllib.parse.unquote(password))
    return sentinels, service, primary


class _BlockingSentinelPool(redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """Connections to the primary Sentinel names; like the plain Redis's pool, a request waits for a free one."""


def _sentinel_primary(url: str, options: dict, blocking) -> redis.Redis:
    sentinels, service, primary = parse_sentinel_url(url)
    ask = {key: value for key, value in options.items() if key.startswith("ssl_")}
    ask.update(ssl=primary["ssl"], socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, decode_responses=True)
    manager = redis.sentinel.Sentinel(sentinels, sentinel_kwargs=ask, **options)
    if blocking:
        return manager.master_for(service, connection_pool_class=_BlockingSentinelPool, timeout=TIMEOUT, **primary)
    return manager.master_for(service, **primary)


def check_trust(settings: Settings) -> None:
    """Refuse, at start, a TLS Redis whose certificate this configuration does not trust (ConfigError).

    A Redis that cannot be reached now is no reason to refuse: it may come
    up later, and requests answer 503 meanwhile. A certificate that fails
    verification will fail every connection, so it is a configuration error.
    """
    if not (settings.redis_url or "").startswith("rediss"):
        return
    try:
        client = connect(settings, "signaling:start", pooled_besides=0)
        try:
            client.ping()
        finally:
            client.close()
    except (*UNREACHABLE, ssl.SSLError) as exc:
        refusal = _untrusted(exc)
        if refusal:
            raise ConfigError(f"REDIS_URL: the Redis server's certificate is not trusted ({refusal}): REDIS_TLS_CA "
                              "must be the CA that signed it, and REDIS_URL name a host it was issued for "
                              "(docs/deploying.md, TLS)") from None


def _untrusted(exc: BaseException) -> str | None:
    """What the certificate check said, when a failed check is why `exc` happened (redis-py words it into its own)."""
    seen: BaseException | None = exc
    while seen is not None:
        text = seen.verify_message if isinstance(seen, ssl.SSLCertVerificationError) else str(seen)
        if "certificate verify failed" in text.lower() or isinstance(seen, ssl.SSLCertVerificationError):
            return text.rpartition("certificate verify failed: ")[2].partition(" (_ssl.c")[0].rstrip(". )")
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def reachable():
    """Turn a lost, timed-out or full Redis into `503 backend_unavailable`.

    Full: at `maxmemory` with `noeviction` (the deployment docs'), Redis
    refuses writes that may grow memory with an OOM error; a script is refused
    whole, before its first write (room.lua's `refuse_when_full`).
    """
    try:
        yield
    except UNREACHABLE as exc:
        raise errors.BackendUnavailable() from exc
    except redis.exceptions.OutOfMemoryError as exc:
        log.warning("Redis is full (maxmemory): %s", exc)
        raise errors.BackendUnavailable("the state store is full; try again shortly") from exc


def is_noscript(reply) -> bool:
    """Whether a reply says Redis does not have the script (it was restarted or flushed): load and run again."""
    return isinstance(reply, redis.exceptions.NoScriptError) or (
        isinstance(reply, redis.ResponseError) and str(reply).startswith("NOSCRIPT")
    )
