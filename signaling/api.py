"""The HTTP API of PROTOCOL.md: one Flask view per endpoint, no state of its own.

The message endpoints (poll, send, broadcast) are in messages.py, served before Flask.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from . import errors, metrics, protocol
from .ice import ice_servers
from .service import Service

blueprint = Blueprint("api", __name__)


def _service() -> Service:
    return Service.of(current_app)


def _bearer() -> str | None:
    return protocol.bearer(request.headers.get("Authorization"))


def _client_ip() -> str:
    """The client's address: the socket's, or X-Forwarded-For's when TRUSTED_PROXIES says so (ProxyFix)."""
    return request.remote_addr or "unknown"


def _body() -> bytes:
    """The body, read whole and held to MAX_MESSAGE_BYTES before any view ran (service.py)."""
    return g.body


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
    if requested is not None:
        protocol.check_id(requested, "peer_id")
    ticket, refusal = _ticket(service, body, room, requested)
    peer = requested or (ticket and ticket.sub) or protocol.new_peer_id()
    token = _bearer()
    new_token = protocol.new_token(peer)
    now = time.time()
    client_ip = _client_ip()
    leased = service.backend.admit(client_ip, room, peer, now)
    try:
        joined = service.backend.join(
            room, peer, new_token, token, now,
            jti=ticket and ticket.jti, jti_until=ticket.usable_until if ticket else 0.0, refusal=refusal,
            client_ip=client_ip,
        )
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


def _ticket(service: Service, body: dict, room: str, peer: str | None):
    """(the join's checked ticket, or the error a fresh join gets): (None, None) when tickets are off.

    A failed check is not raised here: a resume needs no ticket, and only the
    backend knows whether this join resumes.
    """
    if service.tickets is None:
        return None, None
    try:
        return service.tickets.check(body.get("ticket"), room, peer), None
    except (errors.TicketRequired, errors.BadTicket) as refusal:
        return None, refusal


@blueprint.get("/rooms/<room>/peers")
def members(room: str):
    protocol.check_id(room, "room")
    peer, token = protocol.caller(_bearer())
    peers = _service().backend.members(room, peer, token, time.time())
    return _json({"room": room, "peers": sorted(peers)})


def _leave(room: str, peer: str, token: str | None) -> Response:
    protocol.check_id(room, "room")
    protocol.check_id(peer, "peer")
    _service().backend.leave(room, peer, token, time.time())
    return Response(status=204)


@blueprint.delete("/rooms/<room>/peers/<peer>")
def leave(room: str, peer: str):
    return _leave(room, peer, _bearer())


@blueprint.post("/rooms/<room>/peers/<peer>/leave")
def leave_beacon(room: str, peer: str):
    """Leave for `navigator.sendBeacon`: the token may come in the body, in any Content-Type."""
    return _leave(room, peer, _bearer() or _beacon_token())


def _beacon_token() -> str | None:
    """The token of a beacon body: a `FormData` (multipart) field, or else JSON `{"token": ...}` or `token=`.

    `sendBeacon` sends a string as text/plain, `URLSearchParams` urlencoded, `FormData` as
    multipart/form-data and a `Blob` as its own type; only multipart needs a real form parser.
    """
    if request.mimetype == "multipart/form-data":
        try:
            token = request.form.get("token")
        except RequestEntityTooLarge:  # werkzeug's form limits: the body's size was held to MAX_MESSAGE_BYTES
            raise errors.BadRequest(
                f"the form has more than {request.max_form_parts} parts or a field over "
                f"{request.max_form_memory_size} bytes; a leave beacon needs only its 'token' field"
            ) from None
    else:
        raw = _body()
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
    """Joins by status, whatever answered them (the view or an error handler); messages.py counts sends."""
    if request.endpoint == "api.join":
        metrics.JOINS.labels(response.status_code).inc()
    return response


@blueprint.get("/")
def demo():
    return current_app.send_static_file("index.html")
