"""Python peers' client for the signaling service: asyncio, and httpx its only dependency.

It mirrors the browser's `static/signaling.js`:

    from signaling.client import join

    async with await join("http://localhost:8000", "demo", peer_id="bot") as session:
        seq = await session.send("alice", "offer", {"sdp": "..."})
        async for envelope in session:      # {seq, from, type, data, ts}, server events included
            ...

The session receives by itself from `join` on. It holds one stream open
(protocol 1.2: `Accept: text/event-stream`, envelopes as Server-Sent Events,
a new stream at once when the server ends one) and falls back to long polls:
for good when the server answers JSON (it does not stream), for a while when
no byte of a stream comes in time (a proxy that buffers). Either way it carries
the cursor (as the `Last-Event-ID` header of protocol 1.1, and as `after=` for
1.0 servers), which is what acknowledges envelopes, drops envelopes it has
already delivered (by seq), backs off with jitter on network errors, 429 and
5xx (waiting at least the server's `Retry-After`), and joins afresh, with a
new ticket when tickets are on, when the server has forgotten it (`404
not_joined`). Sends to one peer go out one request at a time, in call
order; what is sent while a request is in flight waits and goes as one batch
(protocol 1.1, at most 100 envelopes) when it ends. Every request of a send
carries one Idempotency-Key for all its retries, so the recipient gets it once.
Leaving the `async with` block, or `await session.leave()`, finishes the sends
already made and leaves the room.

Protocol 1.2: `join(..., meta={"name": ...})` gives this peer its meta (with
tickets on, the ticket's `meta` claim does); `session.meta` is its own and
`session.members` maps each other member's id to its meta (None without),
kept up to date as `peer-joined` (its `data["meta"]`) and `peer-left` arrive.
When the application removes this peer or bans its id (server API), the
session ends for good, never rejoining: iterating it raises SignalingError
with `code` "removed" or "banned" (`FINAL_CODES`), whose message gives the reason.

This module must not import Flask, gevent or redis: a peer installs httpx alone.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import json
import logging
import math
import random
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from .event_stream import Event, EventStreamParser

__all__ = ["FINAL_CODES", "RECEIVE_MODES", "SignalingError", "Session", "StreamTiming", "join", "rtc_ice_servers"]

log = logging.getLogger(__name__)

#: Most envelopes in one batch send (PROTOCOL.md 1.1, "Batch send").
MAX_BATCH = 100

#: Refusals that end a session for good (1.2): the application removed this peer, or banned its id from the room.
FINAL_CODES = ("removed", "banned")

#: How a session may receive: stream and fall back to polls, or only one of the two.
RECEIVE_MODES = ("auto", "stream", "poll")


@dataclasses.dataclass(frozen=True)
class StreamTiming:
    """Seconds that rule a stream: the server's STREAM_HEARTBEAT, the grace added to it before a silent
    stream counts as dead, how long a stream may take to show its first byte before the session polls
    instead (receive="auto" only), and how long it then polls before it tries a stream again."""

    heartbeat: float = 15.0
    grace: float = 10.0
    first_byte: float = 5.0
    poll_for: float = 300.0


class SignalingError(Exception):
    """An HTTP or network failure: `status` (0 for the network), the server's `code`, its `retry_after`."""

    def __init__(self, message: str, *, status: int = 0, code: str = "network_error",
                 retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after

    @property
    def retriable(self) -> bool:
        """Worth trying again later: the network, a 429 (it says when) or the server's fault."""
        return self.status == 0 or self.status == 429 or self.status >= 500

    @classmethod
    def of(cls, response: httpx.Response) -> SignalingError:
        try:
            error = response.json()["error"]
            message, code = str(error["message"]), str(error["code"])
        except (ValueError, KeyError, TypeError):
            message, code = f"HTTP {response.status_code}", f"http_{response.status_code}"
        try:
            retry_after = float(response.headers["Retry-After"])
        except (KeyError, ValueError):
            retry_after = None
        return cls(message, status=response.status_code, code=code, retry_after=retry_after)


TicketSource = Callable[[], "str | Awaitable[str]"]


async def join(base_url: str, room: str, *, peer_id: str | None = None, token: str | None = None,
               ticket: str | None = None, get_ticket: TicketSource | None = None,
               http: httpx.AsyncClient | None = None, backoff: tuple[float, float] = (0.5, 10.0),
               send_retries: int = 5, receive: str = "auto", stream_timing: StreamTiming = StreamTiming(),
               on_receive_mode: Callable[[str, str], None] | None = None, meta: dict | None = None,
               last_seq: int = 0) -> Session:
    """Join `room` and start receiving; the Session returned is also an async context manager.

    `meta` is this peer's meta (a JSON object of at most 2,048 bytes, such as
    `{"name": "Bot"}`), which the others see; with tickets on, the server
    takes it from the ticket instead.

    `peer_id` names this peer (else the server picks one); `token` is an earlier
    session's, to resume it, and `last_seq` that session's `session.last_seq`,
    so the resume is not handed again what the earlier session already saw (a
    stream acknowledges only when it reconnects). With join tickets on, pass
    the application's `ticket`, or `get_ticket` (a function, plain or async,
    returning a fresh ticket) which is called for every fresh join, a rejoin
    after the server forgot this peer included. `http` is an httpx.AsyncClient to use (the
    session makes its own otherwise); `backoff` is (base, max) in seconds;
    a send is tried at most `send_retries` + 1 times. `receive` is "auto"
    (stream, and fall back to polls), "stream" (never poll) or "poll" (never
    stream); `on_receive_mode(mode, reason)` is called whenever
    `session.receive_mode` changes.

    Raises SignalingError when the join is refused (409 peer_id_taken, 401
    ticket_required, 403 banned, 400 bad_meta, ...); a 429 or 5xx is waited
    out and tried again, up to `send_retries` times.
    """
    if receive not in RECEIVE_MODES:
        raise ValueError(f"receive must be one of {', '.join(RECEIVE_MODES)}, not {receive!r}")
    session = Session(base_url, room, peer_id=peer_id, token=token, ticket=ticket, get_ticket=get_ticket,
                      http=http, backoff=backoff, send_retries=send_retries, receive=receive,
                      stream_timing=stream_timing, on_receive_mode=on_receive_mode, meta=meta,
                      last_seq=last_seq)
    fresh = token is None  # with a token, a resume, which needs no ticket
    try:
        for attempt in range(send_retries + 1):
            try:
                await session._join(fresh=fresh)
                break
            except SignalingError as error:
                if error.code == "ticket_required" and not fresh and get_ticket is not None:
                    fresh = True  # the token's peer is gone: this is a fresh join after all
                    continue
                if not error.retriable or attempt == send_retries:  # 401 bad_ticket, 409 peer_id_taken, ...
                    raise
                await asyncio.sleep(session._retry_delay(error, attempt))
    except BaseException:
        await session._close_http()
        raise
    session._start()
    return session


@dataclasses.dataclass
class _Outgoing:
    """One envelope waiting to go to one peer, and the future its send() awaits."""

    type: str
    data: Any
    seq: asyncio.Future

    @property
    def body(self) -> dict:
        return {"type": self.type, "data": self.data}


class Session:
    """One member of one room; `async for envelope in session` reads its mailbox."""

    def __init__(self, base_url: str, room: str, *, peer_id: str | None, token: str | None, ticket: str | None,
                 get_ticket: TicketSource | None, http: httpx.AsyncClient | None,
                 backoff: tuple[float, float], send_retries: int, receive: str = "auto",
                 stream_timing: StreamTiming = StreamTiming(),
                 on_receive_mode: Callable[[str, str], None] | None = None, meta: dict | None = None,
                 last_seq: int = 0):
        self.base_url = base_url.rstrip("/")
        self.room = room
        self.peer_id = peer_id
        self.token = token
        #: The other members, kept up to date by the receive loop as peer-joined and peer-left arrive.
        self.peers: set[str] = set()
        #: The other members' meta by peer id (None for one without), kept up to date with `peers` (1.2).
        self.members: dict[str, Any] = {}
        #: This peer's own meta, as the server keeps it (None without).
        self.meta: Any = meta
        #: The join's `ice_servers`, as RTCConfiguration.iceServers (see rtc_ice_servers for aiortc).
        self.ice_servers: list[dict] = []
        #: True when the join resumed a live member (200), False when it made a new one (201).
        self.resumed = False
        #: "connected", "reconnecting", "rejoining" or "closed".
        self.state = "connecting"
        #: The error that closed the session, if one did.
        self.error: SignalingError | None = None
        #: "stream" or "poll": how envelopes arrive now; None until the first stream opened or poll went out.
        self.receive_mode: str | None = None
        self._ticket = ticket
        self._get_ticket = get_ticket
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(30.0))
        self._backoff = backoff
        self._send_retries = send_retries
        self._poll_wait = 25.0
        self._receive = receive
        self._stream_timing = stream_timing
        self._on_receive_mode = on_receive_mode
        # Polls, not streams, until this time.monotonic(), for `_poll_reason`.
        self._poll_until = math.inf if receive == "poll" else 0.0
        self._poll_reason = "receive-option"
        self._cursor = 0
        self._last_seq = 0
        self._resume_after = last_seq  # an earlier session's last seq, for the first join's resume
        self._batches = True  # until a server shows it takes no batches (protocol 1.0)
        self._inbox: asyncio.Queue[dict | None] = asyncio.Queue()
        self._outboxes: dict[str, collections.deque[_Outgoing]] = {}
        self._senders: dict[str, asyncio.Task] = {}
        self._poller: asyncio.Task | None = None
        self._closing = False  # no new sends, no more polls
        self._left = False

    # --- the public API -----------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The seq of the last envelope handed out: keep it with the token, and pass both to `join` to resume."""
        return self._last_seq

    async def send(self, to: str, type: str, data: Any = None) -> int:
        """Send one envelope to peer `to`; returns its seq in `to`'s mailbox, raises SignalingError.

        Sends to one peer arrive in the order they were made.
        """
        if self._closing:
            raise SignalingError("session is closed", code="closed")
        outgoing = _Outgoing(type, data, asyncio.get_running_loop().create_future())
        self._outboxes.setdefault(to, collections.deque()).append(outgoing)
        if to not in self._senders:
            self._senders[to] = asyncio.create_task(self._send_queued(to))
        return await outgoing.seq

    async def broadcast(self, type: str, data: Any = None) -> dict:
        """Send one envelope to every other member: returns `{"delivered_to": [...], "mailbox_full": [...]}`."""
        if self._closing:
            raise SignalingError("session is closed", code="closed")
        return await self._post(f"/rooms/{_q(self.room)}/messages", {"type": type, "data": data})

    async def leave(self) -> None:
        """Finish the sends already made, stop receiving and leave the room; safe to call twice.

        The server is told once; if it cannot be reached, it drops this peer after peer_ttl anyway.
        """
        if self._left:
            return
        self._left = self._closing = True
        if self._poller:
            self._poller.cancel()
        await asyncio.gather(*self._senders.values(), return_exceptions=True)
        if self.error is not None and self.error.code in FINAL_CODES:  # removed: nothing left to leave
            self._close()
            await self._close_http()
            return
        try:
            response = await self._http.delete(self._url(f"/rooms/{_q(self.room)}/peers/{_q(self.peer_id)}"),
                                               headers=self._auth())
            if response.status_code != 204:
                log.warning("leave: %s", SignalingError.of(response))
        except httpx.HTTPError as error:
            log.warning("leave: the server could not be reached: %s", error)
        self._close()
        await self._close_http()

    def __aiter__(self) -> AsyncIterator[dict]:
        return self._envelopes()

    async def _envelopes(self) -> AsyncIterator[dict]:
        """Every envelope in mailbox order, until the session closes; a fatal error is raised here."""
        while True:
            envelope = await self._inbox.get()
            if envelope is None:
                self._inbox.put_nowait(None)  # every other reader ends too
                if self.error:
                    raise self.error
                return
            yield envelope

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.leave()

    # --- joining and receiving ----------------------------------------------

    async def _join(self, fresh: bool) -> None:
        """POST the join: a resume when this session has a live token, else a fresh join with a ticket."""
        body: dict[str, Any] = {} if self.peer_id is None else {"peer_id": self.peer_id}
        if self.meta is not None:
            body["meta"] = self.meta
        ticket = await self._fresh_ticket() if fresh else self._ticket
        if ticket is not None:
            body["ticket"] = ticket
        headers = self._auth() if self.token else {}
        response = await self._request("POST", f"/rooms/{_q(self.room)}/peers", json=body, headers=headers)
        if response.status_code not in (200, 201):
            raise SignalingError.of(response)
        joined = response.json()
        created = response.status_code == 201
        self.peer_id, self.token = joined["peer_id"], joined["token"]
        self.ice_servers = joined.get("ice_servers") or []
        self._poll_wait = float(joined.get("poll_wait", self._poll_wait))
        self._cursor = int(joined.get("cursor", 0))
        # A new mailbox numbers from 1 again; a resumed one hands out again what was not acknowledged, less what
        # an earlier session saw (`last_seq`): the next request acknowledges that.
        if created:
            self._last_seq = 0
        elif self._resume_after > self._cursor:
            self._cursor = self._last_seq = self._resume_after
        self._resume_after = 0
        self.resumed = not created
        self.meta = joined.get("meta")
        listed = joined.get("members")  # 1.2; a 1.1 server lists ids only
        self.members = ({m["peer_id"]: m.get("meta") for m in listed} if isinstance(listed, list)
                        else dict.fromkeys(joined.get("peers") or []))
        self._set_peers(joined.get("peers") or [], announce=self._poller is not None, fresh=created)

    async def _fresh_ticket(self) -> str | None:
        if self._get_ticket is None:
            return self._ticket
        ticket = self._get_ticket()
        if inspect.isawaitable(ticket):
            ticket = await ticket
        self._ticket = ticket
        return ticket

    def _set_peers(self, ids: list[str], announce: bool, fresh: bool) -> None:
        """Make `peers` equal `ids`; on a rejoin, tell the reader who went and who is there."""
        now = set(ids)
        if announce:
            for gone in sorted(self.peers - now if not fresh else self.peers):
                self._inbox.put_nowait(_event("peer-left", gone, {"reason": "rejoined"}))
            for new in sorted(now - self.peers if not fresh else now):
                self._inbox.put_nowait(_event("peer-joined", new, None))
        self.peers = now

    def _start(self) -> None:
        self.state = "connected"
        self._poller = asyncio.create_task(self._receive_until_closed())

    async def _receive_until_closed(self) -> None:
        """Stream or poll, one request after another, until the session closes.

        Both kinds of request share the handling of their answers: an error status, a poll's JSON,
        a network failure; a stream that ended is followed by the next one at once.
        """
        failures = 0

        def opened() -> None:
            nonlocal failures
            failures = 0

        try:
            while not self._closing:
                streaming = time.monotonic() >= self._poll_until
                try:
                    response = await (self._stream_once(opened) if streaming else self._poll_once())
                except SignalingError as error:
                    failures = await self._retry_later(error, failures)
                    continue
                if response in ("ended", "silent"):
                    continue  # the next stream's cursor acknowledges what this one carried
                if response == "no-first-byte":
                    self._poll_for(self._stream_timing.poll_for, "no-first-byte")
                    continue
                assert isinstance(response, httpx.Response)
                if response.status_code == 200:
                    try:
                        body = response.json()
                        messages, cursor = body["messages"], body.get("cursor")
                    except (ValueError, KeyError, TypeError):
                        malformed = SignalingError("malformed poll answer", status=200, code="malformed_answer")
                        failures = await self._retry_later(malformed, failures)
                        continue
                    if streaming and self._receive == "auto":
                        # A server that does not stream (protocol 1.1) answers a stream's request as a poll.
                        self._poll_for(math.inf, "server-sends-json")
                    self.state = "connected"
                    failures = 0
                    self._deliver(messages, cursor)
                    continue
                error = SignalingError.of(response)
                if error.code == "not_joined":
                    failures = await self._rejoin(failures)
                elif error.code == "bad_cursor":
                    # The mailbox started over without this session noticing: read it from the start.
                    self._cursor = self._last_seq = 0
                elif error.retriable:
                    failures = await self._retry_later(error, failures)
                else:
                    self._fail(error)
        except asyncio.CancelledError:
            pass
        except SignalingError as error:
            self._fail(error)

    def _poll_for(self, seconds: float, reason: str) -> None:
        """Receive by polls from now on, for `seconds` (math.inf: for good), saying why."""
        self._poll_until = time.monotonic() + seconds
        self._poll_reason = reason
        self._set_receive_mode("poll", reason)

    async def _poll_once(self) -> httpx.Response:
        self._set_receive_mode("poll", self._poll_reason)
        return await self._request("GET", self._mailbox(), params=self._receive_params(),
                                   headers=self._receive_headers(), timeout=self._poll_wait + 10)

    async def _stream_once(self, opened: Callable[[], None]) -> httpx.Response | str:
        """One stream: deliver its envelopes as they come, and return how it ended.

        "ended" (by the server), "silent" (no byte for the heartbeat plus the grace: cut),
        "no-first-byte" (none within `first_byte`: cut, with receive="auto"), or the response itself
        (read) when it is no stream: an error, or a poll's JSON. A network failure raises
        SignalingError. `opened` is called at its first byte.
        """
        timing = self._stream_timing
        silence = timing.heartbeat + timing.grace
        auto = self._receive == "auto"
        stalled = "no-first-byte" if auto else "silent"
        loop = asyncio.get_running_loop()
        headers = {**self._receive_headers(), "Accept": "text/event-stream"}
        try:
            async with asyncio.timeout(timing.first_byte if auto else silence) as watchdog:
                # httpx's own read timeout only backs the watchdog up: it is the longer of the two.
                async with self._http.stream("GET", self._url(self._mailbox()), params=self._receive_params(),
                                             headers=headers, timeout=silence + 5) as response:
                    if response.status_code != 200 or not _is_event_stream(response):
                        await response.aread()
                        return response
                    parser = EventStreamParser()
                    is_open = False
                    async for chunk in response.aiter_bytes():
                        if not chunk:
                            continue
                        watchdog.reschedule(loop.time() + silence)
                        stalled = "silent"
                        if not is_open:
                            is_open = True
                            opened()
                            self.state = "connected"
                            self._set_receive_mode("stream", "stream-open")
                        self._deliver_events(parser.feed(chunk), parser.last_event_id)
                    if not is_open:
                        raise SignalingError("the stream ended before its first byte", status=200,
                                             code="malformed_answer")
                    return "ended"  # an event the end cut off is not dispatched: the parser still holds it
        except TimeoutError:
            return stalled
        except httpx.HTTPError as error:
            raise SignalingError(f"network error: {error!r}") from error

    def _deliver_events(self, events: list[Event], last_event_id: str) -> None:
        """Deliver the envelopes of a stream's events; the last dispatched event's id is the cursor."""
        envelopes = []
        for event in events:
            if event.type != "message":
                continue
            try:
                envelopes.append(json.loads(event.data))
            except ValueError:
                raise SignalingError("malformed stream event", status=200, code="malformed_answer") from None
        if envelopes:
            self._deliver(envelopes, int(last_event_id) if last_event_id.isascii() and last_event_id.isdigit()
                          else None)

    def _mailbox(self) -> str:
        return f"/rooms/{_q(self.room)}/peers/{_q(self.peer_id)}/messages"

    def _receive_params(self) -> dict:
        # Both forms of the cursor: a 1.1 server reads the header (equal values agree), a 1.0 one `after`.
        return {"after": self._cursor, "wait": _seconds(self._poll_wait)}

    def _receive_headers(self) -> dict[str, str]:
        return {**self._auth(), "Last-Event-ID": str(self._cursor)}

    def _set_receive_mode(self, mode: str, reason: str) -> None:
        if mode == self.receive_mode:
            return
        self.receive_mode = mode
        log.info("receiving by %s (%s)", mode, reason)
        if self._on_receive_mode is not None:
            self._on_receive_mode(mode, reason)

    def _deliver(self, messages: list[dict], cursor: int | None) -> None:
        for envelope in messages:
            if envelope["seq"] <= self._last_seq:
                continue  # already delivered: its poll answer was lost, or repeated
            self._last_seq = envelope["seq"]
            if envelope["type"] == "peer-joined":
                self.peers.add(envelope["from"])
                data = envelope.get("data")
                self.members[envelope["from"]] = data.get("meta") if isinstance(data, dict) else None
            elif envelope["type"] == "peer-left":
                self.peers.discard(envelope["from"])
                self.members.pop(envelope["from"], None)
            self._inbox.put_nowait(envelope)
        self._cursor = cursor if isinstance(cursor, int) else self._last_seq

    async def _rejoin(self, failures: int) -> int:
        """Join again under the same id: the server forgot this peer, so it is a fresh join (with a ticket)."""
        while not self._closing:
            self.state = "rejoining"
            try:
                await self._join(fresh=True)
                self.state = "connected"
                return 0
            except SignalingError as error:
                if not error.retriable:  # 401 ticket_required or bad_ticket, 409 peer_id_taken, 403 banned, ...
                    raise
                failures = await self._retry_later(error, failures)
        return failures

    async def _retry_later(self, error: SignalingError, failures: int) -> int:
        """Log a passing failure and sleep the backoff for the `failures`-th one in a row."""
        delay = self._retry_delay(error, failures)
        log.info("%s (%s); trying again in %.1f s", error, error.code, delay)
        self.state = "reconnecting"
        await asyncio.sleep(delay)
        return failures + 1

    def _retry_delay(self, error: SignalingError, failures: int) -> float:
        """The server's Retry-After plus up to half again, so turned-away clients do not return at once;
        else exponential backoff with equal jitter."""
        if error.retry_after is not None:
            return error.retry_after * (1 + random.random() / 2)
        base, cap = self._backoff
        step = min(cap, base * 2**failures)
        return step / 2 + random.random() * step / 2

    def _fail(self, error: SignalingError) -> None:
        log.error("session closed: %s (%s)", error, error.code)
        self.error = error
        self._closing = True
        self._close()

    def _close(self) -> None:
        if self.state != "closed":
            self.state = "closed"
            self._inbox.put_nowait(None)

    async def _close_http(self) -> None:
        if self._own_http:
            await self._http.aclose()

    # --- sending --------------------------------------------------------------

    async def _send_queued(self, to: str) -> None:
        """The one sender of peer `to`: sends what is queued, a batch per request, until nothing is."""
        outbox = self._outboxes[to]
        try:
            while outbox:
                batch = [outbox.popleft() for _ in range(min(len(outbox), MAX_BATCH))]
                await self._send_batch(to, batch)
        finally:
            del self._senders[to]
            del self._outboxes[to]

    async def _send_batch(self, to: str, batch: list[_Outgoing]) -> None:
        path = f"/rooms/{_q(self.room)}/peers/{_q(to)}/messages"
        if len(batch) > 1 and self._batches:
            try:
                seqs = (await self._post(path, {"messages": [outgoing.body for outgoing in batch]}))["seqs"]
            except SignalingError as error:
                if error.status == 400 and not str(error).startswith("messages["):
                    self._batches = False  # a 1.0 server: it reads a batch as one envelope without a type
                elif error.status not in (400, 413):
                    for outgoing in batch:
                        _resolve(outgoing, error=error)
                    return
            else:
                for outgoing, seq in zip(batch, seqs, strict=True):
                    _resolve(outgoing, seq)
                return
        # One by one: a single envelope, a server without batches, or a refused batch (a bad item,
        # or too large), so that only the bad envelope's send fails.
        for outgoing in batch:
            try:
                _resolve(outgoing, (await self._post(path, outgoing.body))["seq"])
            except SignalingError as error:
                _resolve(outgoing, error=error)

    async def _post(self, path: str, body: dict) -> dict:
        """POST a send with one Idempotency-Key for all its attempts; retried on the network, 429 and 5xx."""
        key = uuid.uuid4().hex
        for attempt in range(self._send_retries + 1):
            headers = {**self._auth(), "Idempotency-Key": key}
            try:
                response = await self._request("POST", path, json=body, headers=headers)
                if response.status_code == 202:
                    return response.json()
                error = SignalingError.of(response)
            except SignalingError as network_error:
                error = network_error
            if not error.retriable or attempt == self._send_retries:
                raise error
            await asyncio.sleep(self._retry_delay(error, attempt))
        raise AssertionError("unreachable")

    # --- HTTP -----------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One HTTP request; a network failure or timeout becomes SignalingError(status=0)."""
        try:
            return await self._http.request(method, self._url(path), **kwargs)
        except httpx.HTTPError as error:
            raise SignalingError(f"network error: {error!r}") from error

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _url(self, path: str) -> str:
        return self.base_url + path


def rtc_ice_servers(ice_servers: list[dict]) -> list:
    """`session.ice_servers` as aiortc's `RTCIceServer` list, for `RTCConfiguration(iceServers=...)`.

    aiortc is imported here, not above: a peer without media does not need it.
    """
    from aiortc import RTCIceServer

    return [RTCIceServer(urls=entry["urls"], username=entry.get("username"), credential=entry.get("credential"))
            for entry in ice_servers]


def _event(kind: str, peer: str, data: Any) -> dict:
    """An envelope this client makes itself (after a rejoin); it has no seq."""
    return {"seq": None, "from": peer, "type": kind, "data": data, "ts": time.time()}


def _resolve(outgoing: _Outgoing, seq: int | None = None, error: SignalingError | None = None) -> None:
    if outgoing.seq.done():  # its send() was cancelled
        return
    if error is not None:
        outgoing.seq.set_exception(error)
    else:
        outgoing.seq.set_result(seq)


def _is_event_stream(response: httpx.Response) -> bool:
    """Whether an answer is a stream (protocol 1.2) rather than JSON."""
    return response.headers.get("Content-Type", "").lower().startswith("text/event-stream")


def _seconds(value: float) -> float | int:
    return int(value) if value == int(value) else value


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")
