"""A lean HTTP/1.1 client on asyncio: one Protocol per keep-alive connection, one request at a time.

A connection costs a socket, a transport and this small object, so 15,000 of
them fit in one process. Requests are prebuilt bytes; responses are parsed by
Content-Length only (what gunicorn sends for this API) and stamped with the
`perf_counter` time their last byte arrived.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import NamedTuple


class BenchError(RuntimeError):
    """The benchmark cannot go on: the server refused, closed or did not answer in time."""


class Reply(NamedTuple):
    status: int
    body: bytes
    at: float  # perf_counter() when the last byte arrived
    retry_after: float | None = None  # the Retry-After header, in seconds

    def json(self):
        return json.loads(self.body)


class Conn(asyncio.Protocol):
    """One keep-alive connection; `request` returns a future of the `Reply`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(BenchError(f"server closed the connection ({exc or 'EOF'})"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None:
            self._parse()

    def _parse(self) -> None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17:stop if stop >= 0 else len(head)])
        elif b"\r\ntransfer-encoding:" in head:
            raise BenchError("chunked responses are not supported by the bench client")
        else:
            length = 0
        total = end + 4 + length
        if len(buf) < total:
            return
        retry_after = None
        if b"\r\nretry-after:" in head:
            at = head.find(b"\r\nretry-after:")
            stop = head.find(b"\r\n", at + 2)
            retry_after = float(head[at + 14:stop if stop >= 0 else len(head)])
        reply = Reply(int(head[9:12]), bytes(buf[end + 4:total]), time.perf_counter(), retry_after)
        del buf[:total]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result(reply)

    def request(self, data: bytes) -> asyncio.Future:
        """Write one prebuilt request; the future gets its reply."""
        if self.lost:
            raise BenchError("request on a closed connection")
        if self.waiter is not None:
            raise BenchError("request on a busy connection")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        """Close; a request still waiting is cancelled, not failed."""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.cancel()
        if self.transport is not None:
            self.transport.close()


async def connect(port: int) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Conn, "127.0.0.1", port)
    return conn


async def connect_many(port: int, count: int, parallel: int = 200, timeout: float = 120) -> list[Conn]:
    """Open `count` connections, at most `parallel` handshakes at a time (the accept backlog is finite)."""
    gate = asyncio.Semaphore(parallel)

    async def one() -> Conn:
        async with gate:
            return await connect(port)

    return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), timeout)


async def call(conn: Conn, data: bytes, timeout: float = 30, expect: tuple[int, ...] = (200,)) -> Reply:
    """One request and its reply, which must come within `timeout` with a status in `expect`."""
    reply = await within(conn.request(data), timeout, "a reply")
    if reply.status not in expect:
        raise BenchError(f"HTTP {reply.status}: {reply.body[:300]!r} for {data[:120]!r}")
    return reply


async def within(future, timeout: float, what: str):
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError:
        raise BenchError(f"no {what} within {timeout:g}s") from None


def build(method: str, path: str, token: str | None = None, body: bytes | None = None, key: str | None = None) -> bytes:
    """The bytes of one request (`key`: an Idempotency-Key)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    if key is not None:
        head += f"Idempotency-Key: {key}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


class Peer:
    """One member of one room, as the API sees it: id, token, cursor, and prebuilt requests."""

    __slots__ = ("room", "id", "token", "cursor")

    def __init__(self, room: str, peer_id: str):
        self.room, self.id = room, peer_id
        self.token: str | None = None
        self.cursor = 0

    def join_request(self) -> bytes:
        return build("POST", f"/rooms/{self.room}/peers", body=json.dumps({"peer_id": self.id}).encode())

    def joined(self, reply: Reply) -> None:
        self.token = reply.json()["token"]

    def poll_request(self, wait: float, limit: int = 100) -> bytes:
        """A poll from the cursor: acknowledges what came before it."""
        path = f"/rooms/{self.room}/peers/{self.id}/messages?after={self.cursor}&wait={wait:g}&limit={limit}"
        return build("GET", path, self.token)

    def polled(self, reply: Reply) -> list[dict]:
        """Advance the cursor past a poll's reply; its envelopes."""
        answer = reply.json()
        self.cursor = answer["cursor"]
        return answer["messages"]

    def send_request(self, to: str, body: bytes, key: str | None = None) -> bytes:
        return build("POST", f"/rooms/{self.room}/peers/{to}/messages", self.token, body, key)

    def broadcast_request(self, body: bytes, key: str | None = None) -> bytes:
        return build("POST", f"/rooms/{self.room}/messages", self.token, body, key)


def envelope(kind: str, size: int) -> bytes:
    """A send body of exactly `size` bytes: `{"type": kind, "data": {"sdp": "xxx..."}}`."""
    bare = json.dumps({"type": kind, "data": {"sdp": ""}}, separators=(",", ":")).encode()
    if size < len(bare):
        raise ValueError(f"an envelope of type {kind!r} needs at least {len(bare)} bytes")
    return bare.replace(b'""', b'"' + b"x" * (size - len(bare)) + b'"')


async def each(conns: list[Conn], peers: list[Peer], step, what: str, parallel: int, timeout: float) -> None:
    """Run `step(conn, peer)` for each pair, at most `parallel` at a time: a burst of thousands of
    requests at once would only measure the server's queue (and its Redis pool's 2 s wait)."""
    gate = asyncio.Semaphore(parallel)

    async def one(conn: Conn, peer: Peer) -> None:
        async with gate:
            await step(conn, peer)

    await within(asyncio.gather(*(one(c, p) for c, p in zip(conns, peers, strict=True))), timeout, what)


async def join_all(conns: list[Conn], peers: list[Peer], parallel: int = 100, timeout: float = 300) -> None:
    """Join every peer over its own connection (conns[i] for peers[i])."""
    async def join(conn: Conn, peer: Peer) -> None:
        peer.joined(await call(conn, peer.join_request(), 30, expect=(201,)))

    await each(conns, peers, join, "joins", parallel, timeout)


async def drain_all(conns: list[Conn], peers: list[Peer], parallel: int = 100, timeout: float = 300) -> None:
    """Poll with wait=0 past the peer-joined events, so each cursor is set (the next poll acks them)."""
    async def drain(conn: Conn, peer: Peer) -> None:
        for _ in range(100):
            if len(peer.polled(await call(conn, peer.poll_request(0), 30))) < 100:
                return
        raise BenchError(f"mailbox of {peer.id} did not drain")

    await each(conns, peers, drain, "drains", parallel, timeout)
