"""A small client for the API, over Flask's test client or real HTTP, so tests read like usage."""

from __future__ import annotations

import dataclasses
import http.client
import json
import ssl
import threading
import time
import urllib.parse
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


class Api:
    """Requests by method and path; `call(method, path, headers, body) -> Reply` does the transport."""

    def __init__(self, call):
        self._call = call

    @classmethod
    def over_flask(cls, client, remote_addr: str = "127.0.0.1") -> Api:
        def call(method, path, headers, body):
            r = client.open(path, method=method, headers=headers, data=body,
                            environ_base={"REMOTE_ADDR": remote_addr})
            return Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.get_data())

        return cls(call)

    @classmethod
    def over_http(cls, base_url: str, timeout: float = 40, context: ssl.SSLContext | None = None,
                  source: str | None = None) -> Api:
        """Plain HTTP, or HTTPS with `context` for an https URL; from the local address `source` if given."""
        parts = urllib.parse.urlsplit(base_url)
        options = {"timeout": timeout, "source_address": (source, 0) if source else None}

        def call(method, path, headers, body):
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, **options)
            else:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, **options)
            try:
                conn.request(method, path, body=body, headers=headers)
                r = conn.getresponse()
                return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
            finally:
                conn.close()

        return cls(call)

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
