"""The rest of the API (join, members, leave, ICE servers, health, documents): Flask views on http.py.

Each view is `view(service, request, path values)` and answers a Flask
`Response`; routes.py says which path it serves. The message endpoints
(poll, send, broadcast) are in messages.py, answered before Flask.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
import urllib.parse
from pathlib import Path

import flask
from flask import Response
from werkzeug.exceptions import RequestEntityTooLarge

from . import errors, metrics, protocol, tokens
from .http import Request, json_response
from .ice import ice_servers
from .service import Service


def _seconds(value: float) -> float | int:
    """25, not 25.0: whole seconds read as whole numbers."""
    return int(value) if value == int(value) else value


def join(service: Service, request: Request, room: str) -> Response:
    protocol.check_id(room, "room")
    body = protocol.parse_object(request.body(), empty_ok=True)
    requested = body.get("peer_id")
    if requested is not None:
        protocol.check_id(requested, "peer_id")
    ticket, refusal = _ticket(service, body, room, requested)
    # with tickets on, meta comes from the ticket only (signed: nobody claims another's name); the body's is ignored
    meta = (ticket and ticket.meta) if service.tickets else _body_meta(body)
    peer = requested or (ticket and ticket.sub) or protocol.new_peer_id()
    token, new_token, now = request.token(), tokens.new_token(peer), time.time()
    joined = service.backend.join(protocol.Join(
        room, peer, new_token, token, now, client_ip=request.client_ip(),
        jti=ticket and ticket.jti, jti_until=ticket.usable_until if ticket else 0.0, refusal=refusal, meta=meta,
    ))
    settings = service.settings
    others = sorted(joined.others, key=lambda member: member.peer_id)
    return json_response(
        {
            "room": room,
            "peer_id": peer,
            "token": new_token if joined.created else token,
            "peers": [member.peer_id for member in others],
            "members": [member_shown(member) for member in others],
            "meta": _meta(joined.meta),
            "cursor": joined.cursor,
            "poll_wait": _seconds(settings.poll_wait),
            "peer_ttl": _seconds(settings.peer_ttl),
            "ice_servers": ice_servers(settings, peer, now),
        },
        201 if joined.created else 200,
        Location=f"/rooms/{room}/peers/{peer}",
    )


def _body_meta(body: dict) -> str | None:
    """The join body's `meta` as kept (`protocol.meta_text`), or None; `BadMeta` for one that is no small object."""
    return None if body.get("meta") is None else protocol.meta_text(body["meta"])


def _meta(text: str | None):
    """A kept meta (JSON text) as a value of an answer."""
    return None if text is None else json.loads(text)


def member_shown(member, joined_at: bool = False) -> dict:
    """A member as member lists show it: peer_id and meta (and joined_at for the application)."""
    shown = {"peer_id": member.peer_id, "meta": _meta(member.meta)}
    if joined_at:
        shown["joined_at"] = member.joined_at
    return shown


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


def members(service: Service, request: Request, room: str) -> Response:
    protocol.check_id(room, "room")
    peer, token = tokens.caller(request.token())
    listed = sorted(service.backend.members(room, peer, token, time.time()), key=lambda member: member.peer_id)
    return json_response({"room": room, "peers": [member.peer_id for member in listed],
                          "members": [member_shown(member) for member in listed]})


def _leave(service: Service, request: Request, room: str, peer: str, token: str | None) -> Response:
    protocol.check_id(room, "room")
    protocol.check_id(peer, "peer")
    service.backend.leave(room, peer, token, time.time())
    return Response(status=204)


def leave(service: Service, request: Request, room: str, peer: str) -> Response:
    return _leave(service, request, room, peer, request.token())


def leave_beacon(service: Service, request: Request, room: str, peer: str) -> Response:
    """Leave for `navigator.sendBeacon`: the token may come in the body, in any Content-Type."""
    return _leave(service, request, room, peer, request.token() or _beacon_token(request))


def _beacon_token(request: Request) -> str | None:
    """The token of a beacon body: a `FormData` (multipart) field, or else JSON `{"token": ...}` or `token=`.

    `sendBeacon` sends a string as text/plain, `URLSearchParams` urlencoded, `FormData` as
    multipart/form-data and a `Blob` as its own type; only multipart needs a real form parser.
    """
    if flask.request.mimetype == "multipart/form-data":
        try:
            token = flask.request.form.get("token")
        except RequestEntityTooLarge:  # werkzeug's form limits: the body's size was held to MAX_MESSAGE_BYTES
            raise errors.BadRequest(
                f"the form has more than {flask.request.max_form_parts} parts or a field over "
                f"{flask.request.max_form_memory_size} bytes; a leave beacon needs only its 'token' field"
            ) from None
    else:
        raw = request.body()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode("latin-1")).items()}
        token = body.get("token") if isinstance(body, dict) else None
    return token if isinstance(token, str) and token and token.isascii() else None


def refresh_ice_servers(service: Service, request: Request, room: str, peer: str) -> Response:
    protocol.check_id(room, "room")
    protocol.check_id(peer, "peer")
    now = time.time()
    service.backend.members(room, peer, request.token(), now)
    return json_response({"ice_servers": ice_servers(service.settings, peer, now), "ttl": service.settings.turn_ttl})


def healthz(service: Service, request: Request) -> Response:
    """The protocol's check: up, and the backend answers (503 backend_unavailable when it does not)."""
    service.backend.ping()
    return json_response({"status": "ok", "backend": service.backend.name, "held_polls": len(service.hub)})


def livez(service: Service, request: Request) -> Response:
    """Liveness: this worker answers requests. Asks nothing of the backend, so a Redis outage, which every
    instance shares, does not fail every instance at once (docs/observability.md says which check to use where)."""
    return json_response({"status": "ok"})


def readyz(service: Service, request: Request) -> Response:
    """Readiness: this instance can serve now: it is not stopping, and its backend answers."""
    if service.hub.closing:
        raise errors.ServerBusy("this instance is stopping; another one serves")
    service.backend.ping()
    return json_response({"status": "ready", "backend": service.backend.name, "held_polls": len(service.hub)})


OPENAPI = Path(__file__).resolve().parent / "openapi.json"


def openapi(service: Service, request: Request) -> Response:
    """The OpenAPI 3.1 document of this API (kept true by tests/test_openapi.py)."""
    if not OPENAPI.exists():
        raise errors.NotFound("no OpenAPI document in this build")
    return Response(OPENAPI.read_bytes(), mimetype="application/json")


def prometheus_metrics(service: Service, request: Request) -> Response:
    """Prometheus text, for a caller with METRICS_TOKEN, or (without one set) a local one (`_may_scrape`)."""
    _may_scrape(service, request)
    body, content_type = metrics.exposition(service.backend.census)
    return Response(body, content_type=content_type)


def _may_scrape(service: Service, request: Request) -> None:
    """METRICS_TOKEN set: its bearer token, from anywhere. Unset: a connection from this host that no proxy
    forwarded (a loopback address, no X-Forwarded-For or Forwarded header); anyone else is refused."""
    expected = service.settings.metrics_token
    if expected:
        given = request.token() or ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise errors.Unauthorized("/metrics needs METRICS_TOKEN as a bearer token")
        return
    environ = request.environ
    address = environ.get("werkzeug.proxy_fix.orig", environ).get("REMOTE_ADDR", "")
    forwarded = "HTTP_X_FORWARDED_FOR" in environ or "HTTP_FORWARDED" in environ
    if forwarded or not _is_loopback(address):
        raise errors.Forbidden("/metrics answers this host only; set METRICS_TOKEN to scrape it from elsewhere")


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def demo(service: Service, request: Request) -> Response:
    return flask.current_app.send_static_file("index.html")
