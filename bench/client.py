"""A lean HTTP/1.1 client on asyncio: one Protocol per keep-alive connection, one request at a time.

A connection costs a socket, a transport and this small object, so 15,000 of
them fit in one process. Requests are prebuilt bytes; responses are parsed by
Content-Length (what gunicorn sends for this API's JSON) and stamped with the
`perf_counter` time their last byte arrived. A stream (protocol 1.2, Server-Sent
Events in chunked transfer encoding) is read as it comes: `Chunked` undoes the
framing, `SseReader` cuts the events, `Receiver` keeps one peer's stream open.
`Outbox` sends as static/signaling.js does under protocol 1.1: batched, one
request in flight per recipient.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import time
from collections.abc import Callable
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


class Event(NamedTuple):
    """One Server-Sent Event: its `data` lines joined, and the last event id set when it was dispatched."""

    id: str | None
    data: str


class SseReader:
    """Cuts Server-Sent Events out of a body that arrives in pieces split anywhere (HTML's
    "event stream interpretation": lines end in CR LF, LF or CR; a blank line dispatches)."""

    __slots__ = ("_line", "_data", "last_id", "retry_ms", "comments")

    def __init__(self) -> None:
        self._line = bytearray()  # the unfinished line
        self._data: list[str] = []
        self.last_id: str | None = None
        self.retry_ms: int | None = None
        self.comments = 0  # comment lines seen: the server's heartbeats

    def feed(self, data: bytes) -> list[Event]:
        """The events these bytes complete, in order."""
        buf = self._line
        buf += data
        out: list[Event] = []
        start = 0
        while True:
            cr, lf = buf.find(b"\r", start), buf.find(b"\n", start)
            end = lf if cr < 0 else cr if lf < 0 else min(cr, lf)
            if end < 0:
                break
            if buf[end] == 13:  # CR: with an LF after it, one line end; at the end, wait to see
                if end + 1 == len(buf):
                    break
                after = end + 2 if buf[end + 1] == 10 else end + 1
            else:
                after = end + 1
            self._line_done(bytes(buf[start:end]).decode(), out)
            start = after
        del buf[:start]
        return out

    def _line_done(self, line: str, out: list[Event]) -> None:
        if not line:
            if self._data:
                out.append(Event(self.last_id, "\n".join(self._data)))
                self._data = []
            return
        if line[0] == ":":
            self.comments += 1
            return
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)


class Chunked:
    """Undoes chunked transfer encoding (RFC 9112 7.1) of a body arriving in pieces split anywhere:
    `feed` returns the body's bytes so far; `done` once the last chunk (and trailers) are in, and
    `rest` then holds what came after them (the next response's bytes)."""

    __slots__ = ("_buf", "_left", "_state", "done", "rest")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0  # bytes of the current chunk's data still to come
        self._state = "size"  # size line, data, the CRLF after data, trailer lines
        self.done = False
        self.rest = b""

    def feed(self, data: bytes) -> bytes:
        buf = self._buf
        buf += data
        body = bytearray()
        while not self.done:
            if self._state == "data":
                take = min(self._left, len(buf))
                body += buf[:take]
                del buf[:take]
                self._left -= take
                if self._left:
                    break
                self._state = "crlf"
                continue
            if self._state == "crlf":
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise BenchError(f"chunked body: {bytes(buf[:40])!r} where a chunk's CRLF belongs")
                del buf[:2]
                self._state = "size"
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                break
            line = bytes(buf[:end])
            del buf[:end + 2]
            if self._state == "size":
                size = int(line.split(b";", 1)[0].strip(), 16)
                self._left, self._state = size, "data" if size else "trailer"
            elif not line:  # trailer: an empty line ends the body
                self.done, self.rest = True, bytes(buf)
                buf.clear()
        return bytes(body)


class Conn(asyncio.Protocol):
    """One keep-alive connection; `request` returns a future of the `Reply`, `stream` reads a stream."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.lost = False
        self.on_events: Callable[[list[Event], float], None] | None = None  # a stream's reader, set by `stream`
        self.chunked: Chunked | None = None  # the body of the stream being read
        self.sse: SseReader | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(BenchError(f"server closed the connection ({exc or 'EOF'})"))

    def data_received(self, data: bytes) -> None:
        if self.chunked is not None:
            self._streamed(data)
            return
        self.buf += data
        if self.waiter is not None:
            self._parse()

    def _streamed(self, data: bytes) -> None:
        """A piece of an open stream: its events to `on_events`; at the body's end, the stream's Reply."""
        at = time.perf_counter()
        try:
            events = self.sse.feed(self.chunked.feed(data))
        except (BenchError, ValueError) as exc:
            self._fail(BenchError(f"a stream broke its framing: {exc}"))
            return
        try:
            self.on_events(events, at)
        except BenchError as exc:  # e.g. an event out of order: the stream's reader fails with it
            self._fail(exc)
            return
        if self.chunked.done:
            self.buf += self.chunked.rest
            self.chunked = self.on_events = None
            waiter, self.waiter = self.waiter, None
            if not waiter.done():
                waiter.set_result(Reply(200, b"", at))

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

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
        elif b"\r\ntransfer-encoding: chunked" in head:
            if self.on_events is None or b"\r\ncontent-type: text/event-stream" not in head:
                self._fail(BenchError(f"a chunked answer that is not an awaited stream: {head[:200]!r}"))
                return
            rest = bytes(buf[end + 4:])
            del buf[:]
            self.chunked, self.sse = Chunked(), SseReader()
            self._streamed(rest)
            return
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
        self.on_events = None  # a stream request answered without a stream
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

    def stream(self, data: bytes, on_events: Callable[[list[Event], float], None]) -> asyncio.Future:
        """Write one prebuilt stream request. Once the server answers with a stream, `on_events(events, at)`
        gets the events each piece of it completes (maybe none: the first line, a heartbeat), stamped with
        the `perf_counter` time the piece arrived; the future gets a Reply(200, b"") when the stream ends
        cleanly, or the answer when the server refuses (a JSON error, or a poll's JSON from a server that
        does not stream)."""
        self.on_events = on_events
        return self.request(data)

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
    # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that comes as the future
    # completes, and a listener cancelled at the end of a run then polled on for ever (the bench hung)
    try:
        async with asyncio.timeout(timeout):
            return await future
    except TimeoutError:
        raise BenchError(f"no {what} within {timeout:g}s") from None


def build(method: str, path: str, token: str | None = None, body: bytes | None = None, key: str | None = None,
          last_event_id: int | None = None, accept: str | None = None) -> bytes:
    """The bytes of one request (`key`: an Idempotency-Key; `last_event_id`: a poll's cursor as a header)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if accept is not None:
        head += f"Accept: {accept}\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    if key is not None:
        head += f"Idempotency-Key: {key}\r\n"
    if last_event_id is not None:
        head += f"Last-Event-ID: {last_event_id}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


class Peer:
    """One member of one room, as the API sees it: id, token, cursor, and prebuilt requests.

    With `cursor_header` its polls carry the cursor as `Last-Event-ID` (protocol 1.1, as
    static/signaling.js polls), so every poll of the peer has the same URL.
    """

    __slots__ = ("room", "id", "token", "cursor", "cursor_header")

    def __init__(self, room: str, peer_id: str, cursor_header: bool = False):
        self.room, self.id, self.cursor_header = room, peer_id, cursor_header
        self.token: str | None = None
        self.cursor = 0

    def join_request(self) -> bytes:
        return build("POST", f"/rooms/{self.room}/peers", body=json.dumps({"peer_id": self.id}).encode())

    def joined(self, reply: Reply) -> None:
        self.token = reply.json()["token"]

    def poll_request(self, wait: float, limit: int = 100) -> bytes:
        """A poll from the cursor: acknowledges what came before it."""
        path = f"/rooms/{self.room}/peers/{self.id}/messages"
        if self.cursor_header:
            return build("GET", f"{path}?wait={wait:g}&limit={limit}", self.token, last_event_id=self.cursor)
        return build("GET", f"{path}?after={self.cursor}&wait={wait:g}&limit={limit}", self.token)

    def polled(self, reply: Reply) -> list[dict]:
        """Advance the cursor past a poll's reply; its envelopes."""
        answer = reply.json()
        messages = answer["messages"]
        if self.cursor_header and messages and messages[0]["seq"] <= self.cursor:
            raise BenchError(f"a poll with Last-Event-ID: {self.cursor} was answered seq {messages[0]['seq']}:"
                             " the server ignores the header (a protocol 1.0 server? 1.1 reads the cursor there)")
        self.cursor = answer["cursor"]
        return messages

    def stream_request(self) -> bytes:
        """A stream from the cursor (always as `Last-Event-ID`, as a 1.2 client reconnects): acknowledges
        what came before it."""
        return build("GET", f"/rooms/{self.room}/peers/{self.id}/messages", self.token,
                     last_event_id=self.cursor, accept="text/event-stream")

    def streamed(self, events: list[Event]) -> list[dict]:
        """Advance the cursor past a stream's events; their envelopes. Each must come after the last."""
        messages = []
        for event in events:
            message = json.loads(event.data)
            if message["seq"] <= self.cursor or event.id != str(message["seq"]):
                raise BenchError(f"a stream from Last-Event-ID {self.cursor} brought id {event.id}, seq"
                                 f" {message['seq']}: out of order or delivered twice")
            self.cursor = message["seq"]
            messages.append(message)
        return messages

    def send_request(self, to: str, body: bytes, key: str | None = None) -> bytes:
        return build("POST", f"/rooms/{self.room}/peers/{to}/messages", self.token, body, key)

    def broadcast_request(self, body: bytes, key: str | None = None) -> bytes:
        return build("POST", f"/rooms/{self.room}/messages", self.token, body, key)


def batch_body(items: list[bytes]) -> bytes:
    """A 1.1 batch send's body: `{"messages": [...]}` of prebuilt single-send bodies."""
    return b'{"messages":[' + b",".join(items) + b"]}"


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


def backoff(failures: int, reply: Reply) -> float:
    """Seconds to wait after the `failures`-th failure in a row (0, 1, ...), as static/signaling.js does:
    the server's Retry-After plus up to half again (at most 10 s), else 0.5 s doubling up to 10 s,
    with equal jitter."""
    if reply.retry_after is not None:
        return min(reply.retry_after * (1 + random.random() / 2), 10.0)
    step = min(10.0, 0.5 * 2 ** failures)
    return step / 2 + random.random() * step / 2


class Receiver:
    """One peer's streaming receive (protocol 1.2), as a 1.2 client keeps it: a stream open on one
    connection; after a clean end, at once another on the same connection with `Last-Event-ID` (the
    last id seen, which acknowledges everything up to it); after a 503, the same after a back-off (each
    counted in `failed`). `on_envelopes(envelopes, at)` gets each piece's envelopes, in order, each
    once. `run` goes on until cancelled; anything else (a refusal, a JSON answer from a server that
    does not stream, a closed connection) fails it.
    """

    __slots__ = ("conn", "peer", "on_envelopes", "failed", "opens", "open", "_ended_heartbeats", "_sse")

    def __init__(self, conn: Conn, peer: Peer, on_envelopes: Callable[[list[dict], float], None],
                 failed: collections.Counter):
        self.conn, self.peer, self.on_envelopes, self.failed = conn, peer, on_envelopes, failed
        self.opens = 0  # stream requests made
        self.open = False  # the current stream's first line has arrived and it has not ended
        self._ended_heartbeats = 0
        self._sse: SseReader | None = None  # the current stream's reader

    @property
    def heartbeats(self) -> int:
        """Comment lines read, over every stream so far."""
        return self._ended_heartbeats + (self._sse.comments if self._sse is not None else 0)

    def _events(self, events: list[Event], at: float) -> None:
        self.open, self._sse = True, self.conn.sse
        if events:
            self.on_envelopes(self.peer.streamed(events), at)

    async def run(self) -> None:
        errors = 0
        for _ in range(1_000_000):
            self.opens += 1
            try:
                reply = await self.conn.stream(self.peer.stream_request(), self._events)
            finally:
                self.open = False
                if self._sse is not None:
                    self._ended_heartbeats += self._sse.comments
                    self._sse = None
            if reply.status == 200 and not reply.body:
                errors = 0
                continue
            if reply.status == 200:
                raise BenchError("a stream request was answered with a poll's JSON: the server does not stream"
                                 " (a protocol 1.1 server?)")
            if reply.status != 503:
                raise BenchError(f"a stream was refused with HTTP {reply.status}: {reply.body[:300]!r}")
            self.failed["stream 503"] += 1
            await asyncio.sleep(backoff(errors, reply))
            errors += 1
        raise BenchError("a stream was opened a million times")


class Outbox:
    """Sends from one peer to one recipient as static/signaling.js does under protocol 1.1, and as
    peer-bench's project adapter does: one send request in flight; what is sent meanwhile waits and
    goes as one batch `{"messages": [...]}` of up to 100 when that request ends; a lone envelope goes
    as a plain send. As in JavaScript, a send to an idle outbox leaves at once (is written before
    `send` returns), so of several sends made together the first goes alone and the rest as one
    batch behind it. Each request has its own Idempotency-Key, kept through its retries (after a
    503 or a 429 mailbox_full: the back-off above, each counted in `failed`).

    `send` returns a future of the envelope's seq. `answered(reply, n)` is called for each request
    accepted with `n` envelopes; `on_error(exc)` once, when a request fails for good: every future
    still waiting gets that error, and so does every later `send`.
    """

    MAX_BATCH = 100

    def __init__(self, conn: Conn, peer: Peer, to: str, failed: collections.Counter,
                 answered: Callable[[Reply, int], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None):
        self.conn, self.peer, self.to, self.failed = conn, peer, to, failed
        self.answered, self.on_error = answered, on_error
        self.queue: list[tuple[bytes, asyncio.Future]] = []
        self.flushing: asyncio.Task | None = None
        self.error: BaseException | None = None
        self.requests = 0  # send requests made (retries not counted)

    def send(self, body: bytes) -> asyncio.Future:
        """Queue one single-send body (`{"type": ..., "data": ...}`); it goes out as soon as it can."""
        if self.error is not None:
            raise self.error
        future = asyncio.get_running_loop().create_future()
        self.queue.append((body, future))
        if self.flushing is None:
            self.flushing = asyncio.ensure_future(self._flush(self._next()))
        return future

    def _next(self) -> tuple[list[tuple[bytes, asyncio.Future]], bytes, asyncio.Future]:
        """Take the next batch off the queue and write its request now: (batch, request, its reply)."""
        batch, self.queue = self.queue[:self.MAX_BATCH], self.queue[self.MAX_BATCH:]
        bodies = [body for body, _ in batch]
        self.requests += 1
        request = self.peer.send_request(self.to, bodies[0] if len(batch) == 1 else batch_body(bodies),
                                         f"k{self.requests}")
        return batch, request, self.conn.request(request)

    async def _flush(self, first) -> None:
        batch, request, reply = first
        try:
            while True:
                answer = (await self._accepted(request, reply, len(batch))).json()
                seqs = answer["seqs"] if len(batch) > 1 else [answer["seq"]]
                for (_, future), seq in zip(batch, seqs, strict=True):
                    if not future.done():
                        future.set_result(seq)
                batch = []
                if not self.queue:
                    return
                batch, request, reply = self._next()
        except asyncio.CancelledError:
            for _, future in batch + self.queue:
                future.cancel()
            raise
        except Exception as exc:
            self.error = exc
            for _, future in batch + self.queue:
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # retrieved here: a caller need not await every send
            self.queue = []
            if self.on_error is not None:
                self.on_error(exc)
        finally:
            self.flushing = None

    async def _accepted(self, request: bytes, reply: asyncio.Future, envelopes: int) -> Reply:
        """The 202 of a request of `envelopes` already written, retrying it after a 503 or 429."""
        batched = envelopes > 1
        for attempt in range(50):
            answer: Reply = await within(reply, 30, "a reply")
            if answer.status == 202:
                if self.answered is not None:
                    self.answered(answer, envelopes)
                return answer
            if answer.status == 400 and batched:
                raise BenchError(f"the server does not take protocol 1.1 batch sends (a 1.0 server?): a batch"
                                 f" send was answered HTTP 400: {answer.body[:200]!r}")
            if answer.status not in (429, 503):
                raise BenchError(f"a send was answered HTTP {answer.status}: {answer.body[:300]!r}")
            self.failed[f"send {answer.status}"] += 1
            await asyncio.sleep(backoff(attempt, answer))
            reply = self.conn.request(request)
        raise BenchError(f"a send was refused fifty times in a row (last: HTTP {answer.status})")

    async def idle(self) -> None:
        """Wait until nothing is queued or in flight: a request's 202 may come after its envelope has
        reached the recipient's poll. Raises the error of a request that failed."""
        if self.flushing is not None:
            await self.flushing
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Stop sending: what is queued or in flight is cancelled."""
        if self.flushing is not None:
            self.flushing.cancel()
