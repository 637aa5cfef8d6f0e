"""Streaming receive (protocol 1.2): one open answer per peer, its envelopes as Server-Sent Events.

A poll answers once, and a busy peer's every other request is the poll that
only asks for the next delivery. A stream is the same held look at the
mailbox (`hub.Reader`) that does not end at its first delivery: the WSGI
server writes each chunk this iterable yields as it comes (chunked transfer
encoding), and closes it when the client goes away.

What one stream writes: a first line at once (`retry:`), so the headers leave
before any envelope; then every envelope past the cursor, oldest first, and
each new one as it is stored, as `id: <seq>` / `data: <envelope>` events (a
batch in one write); a comment when `STREAM_HEARTBEAT` passes with nothing
written. It acknowledges nothing but the cursor it opened with, and ends
cleanly (the client reconnects with `Last-Event-ID`) after `STREAM_MAX`
(spread down by up to 10 %), when what it delivered reaches half a mailbox
(`MAILBOX_LIMIT` or `MAILBOX_BYTES`), when a newer poll or stream of the peer
starts, when the peer is gone, or when the process stops (`Hub.close`).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import errors, metrics, protocol
from .backends.base import Listener
from .http import cors_headers
from .hub import Look, Reader
from .tokens import hash_token

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
#: how long a client waits before it reconnects to a stream that ended (EventSource reads it)
RETRY_MS = 1000
FIRST_LINE = f"retry: {RETRY_MS}\n\n".encode()
HEARTBEAT = b":\n\n"
#: an Accept weight as RFC 9110 spells one: 0 to 1 with at most three decimals
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def accepted(accept: str | None) -> bool:
    """Whether an `Accept` header lists text/event-stream with a weight above 0 (`;q=0` refuses it).

    Among several types it is enough that this one is there: a client that
    lists it can read a stream. A weight that is no weight does not count.
    """
    if not accept or "event-stream" not in accept.lower():
        return False
    for item in accept.split(","):
        kind, *parameters = item.split(";")
        if kind.strip().lower() != MEDIA_TYPE:
            continue
        weight = "1"
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                weight = value.strip()
        if _QVALUE.fullmatch(weight) and float(weight) > 0:
            return True
    return False


def events(envelopes: list[str]) -> bytes:
    """Envelopes as Server-Sent Events: `id:` their seq, `data:` their JSON (one line: JSON escapes newlines)."""
    return "".join(f"id: {protocol.seq_of(e)}\ndata: {e}\n\n" for e in envelopes).encode()


class Stream:
    """One open stream: the iterable of byte chunks a WSGI server writes, and closes whatever happens.

    Opened only once its first look in the mailbox has passed every check, so
    a refusal is an ordinary JSON answer and never a half-open stream.
    """

    __slots__ = ("_reader", "_listener", "_hub", "_keep_alive", "_heartbeat", "_deadline", "_most_messages",
                 "_most_bytes", "_unacked", "_unacked_bytes", "_closed", "_chunks")

    def __init__(self, service: Service, reader: Reader, listener: Listener):
        settings = service.settings
        self._reader, self._listener, self._hub, self._keep_alive = reader, listener, service.hub, service.keep_alive
        self._heartbeat = settings.stream_heartbeat
        self._deadline = time.monotonic() + settings.stream_max * random.uniform(0.9, 1.0)
        self._most_messages, self._most_bytes = settings.mailbox_limit, settings.mailbox_bytes
        self._unacked = self._unacked_bytes = 0  # what it delivered that still counts against the mailbox
        self._closed = False
        self._chunks = self._write()
        self._keep_alive.add(id(self), listener)
        metrics.OPEN_STREAMS.inc()

    @classmethod
    def open(cls, service: Service, fetch: protocol.Fetch, look: Look) -> Stream:
        """Look in the mailbox (raising as a poll does) and hold the stream: the first look ends older ones."""
        reader = service.hub.read(fetch, look)
        return cls(service, reader, Listener(fetch.room, fetch.peer, hash_token(fetch.token or "")))

    @staticmethod
    def headers(service: Service, origin: str | None, request_id: str) -> list[tuple[str, str]]:
        """A stream's headers: never stored, never buffered by a proxy (nginx reads X-Accel-Buffering)."""
        return [
            ("Content-Type", MEDIA_TYPE), ("Cache-Control", "no-store"), ("X-Accel-Buffering", "no"),
            ("X-Request-Id", request_id), *cors_headers(service.settings, origin),
        ]

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        """The WSGI server is done with it (the client went away, or the stream ended): stop holding."""
        self._chunks.close()  # a stream suspended at a write ends there, its `finally` ends it
        self._end("client_gone")  # one never started ends here

    def _write(self) -> Iterator[bytes]:
        reader, reason = self._reader, None
        try:
            yield FIRST_LINE + self._deliver(reader.first)
            reason = self._backlog()
            while reason is None:
                until = min(self._deadline, time.monotonic() + self._heartbeat)  # pushed back by every write
                envelopes = reader.next(until)
                if envelopes:
                    yield self._deliver(envelopes)
                    reason = self._backlog()
                elif reader.ended:
                    reason = "closing" if self._hub.closing else "superseded"
                elif until >= self._deadline:
                    reason = "max_age"
                else:
                    yield HEARTBEAT
        except errors.SignalingError as error:  # not_joined (left, timed out), backend_unavailable...
            reason = error.code
        except Exception:  # headers are gone: the stream can only end; the client reconnects
            log.exception("the stream of %s in %s failed", self._listener.peer, self._listener.room)
            reason = "error"
        finally:
            self._end(reason or "client_gone")

    def _deliver(self, envelopes: list[str]) -> bytes:
        for envelope in envelopes:
            if not protocol.is_server_event(envelope):  # server events never count against a mailbox
                self._unacked += 1
                # as stored, in UTF-8: ASCII (most envelopes; a flag, no scan) needs no encoding to count
                self._unacked_bytes += len(envelope) if envelope.isascii() else len(envelope.encode())
        metrics.DELIVERIES.inc(len(envelopes))
        return events(envelopes)

    def _backlog(self) -> str | None:
        """"backlog" once what it delivered, still unacknowledged, is half a mailbox: senders would soon see it
        full. The client's reconnect acknowledges it."""
        if 2 * self._unacked >= self._most_messages or 2 * self._unacked_bytes >= self._most_bytes:
            return "backlog"
        return None

    def _end(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._reader.close()
        self._keep_alive.discard(id(self))
        metrics.OPEN_STREAMS.dec()
        metrics.child(metrics.STREAMS_ENDED, reason).inc()
