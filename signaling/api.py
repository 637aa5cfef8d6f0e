"""The HTTP API of PROTOCOL.md: one view per endpoint, no state of its own."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request

from . import errors, metrics, protocol
from .ice import ice_servers
from .service import Service

blueprint = Blueprint("api", __name__)


def _service() -> Service:
    return Service.of(current_app)


def _bearer() -> str | None:
    """The token of `Authorization: Bearer <token>`, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _caller() -> tuple[str, str]:
    """(peer id, token) of a request that names no peer in its path: the token tells."""
    token = _bearer()
    peer = protocol.token_peer(token)
    if peer is None:
        raise errors.Unauthorized("this call needs 'Authorization: Bearer <token>' from your join")
    return peer, token


def _client_ip() -> str:
    """The client's address: the socket's, or X-Forwarded-For's when TRUSTED_PROXIES says so (ProxyFix)."""
    return request.remote_addr or "unknown"


def _body() -> bytes:
    return request.get_data(cache=False)


def _whole(raw: str, name: str, low: int, high: int | None = None) -> int:
    """An integer query parameter or header, or a 400 naming it and its bounds."""
    if not raw.isascii() or not raw.isdigit() or (high is not None and not low <= int(raw) <= high):
        bounds = f"{low}-{high}" if high is not None else f">= {low}"
        raise errors.BadQuery(f"'{name}' must be an integer {bounds}, got {raw!r:.40}")
    return int(raw)


def _query_int(name: str, default: int, low: int, high: int | None = None) -> int:
    raw = request.args.get(name)
    return default if raw is None else _whole(raw, name, low, high)


def _cursor() -> int:
    """The poll's cursor: `after=N`, or the `Last-Event-ID` header (1.1); both given, they must agree."""
    after = request.args.get("after")
    header = request.headers.get("Last-Event-ID", "").strip()
    if not header:
        return 0 if after is None else _whole(after, "after", 0)
    cursor = _whole(header, "Last-Event-ID", 0)
    if after is not None and _whole(after, "after", 0) != cursor:
        raise errors.BadQuery(f"after={after} and Last-Event-ID: {header} disagree; give one of them")
    return cursor


#: a decimal number, as JSON writes one (leading zeros and a bare "." allowed): no "1_0", "inf" or "nan"
_NUMBER = re.compile(r"([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _query_wait(cap: float) -> float:
    """Seconds to hold the poll: any number >= 0, the larger ones capped at POLL_WAIT."""
    raw = request.args.get("wait")
    if raw is None:
        return cap
    if not _NUMBER.fullmatch(raw):
        raise errors.BadQuery(f"'wait' must be a number of seconds >= 0 like 25 or 0.5, got {raw!r:.40}")
    return min(float(raw), cap)


def _seconds(value: float) -> float | int:
    """25, not 25.0: whole seconds read as whole numbers."""
    return int(value) if value == int(value) else value


def _json(body: dict, status: int = 200, **headers: str) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers)
    return response


@blueprint.post("/rooms/<room>/peers")
def join(room: str):
    service = _service()
    protocol.check_id(room, "room")
    body = protocol.parse_object(_body(), empty_ok=True)
    requested = body.get("peer_id")
    peer = protocol.new_peer_id() if requested is None else protocol.check_id(requested, "peer_id")
    token = _bearer()
    new_token = protocol.new_token(peer)
    now = time.time()
    client_ip = _client_ip()
    leased = service.backend.admit(client_ip, room, peer, now)
    try:
        joined = service.backend.join(room, peer, new_token, token, now)
    except errors.SignalingError:
        if leased:
            service.backend.release(client_ip, room, peer)
        raise
    settings = service.settings
    return _json(
        {
            "room": room,
            "peer_id": peer,
            "token": new_token if joined.created else token,
            "peers": sorted(joined.peers),
            "cursor": joined.cursor,
            "poll_wait": _seconds(settings.poll_wait),
            "peer_ttl": _seconds(settings.peer_ttl),
            "ice_servers": ice_servers(settings, peer, now),
        },
        201 if joined.created else 200,
        Location=f"/rooms/{room}/peers/{peer}",
    )


@blueprint.get("/rooms/<room>/peers/<peer>/messages")
def poll(room: str, peer: str):
    service = _service()
    protocol.check_id(room, "room")
    protocol.check_id(peer, "peer")
    after = _cursor()
    limit = _query_int("limit", protocol.MAX_LIMIT, 1, protocol.MAX_LIMIT)
    wait = _query_wait(service.settings.poll_wait)
    token = _bearer()
    client_ip = _client_ip()

    def fetch(hold: int | None):
        return service.backend.fetch(room, peer, token, after, limit, time.time(), hold, client_ip)

    messages, cursor = service.hub.poll(room, peer, after, limit, wait, fetch)
    metrics.DELIVERIES.inc(len(messages))
    return Response(protocol.poll_body(messages, cursor), mimetype="application/json")


def _outgoing(room: str, to: str | None) -> protocol.Outgoing:
    """A send or broadcast read from the request, its envelopes encoded here, once."""
    protocol.check_id(room, "room")
    if to is not None:
        protocol.check_id(to, "peer")
    sender, token = _caller()
    key = protocol.check_idempotency_key(request.headers.get("Idempotency-Key"))
    out = protocol.Outgoing.read(_body(), room, sender, token, to, key, time.time())
    limit = _service().settings.mailbox_limit
    if len(out.tails) > limit:  # it could never be stored: not a full mailbox to wait out
        raise errors.PayloadTooLarge(
            f"a batch of {len(out.tails)} envelopes is more than a mailbox holds (MAILBOX_LIMIT {limit}); "
            f"send at most {limit} at a time"
        )
    return out


@blueprint.post("/rooms/<room>/peers/<to>/messages")
def send(room: str, to: str):
    out = _outgoing(room, to)
    seqs = _service().backend.send(out)
    return _json({"seqs": seqs} if out.batch else {"seq": seqs[0]}, 202)


@blueprint.post("/rooms/<room>/messages")
def broadcast(room: str):
    result = _service().backend.broadcast(_outgoing(room, None))
    return _json({"delivered_to": sorted(result.delivered_to), "mailbox_full": sorted(result.mailbox_full)}, 202)


@blueprint.get("/rooms/<room>/peers")
def members(room: str):
    protocol.check_id(room, "room")
    peer, token = _caller()
    peers = _service().backend.members(room, peer, token, time.time())
    return _json({"room": room, "peers": sorted(peers)})


def _leave(room: str, peer: str, token: str | None) -> Response:
    protocol.check_id(room, "room")
    protocol.check_id(peer, "peer")
    backend = _service().backend
    backend.leave(room, peer, token, time.time())
    backend.release(_client_ip(), room, peer)
    return Response(status=204)


@blueprint.delete("/rooms/<room>/peers/<peer>")
def leave(room: str, peer: str):
    return _leave(room, peer, _bearer())


@blueprint.post("/rooms/<room>/peers/<peer>/leave")
def leave_beacon(room: str, peer: str):
    """Leave for `navigator.sendBeacon`: the token may come in the body, in any Content-Type."""
    return _leave(room, peer, _bearer() or _token_from_body(_body()))


def _token_from_body(raw: bytes) -> str | None:
    """The token of a JSON `{"token": ...}` or a `token=` form body, whatever the Content-Type."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        body = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode("latin-1")).items()}
    token = body.get("token") if isinstance(body, dict) else None
    return token if isinstance(token, str) and token and token.isascii() else None


@blueprint.get("/rooms/<room>/peers/<peer>/ice-servers")
def refresh_ice_servers(room: str, peer: str):
    service = _service()
    protocol.check_id(room, "room")
    protocol.check_id(peer, "peer")
    now = time.time()
    service.backend.members(room, peer, _bearer(), now)
    return _json({"ice_servers": ice_servers(service.settings, peer, now), "ttl": service.settings.turn_ttl})


@blueprint.get("/healthz")
def healthz():
    service = _service()
    service.backend.ping()
    return _json({"status": "ok", "backend": service.backend.name, "held_polls": len(service.hub)})


OPENAPI = Path(__file__).resolve().parent / "openapi.json"


@blueprint.get("/openapi.json")
def openapi():
    """The OpenAPI 3.1 document of this API (kept true by tests/test_openapi.py)."""
    if not OPENAPI.exists():
        raise errors.NotFound("no OpenAPI document in this build")
    return Response(OPENAPI.read_bytes(), mimetype="application/json")


@blueprint.get("/metrics")
def prometheus_metrics():
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)


@blueprint.after_request
def count(response: Response) -> Response:
    """Joins and sends by status, whatever answered them (a view or an error handler)."""
    if request.endpoint == "api.join":
        metrics.JOINS.labels(response.status_code).inc()
    elif request.endpoint in ("api.send", "api.broadcast"):
        metrics.SENDS.labels(request.endpoint[4:], response.status_code).inc()
    return response


@blueprint.get("/")
def demo():
    return current_app.send_static_file("index.html")
