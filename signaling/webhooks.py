"""Webhooks (protocol 1.2): the loop that delivers the events the backend records, their retries, their signature.

The backend records each event in its room's outbox in the same atomic step as
the change it reports (backends/base.py). Every instance runs this loop: each
tick it leases the first event of rooms that are due (`claim_events`), POSTs
each, and settles it (`settle_event`), which hands over the room's next event
at once; so a room's events go out one at a time, in order, and a room whose
receiver fails waits for its retry while other rooms flow. At most
`CONCURRENCY` rooms have an attempt out per process, each bounded by
WEBHOOK_TIMEOUT: a receiver that hangs holds a few greenlets and connections,
never more. Signatures follow the Standard Webhooks specification (docs/webhooks.md).
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import hmac
import logging
import threading
import time

import httpx

from . import errors, metrics
from .backends.base import Backend, Event
from .config import Settings

log = logging.getLogger(__name__)

#: rooms with an attempt out at once, per process
CONCURRENCY = 32
#: seconds between two looks for due rooms
TICK = 0.2
#: seconds between two readings of the backlog for the gauges
GAUGE_INTERVAL = 5.0


def signature(secrets: tuple[str, ...], event_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature`: "v1,<base64 HMAC-SHA256 of '<id>.<timestamp>.<body>'>" for each secret, space-separated."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(base64.b64decode(secret.removeprefix("whsec_")), signed,
                                          hashlib.sha256).digest()).decode()
        for secret in secrets
    )


def body(event: Event) -> bytes:
    """The POST body: {"type", "timestamp" (RFC 3339, UTC), "data"}, the same on every attempt."""
    when = datetime.datetime.fromtimestamp(event.ts, datetime.UTC).isoformat(timespec="milliseconds")
    return f'{{"type":"{event.type}","timestamp":"{when.replace("+00:00", "Z")}","data":{event.data}}}'.encode()


def retry_after(value: str | None, now: float) -> float | None:
    """A `Retry-After` header's seconds from now (delay-seconds or an HTTP date), or None."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return email.utils.parsedate_to_datetime(value).timestamp() - now
    except (TypeError, ValueError):
        return None


class Schedule:
    """When a failed event is tried again: WEBHOOK_RETRY_SCHEDULE's waits (the last repeats), or a longer
    Retry-After, until WEBHOOK_RETRY_FOR after the event; then it is given up."""

    def __init__(self, settings: Settings):
        self.waits = tuple(float(wait) for wait in settings.webhook_retry_schedule)
        self.retry_for = settings.webhook_retry_for

    def retry_at(self, event: Event, now: float, asked: float | None = None) -> float | None:
        """When to try `event` again after its failed attempt at `now`; None: give it up."""
        wait = self.waits[min(event.attempts, len(self.waits) - 1)]
        at = now + max(wait, asked or 0)
        return at if at <= event.ts + self.retry_for else None


class Webhooks:
    """The delivery loop of one process: a thread (a greenlet under gevent) and at most CONCURRENCY attempts."""

    def __init__(self, backend: Backend, settings: Settings):
        self.backend = backend
        self.url = settings.webhook_url
        self.secrets = settings.webhook_secret
        self.schedule = Schedule(settings)
        # an attempt that never settles (its instance died) leaves its room to another once this passes
        self.lease = 3 * settings.webhook_timeout + 5
        self.gone = False  # the receiver answered 410: no more deliveries from this process until restart
        self._client = httpx.Client(
            timeout=settings.webhook_timeout, follow_redirects=False,
            limits=httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY),
        )
        self._out = 0  # attempts out now
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._gauged = -GAUGE_INTERVAL
        self._thread = threading.Thread(target=self._run, name="signaling-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            try:
                self.tick(time.time())
            except errors.BackendUnavailable:
                log.warning("webhooks: backend unavailable, will retry")
            except Exception:
                log.exception("webhooks failed; will retry")

    def tick(self, now: float) -> None:
        """Read the backlog now and then; lease due rooms' first events, each delivered by a thread of its own."""
        if now - self._gauged >= GAUGE_INTERVAL:
            self._gauged = now
            depth, oldest = self.backend.event_backlog(now)
            metrics.WEBHOOK_QUEUE.set(depth)
            metrics.WEBHOOK_OLDEST.set(max(0.0, now - oldest) if oldest is not None else 0)
        free = CONCURRENCY - self._out
        if self.gone or free <= 0:
            return
        for event in self.backend.claim_events(now, now + self.lease, free):
            with self._lock:
                self._out += 1
            threading.Thread(target=self._deliver, args=(event,), daemon=True).start()

    def _deliver(self, event: Event | None) -> None:
        """Attempt the event, settle it, and go on with the room's next one while there is one."""
        try:
            while event is not None and not self._stop.is_set():
                retry_at = self.attempt(event)
                now = time.time()
                event = self.backend.settle_event(event, now, retry_at, now + self.lease)
        except Exception:  # the lease runs out and the room is delivered again: at least once
            log.exception("webhooks: settling an event of room %s failed", event.room if event else "?")
        finally:
            with self._lock:
                self._out -= 1

    def attempt(self, event: Event) -> float | None:
        """POST the event once: None when it is done (delivered, or given up), else when to try it again."""
        content, timestamp = body(event), int(time.time())
        headers = {"content-type": "application/json", "webhook-id": event.id,
                   "webhook-timestamp": str(timestamp),
                   "webhook-signature": signature(self.secrets, event.id, timestamp, content)}
        status, asked = None, None
        try:
            with self._client.stream("POST", self.url, content=content, headers=headers) as response:
                status, asked = response.status_code, response.headers.get("retry-after")
        except httpx.HTTPError as exc:
            log.info("webhook %s (%s, room %s) failed: %s", event.id, event.type, event.room, exc or type(exc).__name__)
        now = time.time()
        if status is not None and 200 <= status < 300:
            metrics.WEBHOOKS_DELIVERED.inc()
            return None
        if status == 410:
            self.gone = True
            log.warning("webhooks: %s answered 410 Gone; no more deliveries until restart", self.url)
        at = self.schedule.retry_at(event, now, retry_after(asked, now))
        if at is None:
            metrics.WEBHOOKS_GIVEN_UP.inc()
            log.warning("webhook %s (%s, room %s) given up after %d attempts", event.id, event.type, event.room,
                        event.attempts + 1)
            return None
        metrics.WEBHOOKS_RETRIED.inc()
        return at
