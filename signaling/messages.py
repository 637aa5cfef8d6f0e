"""The message endpoints (poll or stream, send, broadcast): plain views that `http.Front` answers before Flask.

Polls and sends are nearly all of a signaling service's requests, and
Flask's per-request machinery (two contexts, URL routing, hooks, a Response
object) cost more than these views themselves, and stay in memory for as
long as a poll is held. A view here reads the `http.Request`, makes one
backend call and answers (status, JSON text); http.py adds the rest.
"""

from __future__ import annotations

import time

from . import errors, metrics, protocol, tokens
from .http import YIELDED, Request
from .service import Service
from .stream import Stream, accepted


def poll(service: Service, request: Request, room: str, peer: str) -> tuple[int, str] | Stream:
    """A long poll; or, for a client that accepts text/event-stream (1.2), a stream, after the same checks."""
    protocol.check_id(room, "room")
    protocol.check_id(peer, "peer")
    after, limit, wait = request.cursor(), request.limit(), request.wait(service.settings.poll_wait)
    request.body()  # a poll has no use for a body, but refuses one past the limit
    fetch = protocol.Fetch(room, peer, request.token(), after, limit)
    read = service.backend.acknowledge_and_read

    def look(hold: int | None, read_after: int):
        return read(fetch, time.time(), hold, read_after)

    if accepted(request.header("Accept")):
        return Stream.open(service, fetch, look)
    messages, cursor = service.hub.poll(fetch, wait, look)
    metrics.DELIVERIES.inc(len(messages))
    return 200, protocol.poll_body(messages, cursor)


def read_outgoing(service: Service, request: Request, room: str, to: str | None,
                  sender: str | None = None) -> protocol.Outgoing:
    """The `Outgoing` of a send or broadcast request, its envelopes encoded here, once.

    The sender is the peer its token names, or `sender` (the server API's `protocol.SERVER_SENDER`) without a token.
    """
    protocol.check_id(room, "room")
    if to is not None:
        protocol.check_id(to, "peer")
    sender, token = (sender, None) if sender is not None else tokens.caller(request.token())
    key = protocol.check_idempotency_key(request.header("Idempotency-Key"))
    settings = service.settings
    out = protocol.Outgoing.read(request.body(), room, sender, token, to, key, time.time())
    # what could never be stored is not a full mailbox to wait out
    if len(out.tails) > settings.mailbox_limit:
        raise errors.PayloadTooLarge(
            f"a batch of {len(out.tails)} envelopes is more than a mailbox holds "
            f"(MAILBOX_LIMIT {settings.mailbox_limit}); send at most {settings.mailbox_limit} at a time"
        )
    # Encoding every envelope again only to count its bytes is paid by every send; a stored envelope is at most
    # 4 bytes a character plus its `{"seq":N,` head (< 32), so only a body that could pass the budget is counted.
    if 4 * sum(map(len, out.tails)) + 32 * len(out.tails) <= settings.mailbox_bytes:
        return out
    size = sum(protocol.stored_size(seq, tail) for seq, tail in enumerate(out.tails, 1))
    if size > settings.mailbox_bytes:
        raise errors.PayloadTooLarge(
            f"these envelopes take {size} bytes as stored, more than a mailbox holds "
            f"(MAILBOX_BYTES {settings.mailbox_bytes}); send less at a time"
        )
    return out


def send(service: Service, request: Request, room: str, to: str, sender: str | None = None) -> tuple[int, str]:
    out = read_outgoing(service, request, room, to, sender)
    seqs = service.backend.send(out)
    time.sleep(0)  # under gevent: a poll or stream of this process that the send woke writes before this answer
    request.environ[YIELDED] = True
    return 202, protocol.dumps({"seqs": seqs} if out.batch else {"seq": seqs[0]})


def broadcast(service: Service, request: Request, room: str, sender: str | None = None) -> tuple[int, str]:
    result = service.backend.broadcast(read_outgoing(service, request, room, None, sender))
    return 202, protocol.dumps({"delivered_to": sorted(result.delivered_to),
                                "mailbox_full": sorted(result.mailbox_full)})
