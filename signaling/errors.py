"""Errors of the API: one root class; each subclass names its HTTP status and code."""

from __future__ import annotations

import math


class SignalingError(Exception):
    """An error the client gets as `{"error": {"code", "message"}}` with `status`.

    `template` is the message both backends give, filled in by `about`;
    `retry_after` (seconds) becomes a Retry-After header.
    """

    status = 500
    code = "internal_error"
    default_message = "the server failed to handle the request"
    template: str | None = None
    retry_after: float | None = None

    def __init__(self, message: str | None = None, *, retry_after: float | None = None):
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        if retry_after is not None:
            self.retry_after = retry_after

    @classmethod
    def about(cls, retry_after: float | None = None, **context) -> SignalingError:
        """This error with its template filled from `context` (room, peer, to, settings, ...).

        The caller gives every name the template uses: a missing one is a bug,
        raised as a `KeyError` that names it (never a message with a hole).
        """
        try:
            message = cls.template.format_map(context) if cls.template else None
        except KeyError as missing:
            raise KeyError(f"{cls.__name__}.about() needs {missing} for its message; got {sorted(context)}") from None
        return cls(message, retry_after=retry_after)

    def headers(self) -> list[tuple[str, str]]:
        """The response headers this error brings: Retry-After in whole seconds, at least 1."""
        if self.retry_after is None:
            return []
        return [("Retry-After", str(max(1, math.ceil(self.retry_after))))]

    def body(self, request_id: str | None = None) -> dict:
        error = {"code": self.code, "message": self.message}
        if request_id:
            error["request_id"] = request_id
        return {"error": error}


class BadRequest(SignalingError):
    status, code, default_message = 400, "bad_request", "the request is not valid"


class BadJson(BadRequest):
    code, default_message = "bad_json", "the body is not a JSON object"


class BadField(BadRequest):
    code = "bad_field"


class BadId(BadRequest):
    code = "bad_id"


class BadQuery(BadRequest):
    code = "bad_query"


class BadCursor(BadRequest):
    code = "bad_cursor"
    template = "after={after} is beyond the last seq given out ({seq})"


class ReservedType(BadRequest):
    code = "reserved_type"


class BadIdempotencyKey(BadRequest):
    code = "bad_idempotency_key"


class BadMeta(BadRequest):
    """A peer's `meta` that is not a JSON object of at most `protocol.MAX_META_BYTES` (1.2)."""

    code = "bad_meta"


class Unauthorized(SignalingError):
    status, code, default_message = 401, "unauthorized", "missing or wrong token"
    template = "missing or wrong token for peer '{peer}'"


class TicketRequired(Unauthorized):
    """A fresh join without a ticket while the server needs them (JOIN_SECRET or JOIN_PUBLIC_KEY set)."""

    code = "ticket_required"
    default_message = "this server admits a fresh join only with a ticket from the application"
    template = "joining room '{room}' needs a ticket ('ticket' in the join body) from the application"


class BadTicket(Unauthorized):
    """A ticket that failed a check; the message names which one (PROTOCOL.md, "Join tickets")."""

    code = "bad_ticket"
    default_message = "the ticket failed a check"

    @classmethod
    def failed(cls, check: str, detail: str | None = None) -> BadTicket:
        """The error for the named check: signature, expired, not yet valid, another room, ..."""
        return cls(f"bad ticket: {check}" + (f" ({detail})" if detail else ""))

    @classmethod
    def used(cls) -> BadTicket:
        """A single-use ticket's second fresh join: both backends say it so."""
        return cls.failed("already used", "this ticket's jti admitted a join before")


class NotFound(SignalingError):
    status, code, default_message = 404, "not_found", "no such resource"


class NotJoined(NotFound):
    code = "not_joined"
    template = "peer '{peer}' is not a member of room '{room}'"


class PeerNotFound(NotFound):
    code = "peer_not_found"
    template = "no peer '{to}' in room '{room}'"


class MethodNotAllowed(SignalingError):
    status, code = 405, "method_not_allowed"

    def __init__(self, message: str | None = None, *, allow: tuple[str, ...] = ()):
        super().__init__(message)
        self.allow = allow

    def headers(self) -> list[tuple[str, str]]:
        return [*super().headers(), ("Allow", ", ".join(self.allow))] if self.allow else super().headers()


class Forbidden(SignalingError):
    status, code, default_message = 403, "forbidden", "this client may not make this request"


class Removed(Forbidden):
    """The token of a peer the application removed (server API), for PEER_TTL after: its client stops."""

    code, default_message = "removed", "this peer was removed from its room by the application"
    template = "peer '{peer}' was removed from room '{room}': {reason}"


class Banned(Forbidden):
    """A join with a peer id the application banned from the room (server API), until the ban ends."""

    code, default_message = "banned", "this peer id is banned from this room"
    template = "peer id '{peer}' is banned from room '{room}' for now"


class RequestTimeout(SignalingError):
    status, code = 408, "request_timeout"
    template = "the request did not arrive whole within REQUEST_READ_TIMEOUT ({seconds:g} s)"


class Conflict(SignalingError):
    status = 409


class PeerIdTaken(Conflict):
    code = "peer_id_taken"
    template = "peer id '{peer}' is taken in room '{room}'"


class RoomFull(Conflict):
    code = "room_full"
    template = "room '{room}' is full ({settings.room_capacity} members)"


class PayloadTooLarge(SignalingError):
    status, code = 413, "payload_too_large"


class UriTooLong(SignalingError):
    status, code, default_message = 414, "uri_too_long", "the request line is too long"


class ExpectationFailed(SignalingError):
    status, code, default_message = 417, "expectation_failed", "only 'Expect: 100-continue' is understood"


class IdempotencyKeyReused(SignalingError):
    status, code = 422, "idempotency_key_reused"
    default_message = "this Idempotency-Key was used with another body"


class HeaderTooLarge(SignalingError):
    status, code, default_message = 431, "header_too_large", "a header, or all of them, are too large"


class TooManyRequests(SignalingError):
    """A 429: always with Retry-After."""

    status = 429


class MailboxFull(TooManyRequests):
    code = "mailbox_full"
    template = ("the mailbox of '{to}' is full (MAILBOX_LIMIT {settings.mailbox_limit} envelopes, "
                "MAILBOX_BYTES {settings.mailbox_bytes} bytes)")
    retry_after = 1


class JoinRateLimited(TooManyRequests):
    code = "join_rate_limited"
    template = "more than {settings.joins_per_ip_per_minute} joins a minute from {client_ip}"


class SendRateLimited(TooManyRequests):
    code = "send_rate_limited"
    template = "more than {settings.sends_per_peer_per_second} sends a second from '{peer}'"


class TooManyPeers(TooManyRequests):
    code = "too_many_peers"
    template = "{client_ip} has {settings.peers_per_ip} peers already"


class TooManyRooms(TooManyRequests):
    code = "too_many_rooms"
    template = "{client_ip} has peers in {settings.rooms_per_ip} rooms already"


class UnsupportedTransferCoding(SignalingError):
    """501, as RFC 9112 asks for a transfer coding the server does not know: the request is not read."""

    status, code = 501, "unsupported_transfer_coding"
    default_message = "only the chunked transfer coding is understood"


class BackendUnavailable(SignalingError):
    status, code = 503, "backend_unavailable"
    default_message = "the state store cannot be reached; try again shortly"
    retry_after = 1


class ServerBusy(SignalingError):
    """503 from the worker itself: it has no open file left for another connection (worker.SheddingServer)."""

    status, code = 503, "server_busy"
    default_message = "this instance has no room for another connection; try again shortly"
    retry_after = 1


def by_code() -> dict[str, type[SignalingError]]:
    """Every error class by its code: the Redis scripts answer with codes, and the OpenAPI test lists them."""
    found: dict[str, type[SignalingError]] = {}
    classes = [SignalingError]
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        if "code" in vars(cls):
            assert found.setdefault(cls.code, cls) is cls, f"two error classes share the code {cls.code!r}"
    return found
