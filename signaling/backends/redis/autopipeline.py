"""Many requests, few Redis round trips: the commands of concurrent requests travel together.

With a plain connection pool each request borrows a connection for its own
round trip. When thousands of held polls woke at once they queued for the
pool, and the late ones timed out into 503s while Redis sat mostly idle.

Here at most `lanes` round trips are in flight. A request that finds a lane
free sends its commands at once, itself. One that finds every lane busy
queues; when a round trip ends, the request at the head of the queue is
handed that lane and sends, in one pipeline, its own commands and those of
every request queued behind it. Alone, a request costs one round trip as
before; under load one round trip carries hundreds of requests.

On one Redis each lane is a connection of its own, written and read
directly: borrowing from redis-py's pool and building a `Pipeline` cost a
busy worker more CPU than the round trip itself (the pool polls the socket
on every checkout). On Redis Cluster a lane is a cluster pipeline, which
routes each command to its node. Behind Sentinel a lane's connection asks
the sentinels for the primary whenever it connects: a failover costs the
round trips that were on the old primary's connections, and the next ones
reach the new primary.

With REDIS_WAIT_REPLICAS=N each round trip ends with `WAIT N timeout`, which
answers once N replicas have every write the connection made so far: one
WAIT confirms every request of the round trip, and none of them answers
before it has (`NotReplicated` else). Without it a round trip is what it was.
"""

from __future__ import annotations

import collections
import threading
import time

import redis
from redis.connection import Connection

from ... import metrics

#: most commands in one round trip
BATCH = 512


class NotReplicated(redis.TimeoutError):
    """Fewer replicas than REDIS_WAIT_REPLICAS confirmed a round trip's writes within REDIS_WAIT_TIMEOUT."""


class _Call:
    """The commands of one request, waiting for their replies."""

    __slots__ = ("commands", "replies", "error", "state", "lane", "done")

    def __init__(self, commands: list[tuple]):
        self.commands = commands
        self.replies: list | None = None
        self.error: BaseException | None = None
        # "queued" -> "lead" (handed a lane) or "sent" (carried by another) or "dropped" (stopped waiting)
        self.state = "queued"
        self.lane: Connection | None = None  # the lead's connection (None on a cluster)
        self.done: threading.Event | None = None  # made only for a request that has to queue


class Autopipeline:
    """Run command lists from any number of greenlets (or threads) in at most `lanes` concurrent round trips."""

    def __init__(self, client: redis.Redis | redis.RedisCluster, lanes: int, queue_wait: float,
                 replicas: int = 0, replica_wait: float = 0.0):
        self.client, self.queue_wait = client, queue_wait
        self.replicas = replicas
        # WAIT's timeout is whole milliseconds, and 0 would wait forever
        self._wait = ("WAIT", replicas, max(1, round(replica_wait * 1000))) if replicas else None
        self.round_trips = 0
        self._lock = threading.Lock()
        if isinstance(client, redis.RedisCluster):
            self._free: list[Connection | None] = [None] * lanes
        else:  # same settings as the pool's (timeouts, client name, decoding); each connects when first used
            pool = client.connection_pool
            self._free = [pool.connection_class(**pool.connection_kwargs) for _ in range(lanes)]
        self._connections = [lane for lane in self._free if lane is not None]
        self._queued: collections.deque[_Call] = collections.deque()

    def close(self) -> None:
        for connection in self._connections:
            connection.disconnect()

    def execute(self, commands: list[tuple]) -> list:
        """Send `commands` together, in order; their replies, a command's error reply as an exception object.

        A request still queued after `queue_wait` seconds is withdrawn (it never
        reaches Redis) and gets `redis.TimeoutError`; one already sent waits for
        its replies, which the connection's socket timeout bounds.
        """
        call = _Call(commands)
        with self._lock:
            if self._free:
                call.lane, call.state = self._free.pop(), "lead"
            else:
                call.done = threading.Event()
                self._queued.append(call)
        if call.state != "lead":
            try:
                if not call.done.wait(self.queue_wait):
                    with self._lock:
                        if call.state == "queued":
                            call.state = "dropped"
                            raise redis.TimeoutError(f"no Redis round trip free within {self.queue_wait:g}s")
                    call.done.wait()
            except BaseException:  # killed while queued: never keep a lane that was handed over
                with self._lock:
                    lead, call.state = call.state == "lead", "dropped"
                if lead:
                    self._hand_over(call.lane)
                raise
        if call.state == "lead":
            self._carry(call)
        if call.error is not None:
            raise call.error
        return call.replies

    def _carry(self, call: _Call) -> None:
        """Send `call` and everything queued behind it, then hand the lane to the next queued request."""
        with self._lock:
            batch, size = [call], len(call.commands)
            while self._queued and size < BATCH:
                other = self._queued.popleft()
                if other.state == "queued":
                    other.state = "sent"
                    batch.append(other)
                    size += len(other.commands)
            self.round_trips += 1
        try:
            self._send(batch, call.lane)
        finally:
            self._hand_over(call.lane)

    def _hand_over(self, lane: Connection | None) -> None:
        """A round trip ended: its lane goes to the request at the head of the queue, or becomes free."""
        with self._lock:
            successor = None
            while self._queued and successor is None:
                successor = self._queued.popleft()
                if successor.state != "queued":
                    successor = None
            if successor is None:
                self._free.append(lane)
            else:
                successor.lane, successor.state = lane, "lead"
        if successor is not None:
            successor.done.set()

    def _send(self, batch: list[_Call], lane: Connection | None) -> None:
        commands = [command for call in batch for command in call.commands]
        if self._wait is not None:
            commands.append(self._wait)
        started = time.perf_counter()
        try:
            replies = self._on_cluster(commands) if lane is None else _on_connection(lane, commands)
            metrics.REDIS_ROUND_TRIPS.observe(time.perf_counter() - started)
            if self._wait is not None:
                confirmed = replies.pop()
                if isinstance(confirmed, Exception) or confirmed < self.replicas:
                    raise NotReplicated(f"{confirmed} of {self.replicas} replicas confirmed within "
                                        f"{self._wait[2]} ms")
            at = 0
            for call in batch:
                call.replies = replies[at:at + len(call.commands)]
                at += len(call.commands)
        except BaseException as exc:  # the round trip failed: every request in it gets the error
            for call in batch:
                call.error = exc if isinstance(exc, Exception) else redis.ConnectionError("round trip cut short")
            if not isinstance(exc, Exception):
                raise
        finally:
            for call in batch[1:]:
                call.done.set()

    def _on_cluster(self, commands: list[tuple]) -> list:
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return pipe.execute(raise_on_error=False)


def _on_connection(connection: Connection, commands: list[tuple]) -> list:
    """Write `commands` at once, read their replies; an error reply is its exception, as a pipeline gives it.

    A round trip cut short (timeout, lost connection, killed greenlet) would
    leave replies unread: redis-py then closes the connection, and the next
    round trip on this lane connects again, the way its class connects (a
    Sentinel-managed one asks the sentinels for the primary; writing alone
    would connect to the address it was made with).
    """
    connection.connect()  # nothing when connected
    connection.send_packed_command(connection.pack_commands(commands))
    replies = []
    for _ in commands:
        try:
            replies.append(connection.read_response())
        except redis.ResponseError as error:
            replies.append(error)
    return replies
