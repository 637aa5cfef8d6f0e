"""Errors of the API: one root class; each subclass names its HTTP status and code."""

from __future__ import annotations


class SignalingError(Exception):
    """An error the client gets as `{"error": {"code", "message"}}` with `status`."""

    status = 500
    code = "internal_error"
    default_message = "the server failed to handle the request"

    def __init__(self, message: str | None = None, *, retry_after: float | None = None):
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.retry_after = retry_after

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


class ReservedType(BadRequest):
    code = "reserved_type"


class BadIdempotencyKey(BadRequest):
    code = "bad_idempotency_key"


class Unauthorized(SignalingError):
    status, code, default_message = 401, "unauthorized", "missing or wrong token"


class NotFound(SignalingError):
    status, code, default_message = 404, "not_found", "no such resource"


class NotJoined(NotFound):
    code = "not_joined"


class PeerNotFound(NotFound):
    code = "peer_not_found"


class MethodNotAllowed(SignalingError):
    status, code = 405, "method_not_allowed"


class Conflict(SignalingError):
    status = 409


class PeerIdTaken(Conflict):
    code = "peer_id_taken"


class RoomFull(Conflict):
    code = "room_full"


class PayloadTooLarge(SignalingError):
    status, code = 413, "payload_too_large"


class IdempotencyKeyReused(SignalingError):
    status, code = 422, "idempotency_key_reused"


class TooManyRequests(SignalingError):
    """A 429: always with Retry-After."""

    status = 429


class MailboxFull(TooManyRequests):
    code = "mailbox_full"


class JoinRateLimited(TooManyRequests):
    code = "join_rate_limited"


class SendRateLimited(TooManyRequests):
    code = "send_rate_limited"


class TooManyPeers(TooManyRequests):
    code = "too_many_peers"


class TooManyRooms(TooManyRequests):
    code = "too_many_rooms"


class BackendUnavailable(SignalingError):
    status, code = 503, "backend_unavailable"
    default_message = "the state store cannot be reached; try again shortly"
