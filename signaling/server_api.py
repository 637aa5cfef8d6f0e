"""The server API (protocol 1.2): the application's backend looks into rooms, sends, removes peers, closes rooms.

Every call carries one of `SERVER_API_KEYS` as `Authorization: Bearer <key>`,
checked before anything else is read or done. A key names no peer: what a
peer's token may do, a key may not, and the other way round (a key is no
token's hash, and a token is none of the keys). Sends go through the same
reading as a peer's (messages.read_outgoing), from `protocol.SERVER_SENDER`.
"""

from __future__ import annotations

import hmac
import time

from flask import Response

from . import errors, messages, protocol
from .api import member_shown
from .http import Request, json_response
from .service import Service

#: the longest reason a removal may give: it goes into every refusal of the removed peer's requests
MAX_REASON = 200
#: the longest ban, in seconds: a day; a longer one is the application's own list to keep
MAX_BAN = 86400


def authorize(service: Service, request: Request) -> None:
    """Refuse (401) a call without one of SERVER_API_KEYS; each key is compared, in constant time."""
    keys = service.settings.server_api_keys
    if not keys:
        raise errors.Unauthorized("the server API is off: this server has no SERVER_API_KEYS")
    given = (request.token() or "").encode()
    # a list, not any(): every key is compared whatever matches, so the time tells nothing of which one
    if not any([hmac.compare_digest(given, key.encode()) for key in keys]):
        raise errors.Unauthorized("missing or wrong server API key (send 'Authorization: Bearer <key>')")


def room(service: Service, request: Request, room: str) -> Response:
    """`GET /server/rooms/{room}`: every live member with its meta and join time (an empty room: [])."""
    authorize(service, request)
    protocol.check_id(room, "room")
    listed = sorted(service.backend.members(room, None, None, time.time()), key=lambda member: member.peer_id)
    return json_response({"room": room, "members": [member_shown(member, joined_at=True) for member in listed]})


def _answer(answer: tuple[int, str]) -> Response:
    status, body = answer
    return Response(body, status, mimetype="application/json")


def send(service: Service, request: Request, room: str, peer: str) -> Response:
    """`POST /server/rooms/{room}/peers/{peer}/messages`: as a peer's send, from "@server"."""
    authorize(service, request)
    return _answer(messages.send(service, request, room, peer, sender=protocol.SERVER_SENDER))


def broadcast(service: Service, request: Request, room: str) -> Response:
    """`POST /server/rooms/{room}/messages`: to every member, as a peer's broadcast, from "@server"."""
    authorize(service, request)
    return _answer(messages.broadcast(service, request, room, sender=protocol.SERVER_SENDER))


def remove(service: Service, request: Request, room: str, peer: str) -> Response:
    """`DELETE /server/rooms/{room}/peers/{peer}`, optional body {"reason", "ban"}: `{"removed": bool}`."""
    authorize(service, request)
    protocol.check_id(room, "room")
    protocol.check_id(peer, "peer")
    reason, ban = read_removal(request.body())
    return json_response({"removed": service.backend.remove(room, peer, reason, ban, time.time())})


def read_removal(raw: bytes) -> tuple[str, float]:
    """(reason, ban seconds) of a removal's body: a reason of 1-MAX_REASON characters, a ban of 0-MAX_BAN s."""
    body = protocol.parse_object(raw, empty_ok=True)
    reason, ban = body.get("reason"), body.get("ban")
    if reason is None:
        reason = "removed by the application"
    elif not isinstance(reason, str) or not 1 <= len(reason) <= MAX_REASON:
        raise errors.BadField(f"'reason' must be a string of 1-{MAX_REASON} characters, got {reason!r:.60}")
    if ban is None:
        ban = 0
    elif isinstance(ban, bool) or not isinstance(ban, (int, float)) or not 0 <= ban <= MAX_BAN:
        raise errors.BadField(f"'ban' must be a number of seconds from 0 to {MAX_BAN}, got {ban!r:.40}")
    return reason, float(ban)


def close(service: Service, request: Request, room: str) -> Response:
    """`DELETE /server/rooms/{room}`: every member removed with reason `room_closed`; `{"removed": [ids]}`."""
    authorize(service, request)
    protocol.check_id(room, "room")
    return json_response({"removed": sorted(service.backend.close_room(room, time.time()))})
