"""Connections to Redis or Redis Cluster, and what a store that cannot answer becomes (503)."""

from __future__ import annotations

import contextlib
import logging

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ... import errors
from ...config import Settings

log = logging.getLogger(__name__)

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
#: seconds a Redis that does not answer (or a request waiting for a round trip) may take before 503
TIMEOUT = 2

#: what a Redis or Redis Cluster that cannot be reached raises
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError,
               redis.exceptions.RedisClusterException, OSError)


def is_cluster(settings: Settings) -> bool:
    return settings.redis_url.startswith(CLUSTER_SCHEMES)


def connect(settings: Settings, name: str, pooled_besides: int | None) -> redis.Redis | redis.RedisCluster:
    """A client for requests (`pooled_besides` the lanes' connections) or, given None, for pub/sub.

    A pooled client keeps at most REDIS_MAX_CONNECTIONS (per node); on one
    Redis the lanes' connections count among them, and the pool keeps the rest
    (at least one) for the commands outside them. No automatic retries: a
    timed-out send may have run, and running it twice would store the
    envelope twice. The client retries, with an Idempotency-Key if it cares.
    """
    pooled, sharded = pooled_besides is not None, is_cluster(settings)
    options = dict(
        socket_timeout=TIMEOUT if pooled else None, socket_connect_timeout=TIMEOUT, retry=Retry(NoBackoff(), 0),
        decode_responses=True, client_name=name,
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
    if pooled:
        return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(url, timeout=TIMEOUT, **options))
    return redis.Redis.from_url(url, **options)


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
