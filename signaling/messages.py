"""The message endpoints (poll or stream, send, broadcast) as plain WSGI, in front of the Flask app.

Polls and sends are nearly all of a signaling service's requests, and
Flask's per-request machinery (two contexts, URL routing, hooks, a Response
object) cost more than these views themselves, and stay in memory for as
long as a poll is held. `MessagesApp` answers GET and POST on the two
message paths straight from the WSGI environ and hands every other request
(preflights and other methods included) to the Flask app behind it. The
answers are the ones the rest of the API gives: JSON bodies and errors,
CORS headers, `X-Request-Id`, `Retry-After`, metrics.
"""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable
from http import HTTPStatus

from . import cors, errors, metrics, protocol
from .config import Settings
from .service import Service
from .stream import Stream, accepted

log = logging.getLogger(__name__)

PEER_MESSAGES = re.compile(r"/rooms/([^/]+)/peers/([^/]+)/messages")
ROOM_MESSAGES = re.compile(r"/rooms/([^/]+)/messages")
#: what the two paths serve (for 405's Allow header and for the routes test)
ROUTES = {"/rooms/{room}/peers/{peer}/messages": ("GET", "POST"), "/rooms/{room}/messages": ("POST",)}

#: a decimal number, as JSON writes one (leading zeros and a bare "." allowed): no "1_0", "inf" or "nan"
_NUMBER = re.compile(r"([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_MAX_NUMBER_TEXT = 32  # "wait" in more characters than this is no number a client means
_STATUS = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}

StartResponse = Callable[[str, list[tuple[str, str]]], object]


class Call:
    """What a message view reads of one request, straight from the WSGI environ."""

    __slots__ = ("environ", "args")

    def __init__(self, environ: dict):
        self.environ = environ
        self.args: dict[str, str] = {}
        for pair in environ.get("QUERY_STRING", "").split("&"):
            name, _, value = pair.partition("=")
            if "%" in pair or "+" in pair:  # parse_qsl's work, paid only by a query that needs it
                name, value = urllib.parse.unquote_plus(name), urllib.parse.unquote_plus(value)
            if name:
                self.args.setdefault(name, value)  # the first of repeated parameters, as werkzeug's args.get

    def header(self, name: str) -> str | None:
        return self.environ.get("HTTP_" + name.upper().replace("-", "_"))

    def token(self) -> str | None:
        return protocol.bearer(self.header("Authorization"))

    def client_ip(self) -> str:
        """The socket's address, or X-Forwarded-For's when TRUSTED_PROXIES put ProxyFix in front."""
        return self.environ.get("REMOTE_ADDR") or "unknown"

    def body(self, limit: int) -> bytes:
        return protocol.read_body(self.environ, limit)

    def cursor(self) -> int:
        """The poll's cursor: `after=N`, or the `Last-Event-ID` header (1.1); both given, they must agree."""
        after = self.args.get("after")
        header = (self.header("Last-Event-ID") or "").strip()
        if not header:
            return 0 if after is None else _whole(after, "after", 0)
        cursor = _whole(header, "Last-Event-ID", 0)
        if after is not None and _whole(after, "after", 0) != cursor:
            raise errors.BadQuery(f"after={after} and Last-Event-ID: {header} disagree; give one of them")
        return cursor

    def limit(self) -> int:
        raw = self.args.get("limit")
        return protocol.MAX_LIMIT if raw is None else _whole(raw, "limit", 1, protocol.MAX_LIMIT)

    def wait(self, cap: float) -> float:
        """Seconds to hold the poll: any number >= 0, the larger ones capped at POLL_WAIT."""
        raw = self.args.get("wait")
        if raw is None:
            return cap
        if len(raw) > _MAX_NUMBER_TEXT or not _NUMBER.fullmatch(raw):
            raise errors.BadQuery(f"'wait' must be a number of seconds >= 0 like 25 or 0.5, got {raw!r:.40}")
        return min(float(raw), cap)


def _whole(raw: str, name: str, low: int, high: int | None = None) -> int:
    """An integer query parameter or header, or a 400 naming it and its bounds."""
    value = protocol.whole_number(raw)
    if value is None or value < low or (high is not None and value > high):
        bounds = f"{low}-{high}" if high is not None else f">= {low} of at most {protocol.MAX_DIGITS} digits"
        raise errors.BadQuery(f"'{name}' must be an integer {bounds}, got {raw!r:.40}")
    return value


# -- the views: (service, call, path parts) -> (status, JSON text)


def poll(service: Service, call: Call, room: str, peer: str) -> tuple[int, str] | Stream:
    """A long poll; or, for a client that accepts text/event-stream (1.2), a stream, after the same checks."""
    protocol.check_id(room, "room")
    protocol.check_id(peer, "peer")
    after, limit, wait = call.cursor(), call.limit(), call.wait(service.settings.poll_wait)
    call.body(service.settings.max_message_bytes)  # a poll has no use for a body, but refuses one past the limit
    token, client_ip = call.token(), call.client_ip()

    def fetch(hold: int | None, read_after: int):
        return service.backend.fetch(room, peer, token, after, limit, time.time(), hold, client_ip, read_after)

    if accepted(call.header("Accept")):
        return Stream.open(service, room, peer, after, limit, fetch, token, client_ip)
    messages, cursor = service.hub.poll(room, peer, after, limit, wait, fetch)
    metrics.DELIVERIES.inc(len(messages))
    return 200, protocol.poll_body(messages, cursor)


def outgoing(service: Service, call: Call, room: str, to: str | None) -> protocol.Outgoing:
    """A send or broadcast read from the request, its envelopes encoded here, once."""
    protocol.check_id(room, "room")
    if to is not None:
        protocol.check_id(to, "peer")
    sender, token = protocol.caller(call.token())
    key = protocol.check_idempotency_key(call.header("Idempotency-Key"))
    settings = service.settings
    out = protocol.Outgoing.read(call.body(settings.max_message_bytes), room, sender, token, to, key, time.time())
    if len(out.tails) > settings.mailbox_limit:  # it could never be stored: not a full mailbox to wait out
        raise errors.PayloadTooLarge(
            f"a batch of {len(out.tails)} envelopes is more than a mailbox holds "
            f"(MAILBOX_LIMIT {settings.mailbox_limit}); send at most {settings.mailbox_limit} at a time"
        )
    return out


def send(service: Service, call: Call, room: str, to: str) -> tuple[int, str]:
    out = outgoing(service, call, room, to)
    seqs = service.backend.send(out)
    return 202, protocol.dumps({"seqs": seqs} if out.batch else {"seq": seqs[0]})


def broadcast(service: Service, call: Call, room: str) -> tuple[int, str]:
    result = service.backend.broadcast(outgoing(service, call, room, None))
    return 202, protocol.dumps({"delivered_to": sorted(result.delivered_to),
                                "mailbox_full": sorted(result.mailbox_full)})


# -- the WSGI app


class MessagesApp:
    """WSGI: the message endpoints here, everything else to `fallback` (the Flask app's own wsgi_app)."""

    def __init__(self, service: Service, fallback: Callable):
        self.service = service
        self.fallback = fallback

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        if method == "OPTIONS" or not path.endswith("/messages"):
            return self.fallback(environ, start_response)
        peer_path = PEER_MESSAGES.fullmatch(path)
        room_path = None if peer_path else ROOM_MESSAGES.fullmatch(path)
        if peer_path is None and room_path is None:
            return self.fallback(environ, start_response)
        request_id = protocol.request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        call = Call(environ)
        kind = error = stream = None
        try:
            if peer_path and method in ("GET", "POST"):
                room, peer = peer_path.groups()  # not *groups(): a call with * nests a C frame (see service.py)
                if method == "GET":
                    answer = poll(self.service, call, room, peer)
                    if isinstance(answer, Stream):
                        stream = answer
                    else:
                        status, body = answer
                else:
                    kind = "send"
                    status, body = send(self.service, call, room, peer)
            elif room_path and method == "POST":
                kind = "broadcast"
                status, body = broadcast(self.service, call, room_path.group(1))
            else:
                allowed = ROUTES["/rooms/{room}/peers/{peer}/messages" if peer_path else "/rooms/{room}/messages"]
                raise errors.MethodNotAllowed(f"{method} is not allowed on {path}", allow=(*allowed, "OPTIONS"))
        except errors.SignalingError as refused:
            error = refused
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", method, path, request_id)
            error = errors.SignalingError()
        settings, origin = self.service.settings, environ.get("HTTP_ORIGIN")
        if stream is not None:  # its checks passed: the WSGI server writes it as it comes
            start_response(_STATUS[200], stream.headers(self.service, origin, request_id))
            return stream
        if error is None:
            data, headers = json_answer(settings, origin, request_id, body)
        else:
            status = error.status
            data, headers = error_answer(settings, origin, request_id, error)
        if kind is not None:
            metrics.SENDS.labels(kind, status).inc()
        start_response(_STATUS[status], headers)
        return [data]


def json_answer(
    settings: Settings, origin: str | None, request_id: str, body: str,
) -> tuple[bytes, list[tuple[str, str]]]:
    """A JSON answer written without Flask, and the headers every answer of the API carries."""
    data = body.encode()
    return data, [
        ("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("X-Request-Id", request_id),
        *cors.headers(settings, origin),
    ]


def error_answer(
    settings: Settings, origin: str | None, request_id: str, error: errors.SignalingError,
) -> tuple[bytes, list[tuple[str, str]]]:
    """The protocol's error body as a JSON answer, with the error's own headers (Retry-After, Allow)."""
    data, headers = json_answer(settings, origin, request_id, protocol.dumps(error.body(request_id)))
    return data, headers + error.headers()
