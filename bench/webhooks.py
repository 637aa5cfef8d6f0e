"""Webhooks' cost: joins and leaves per second with webhooks off and on (same run), deliveries per second,
and the queue under a steady 50 joins and leaves per second.

A local receiver (asyncio, in the load process) answers each POST `204` at once, or `503` while paused;
it counts, and does not verify (the tests verify with `standardwebhooks`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from .client import BenchError, Conn, Peer, build, call, connect_many

#: a Standard Webhooks secret for the bench's servers
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#: joins and leaves per second of the steady run (issue 20: the queue does not grow at this rate on one worker)
STEADY_RATE = 50
#: rooms of the steady run, a connection each
STEADY_ROOMS = 10


class Receiver:
    """A keep-alive HTTP/1.1 server on 127.0.0.1 that answers webhooks 204; while `held`, it answers
    nothing until `release` (within WEBHOOK_TIMEOUT), so the events behind pile up in their outboxes."""

    def __init__(self):
        self.delivered = 0
        self._answering = asyncio.Event()
        self._answering.set()
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hooks"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                await self._answering.wait()
                self.delivered += 1
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError, StopIteration):
            writer.close()

    def hold(self) -> None:
        self._answering.clear()

    def release(self) -> None:
        self._answering.set()

    async def wait_for(self, count: int, timeout: float) -> float:
        """Wait until `count` deliveries in all; when the last came (monotonic)."""
        deadline = time.monotonic() + timeout
        while self.delivered < count:
            if time.monotonic() > deadline:
                raise BenchError(f"webhooks: {self.delivered} of {count} delivered within {timeout:g} s")
            await asyncio.sleep(0.005)
        return time.monotonic()

    def close(self) -> None:
        if self.server:
            self.server.close()


@dataclasses.dataclass
class JoinsLeaves:
    per_second: float  # joins and leaves (each one request) per second
    pairs: int


async def joins_and_leaves(port: int, connections: int, seconds: float, tag: str) -> JoinsLeaves:
    """`connections` clients, each joining a fresh peer in a room of its own (beside one member who stays)
    and leaving it, back to back, for `seconds`: every join records room-less events (peer.joined), every
    leave peer.left."""
    conns: list[Conn] = await connect_many(port, connections)
    stayers = [Peer(f"wh-{tag}-{i}", "host") for i in range(connections)]
    for conn, peer in zip(conns, stayers, strict=True):
        peer.joined(await call(conn, peer.join_request(), 30, expect=(201,)))
    deadline, done = time.monotonic() + seconds, [0]

    async def loop(i: int, conn: Conn) -> None:
        n = 0
        while time.monotonic() < deadline:
            peer = Peer(f"wh-{tag}-{i}", f"p{n}")
            n += 1
            peer.joined(await call(conn, peer.join_request(), 30, expect=(201,)))
            await call(conn, build("DELETE", f"/rooms/{peer.room}/peers/{peer.id}", peer.token), 30, expect=(204,))
            done[0] += 1

    started = time.monotonic()
    await asyncio.gather(*(loop(i, conn) for i, conn in enumerate(conns)))
    elapsed = time.monotonic() - started
    for conn in conns:
        conn.close()
    return JoinsLeaves(2 * done[0] / elapsed, done[0])


@dataclasses.dataclass
class Steady:
    """The queue (events recorded by the run's requests and not yet at the receiver) at a steady rate."""

    rate: float  # joins and leaves per second, as sent
    seconds: float
    depth_start: int  # once the run's rooms are made and their events delivered
    depth_end: int  # when the last request is answered
    depth_most: int  # the most seen, read every 0.1 s

    @property
    def held(self) -> bool:
        """The queue did not grow: at the end it holds at most a second's events more than at the start."""
        return self.depth_end <= self.depth_start + self.rate


async def steady(port: int, receiver: Receiver, rate: float, seconds: float, tag: str) -> Steady:
    """STEADY_ROOMS connections, each joining and leaving peers of its room (beside one who stays) on a clock,
    `rate` joins and leaves per second in all, for `seconds`. Every join and leave records one event."""
    conns: list[Conn] = await connect_many(port, STEADY_ROOMS)
    before = receiver.delivered
    for i, conn in enumerate(conns):
        peer = Peer(f"wh-{tag}-{i}", "host")
        peer.joined(await call(conn, peer.join_request(), 30, expect=(201,)))
    recorded = [2 * STEADY_ROOMS]  # each room: room.started and the host's peer.joined
    await receiver.wait_for(before + recorded[0], 30)

    def depth() -> int:
        return before + recorded[0] - receiver.delivered

    start, most = depth(), [0]
    began = time.monotonic()

    async def room(i: int, conn: Conn) -> None:
        n = 0
        while (slot := began + (2 * n * STEADY_ROOMS + i) / rate) < began + seconds:
            peer = Peer(f"wh-{tag}-{i}", f"p{n}")
            await asyncio.sleep(max(0.0, slot - time.monotonic()))
            peer.joined(await call(conn, peer.join_request(), 30, expect=(201,)))
            recorded[0] += 1
            await asyncio.sleep(max(0.0, slot + STEADY_ROOMS / rate - time.monotonic()))
            await call(conn, build("DELETE", f"/rooms/{peer.room}/peers/{peer.id}", peer.token), 30, expect=(204,))
            recorded[0] += 1
            n += 1

    async def watch() -> None:
        while True:
            most[0] = max(most[0], depth())
            await asyncio.sleep(0.1)

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.gather(*(room(i, conn) for i, conn in enumerate(conns)))
    finally:
        watcher.cancel()
        for conn in conns:
            conn.close()
    elapsed = time.monotonic() - began
    return Steady((recorded[0] - 2 * STEADY_ROOMS) / elapsed, elapsed, start, depth(), max(most[0], depth()))


@dataclasses.dataclass
class Webhooks:
    off: JoinsLeaves  # webhooks off
    on: JoinsLeaves  # webhooks on, to the receiver, same connections and seconds
    caught_up: float  # seconds from the end of the "on" run until its every event was delivered
    per_second: float  # deliveries per second draining a backlog (the receiver held, then released)
    backlog: int
    steady: Steady  # STEADY_RATE joins and leaves per second, on the same server

    @property
    def cost(self) -> float:
        """The share of join/leave throughput webhooks cost."""
        return 1 - self.on.per_second / self.off.per_second


async def measure(start_server, connections: int, seconds: float, steady_seconds: float) -> Webhooks:
    """Off, then on (a server each, from `start_server(env)`, a context manager); then the drain rate; then
    the steady rate."""
    receiver = await Receiver().start()
    try:
        with start_server({}) as server:
            off = await joins_and_leaves(server.port, connections, seconds, "off")
        with start_server({"WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET}) as server:
            on = await joins_and_leaves(server.port, connections, seconds, "on")
            events = 2 * connections + 2 * on.pairs  # each room: room.started, the host's peer.joined; then pairs
            ended = time.monotonic()
            caught_up = (await receiver.wait_for(events, 120)) - ended
            receiver.hold()  # one attempt per room held; what is recorded meanwhile piles up
            more = await joins_and_leaves(server.port, connections, min(seconds, 3), "backlog")
            backlog = 2 * connections + 2 * more.pairs  # its rooms are new: their starts and hosts too
            released = time.monotonic()
            receiver.release()
            drained = await receiver.wait_for(events + backlog, 120)
            held = await steady(server.port, receiver, STEADY_RATE, steady_seconds, "steady")
            return Webhooks(off, on, caught_up, backlog / (drained - released), backlog, held)
    finally:
        receiver.close()
