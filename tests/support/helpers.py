"""A small client for the API, over Flask's test client or real HTTP, so tests read like usage."""

from __future__ import annotations

import dataclasses
import http.client
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

_NO_BODY = object()


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    raw: bytes

    @property
    def body(self) -> Any:
        return json.loads(self.raw) if self.raw else None

    @property
    def code(self) -> str | None:
        """The error code of an error reply."""
        body = self.body
        return body["error"]["code"] if isinstance(body, dict) and "error" in body else None


@dataclasses.dataclass
class Events(Reply):
    """A GET that asked for a stream (1.2): an error or a poll's JSON answer as a `Reply`, or its events as they come.

    `take` reads the next item, `envelopes`, `until_quiet` and `until_end` read
    on; each waits at most `timeout` seconds (over Flask, an item arrives at
    least every STREAM_HEARTBEAT: give the app a short one). Close it when done.
    """

    chunks: Iterator[bytes] = iter(())
    close: Callable[[], None] = lambda: None
    first: bytes = b""  # the first chunk written
    items: list[tuple[str, Any]] = dataclasses.field(default_factory=list)  # read, not taken yet
    ended: bool = False  # the server ended it
    _text: str = ""

    @property
    def streaming(self) -> bool:
        return self.headers.get("content-type", "").startswith("text/event-stream")

    def _pull(self) -> bool:
        """Read one more chunk and parse its complete events; False when the stream has ended."""
        chunk = next(self.chunks, None)
        if chunk is None:
            self.ended = True
            return False
        self.first = self.first or chunk
        self._text += chunk.decode()
        while "\n\n" in self._text:
            block, self._text = self._text.split("\n\n", 1)
            self.items.append(_sse_item(block))
        return True

    def take(self, timeout: float = 5) -> tuple[str, Any] | None:
        """The next ("envelope", dict), ("comment", text) or ("retry", ms); None once the stream ended."""
        deadline = time.monotonic() + timeout
        while not self.items:
            if not self.streaming or self.ended or not self._pull():
                return None
            assert time.monotonic() < deadline, f"nothing on the stream within {timeout} s"
        return self.items.pop(0)

    def envelopes(self, count: int, timeout: float = 5) -> list[dict]:
        """The next `count` envelopes (heartbeats skipped); fails if the stream ends or stalls first."""
        found, deadline = [], time.monotonic() + timeout
        while len(found) < count:
            item = self.take(max(deadline - time.monotonic(), 0.01))
            assert item is not None, f"the stream ended after {len(found)} of {count} envelopes"
            if item[0] == "envelope":
                found.append(item[1])
        return found

    def until_quiet(self, timeout: float = 5) -> list[dict]:
        """Every envelope up to the next heartbeat (nothing more was there to write) or the end."""
        return self._read_until({"comment"}, timeout)

    def until_end(self, timeout: float = 5) -> list[dict]:
        """Every envelope up to the end of the stream; fails if it does not end within `timeout`."""
        found = self._read_until(set(), timeout)
        assert self.ended, f"the stream did not end within {timeout} s"
        return found

    def _read_until(self, kinds: set[str], timeout: float) -> list[dict]:
        found, deadline = [], time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"no {kinds or 'end'} on the stream within {timeout} s"
            item = self.take(max(deadline - time.monotonic(), 0.01))
            if item is None or item[0] in kinds:
                return found
            if item[0] == "envelope":
                found.append(item[1])


def _sse_item(block: str) -> tuple[str, Any]:
    """One block of a stream, as the server writes them: an event (`id:` = its seq), a comment, or `retry:`."""
    lines = block.split("\n")
    if all(line.startswith(":") for line in lines):
        return "comment", "\n".join(line[1:] for line in lines)
    fields = dict(line.split(": ", 1) for line in lines)
    if set(fields) == {"retry"}:
        return "retry", int(fields["retry"])
    assert set(fields) == {"id", "data"}, block
    envelope = json.loads(fields["data"])
    assert int(fields["id"]) == envelope["seq"], block
    return "envelope", envelope


class Api:
    """Requests by method and path; `call(method, path, headers, body) -> Reply` does the transport,
    `open_stream(path, headers) -> Events` a GET read as it comes."""

    def __init__(self, call, open_stream=None):
        self._call = call
        self._open_stream = open_stream

    @classmethod
    def over_flask(cls, client, remote_addr: str = "127.0.0.1") -> Api:
        def call(method, path, headers, body):
            r = client.open(path, method=method, headers=headers, data=body,
                            environ_base={"REMOTE_ADDR": remote_addr})
            return Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.get_data())

        def open_stream(path, headers):
            r = client.open(path, method="GET", headers=headers, buffered=False,
                            environ_base={"REMOTE_ADDR": remote_addr})
            events = Events(r.status_code, {k.lower(): v for k, v in r.headers.items()}, b"",
                            chunks=iter(r.response), close=r.close)
            if not events.streaming:
                events.raw, events.ended = b"".join(events.chunks), True
                r.close()
            return events

        return cls(call, open_stream)

    @classmethod
    def over_http(cls, base_url: str, timeout: float = 40, context: ssl.SSLContext | None = None,
                  source: str | None = None) -> Api:
        """Plain HTTP, or HTTPS with `context` for an https URL; from the local address `source` if given."""
        parts = urllib.parse.urlsplit(base_url)
        options = {"timeout": timeout, "source_address": (source, 0) if source else None}

        def connect():
            if parts.scheme == "https":
                return http.client.HTTPSConnection(parts.hostname, parts.port, context=context, **options)
            return http.client.HTTPConnection(parts.hostname, parts.port, **options)

        def call(method, path, headers, body):
            conn = connect()
            try:
                conn.request(method, path, body=body, headers=headers)
                r = conn.getresponse()
                return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
            finally:
                conn.close()

        def open_stream(path, headers):
            conn = connect()
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            events = Events(r.status, {k.lower(): v for k, v in r.getheaders()}, b"",
                            chunks=iter(lambda: r.read1(65536), b""), close=conn.close)
            if not events.streaming:
                events.raw, events.ended = r.read(), True
                conn.close()
            return events

        return cls(call, open_stream)

    def request(self, method: str, path: str, json_body: Any = _NO_BODY, *, data: bytes | str | None = None,
                token: str | None = None, headers: dict[str, str] | None = None) -> Reply:
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if json_body is not _NO_BODY:
            data = json.dumps(json_body)
            headers.setdefault("Content-Type", "application/json")
        if isinstance(data, str):
            data = data.encode()
        return self._call(method, path, headers, data)

    def stream(self, path: str, token: str | None = None, headers: dict[str, str] | None = None,
               accept: str = "text/event-stream") -> Events:
        """GET `path` asking for a stream; read it as it comes (see `Events`)."""
        headers = {"Accept": accept, **(headers or {})}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self._open_stream(path, headers)

    def join(self, room: str, peer: str | None = None, token: str | None = None, ticket: str | None = None) -> Reply:
        body = {} if peer is None else {"peer_id": peer}
        if ticket is not None:
            body["ticket"] = ticket
        return self.request("POST", f"/rooms/{room}/peers", body, token=token)

    def peer(self, room: str, peer: str | None = None, ticket: str | None = None) -> Peer:
        """Join and return the member, failing the test unless the join succeeds."""
        reply = self.join(room, peer, ticket=ticket)
        assert reply.status == 201, (reply.status, reply.raw)
        return Peer(self, room, reply.body["peer_id"], reply.body["token"])


@dataclasses.dataclass
class Peer:
    """One joined member: sends, polls (tracking its cursor) and leaves."""

    api: Api
    room: str
    id: str
    token: str
    cursor: int = 0

    def request(self, method: str, path: str, json_body: Any = _NO_BODY, **kwargs) -> Reply:
        kwargs.setdefault("token", self.token)
        return self.api.request(method, path, json_body, **kwargs)

    def send(self, to: str, kind: str = "note", data: Any = None, key: str | None = None) -> Reply:
        headers = {"Idempotency-Key": key} if key is not None else None
        return self.request("POST", f"/rooms/{self.room}/peers/{to}/messages", {"type": kind, "data": data},
                            headers=headers)

    def send_batch(self, to: str | None, envelopes: list[Any], key: str | None = None) -> Reply:
        """A 1.1 batch to `to` (None: a broadcast batch)."""
        headers = {"Idempotency-Key": key} if key is not None else None
        path = f"/rooms/{self.room}/messages" if to is None else f"/rooms/{self.room}/peers/{to}/messages"
        return self.request("POST", path, {"messages": envelopes}, headers=headers)

    def broadcast(self, kind: str = "note", data: Any = None, key: str | None = None) -> Reply:
        headers = {"Idempotency-Key": key} if key is not None else None
        return self.request("POST", f"/rooms/{self.room}/messages", {"type": kind, "data": data}, headers=headers)

    def poll(self, after: int | None = None, wait: float = 0, limit: int | None = None) -> Reply:
        query = {"after": self.cursor if after is None else after, "wait": wait}
        if limit is not None:
            query["limit"] = limit
        return self.request("GET", f"/rooms/{self.room}/peers/{self.id}/messages?{urllib.parse.urlencode(query)}")

    def stream(self, last_event_id: int | None = None, query: str = "", headers: dict[str, str] | None = None,
               **kwargs) -> Events:
        """Open this peer's stream (1.2) from `last_event_id` (default: the cursor; 0 sends no header)."""
        cursor = self.cursor if last_event_id is None else last_event_id
        headers = {**({"Last-Event-ID": str(cursor)} if cursor else {}), **(headers or {})}
        path = f"/rooms/{self.room}/peers/{self.id}/messages" + (f"?{query}" if query else "")
        return self.api.stream(path, token=self.token, headers=headers, **kwargs)

    def receive(self, wait: float = 0, limit: int | None = None) -> list[dict]:
        """Poll from the current cursor, acknowledge what came before, and advance."""
        reply = self.poll(wait=wait, limit=limit)
        assert reply.status == 200, (reply.status, reply.raw)
        self.cursor = reply.body["cursor"]
        return reply.body["messages"]

    def drain(self) -> None:
        """Receive and acknowledge everything waiting (bounded: a mailbox holds at most 1000)."""
        for _ in range(20):
            if not self.receive():
                return
        raise AssertionError(f"{self.id}'s mailbox never emptied")

    def on(self, api: Api) -> Peer:
        """The same peer, talking to another instance."""
        return dataclasses.replace(self, api=api)

    def members(self) -> Reply:
        return self.request("GET", f"/rooms/{self.room}/peers")

    def leave(self) -> Reply:
        return self.request("DELETE", f"/rooms/{self.room}/peers/{self.id}")


def held_poll(peer: Peer, wait: float = 20, **kwargs) -> dict:
    """Start `peer.poll(wait=...)` in a thread; the dict gets its `reply` and how long it `took`."""
    result: dict = {}

    def run():
        started = time.monotonic()
        result["reply"] = peer.poll(wait=wait, **kwargs)
        result["took"] = time.monotonic() - started

    result["thread"] = threading.Thread(target=run, daemon=True)
    result["thread"].start()
    return result
