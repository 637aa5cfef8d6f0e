"""Webhooks (protocol 1.2): the loop that delivers the events the backend records, their retries, their signature.

The backend records each event in its room's outbox in the same atomic step as
the change it reports (backends/base.py). Every instance runs this loop: each
tick it leases the first event of rooms that are due (`claim_events`), POSTs
each, and settles it (`settle_event`), which hands over the room's next event
at once; so a room's events go out one at a time, in order, and a room whose
receiver fails waits for its retry while other rooms flow. At most
`CONCURRENCY` rooms have an attempt out per process, each bounded by
WEBHOOK_TIMEOUT: a receiver that hangs holds a few greenlets and connections,
never more. Requests come first: delivery is background work, and while the
worker is busy it has fewer attempts out (`Pace`). Signatures follow the
Standard Webhooks specification (docs/webhooks.md).
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

#: who is calling, in the receiver's logs: the service and the protocol revision its events follow
USER_AGENT = "signaling-webhooks/1.2"

#: rooms with an attempt out at once, per process
CONCURRENCY = 32
#: ... while the worker is busy (`Pace`): a hung receiver still leaves one attempt going
FLOOR = 2
#: the share of a tick the process ran or waited to run from which it counts as busy
BUSY = 0.8
#: events an attempt's thread delivers of its room back to back before it hands the room back and claims the
#: room waiting longest: every room gets its turn
CHAIN = 64
#: seconds between two looks for due rooms
TICK = 0.2
#: seconds between two readings of the backlog for the gauges
GAUGE_INTERVAL = 5.0
#: an answer's body up to this long (declared by Content-Length) is read, so its connection is kept for the next
#: attempt; a longer or chunked one is not, and its connection is closed
SHORT_BODY = 4096


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


def _short(response: httpx.Response) -> bool:
    """Whether the answer's body is known to be empty or short (SHORT_BODY): worth reading to keep the connection."""
    if response.status_code in (204, 304):
        return True
    length = response.headers.get("content-length", "")
    return length.isdigit() and int(length) <= SHORT_BODY


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


def demand() -> float:
    """Seconds the process's main thread (a gevent worker's only one) ran or waited to run: busy even while
    other processes starve it (Linux's /proc/self/schedstat); elsewhere, the process's CPU time."""
    try:
        with open("/proc/self/schedstat") as f:
            ran, waited, _ = f.read().split()
        return (int(ran) + int(waited)) / 1e9
    except (OSError, ValueError):
        return time.process_time()


class Pace:
    """How many attempts may be out at once. Requests first: after a tick in which the worker was busy (it ran
    or waited to run at least BUSY of it, delivery included) FLOOR, else twice as many as before, up to
    CONCURRENCY. A burst of requests may grow the queue; it drains after, at what the requests leave."""

    def __init__(self):
        self.allowed = CONCURRENCY
        self._demand, self._at = demand(), time.monotonic()

    def busy(self) -> float:
        """The share of the time since the last call the process ran or waited to run."""
        used, at = demand(), time.monotonic()
        share = (used - self._demand) / max(at - self._at, 1e-6)
        self._demand, self._at = used, at
        return share

    def update(self, busy: float) -> int:
        """The number allowed after a tick in which the process was busy `busy` of the time."""
        self.allowed = FLOOR if busy >= BUSY else min(CONCURRENCY, self.allowed * 2)
        return self.allowed


class Webhooks:
    """The delivery loop of one process: a thread (a greenlet under gevent) and at most CONCURRENCY attempts."""

    def __init__(self, backend: Backend, settings: Settings):
        self.backend = backend
        self.url = settings.webhook_url
        self.secrets = settings.webhook_secret
        self.schedule = Schedule(settings)
        # an attempt that never settles (its instance died) leaves its room to another once this passes: longer
        # than an attempt can take (WEBHOOK_TIMEOUT for each of connect, send, the headers, a short body)
        self.lease = 4 * settings.webhook_timeout + 5
        self.gone = False  # the receiver answered 410: no more deliveries from this process until restart
        self._timeout = httpx.Timeout(settings.webhook_timeout).as_dict()
        self._tls = httpx.create_ssl_context()  # once: each transport would load the CA bundle again
        # An httpx transport (and its one kept-alive connection) per attempt out, taken and given back: httpx's
        # pool checks every idle connection of a shared one on each request, which costs more than the POST.
        # No httpx.Client around it: its cookies, redirects and auth are nothing a webhook wants.
        self._transports: list[httpx.HTTPTransport] = []
        self.pace = Pace()
        self._out = 0  # attempts out now
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._gauged = -GAUGE_INTERVAL
        self._thread = threading.Thread(target=self._run, name="signaling-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            transports, self._transports = self._transports, []
        for transport in transports:  # their kept-alive connections; a thread out closes its own when it ends
            transport.close()

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
        free = self.pace.update(self.pace.busy()) - self._out
        if self.gone or free <= 0:
            return
        for event in self.backend.claim_events(now, now + self.lease, free):
            with self._lock:
                self._out += 1
            threading.Thread(target=self._deliver, args=(event,), daemon=True).start()

    def _deliver(self, event: Event | None) -> None:
        """Attempt the event, settle it, and go on with the room's next one while there is one."""
        transport = self._transports.pop() if self._transports else httpx.HTTPTransport(
            verify=self._tls, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        out, chained = True, 0
        try:
            while event is not None and not self._stop.is_set():
                retry_at = self.attempt(event, transport)
                now = time.time()
                chained += 1
                with self._lock:  # over the pace (it fell since): this thread ends
                    if self._out > self.pace.allowed:
                        self._out, out = self._out - 1, False
                # a room whose turn is over has its next event (if any) leased until now: due at once
                over = not out or chained >= CHAIN
                event = self.backend.settle_event(event, now, retry_at, now if over else now + self.lease)
                if not out:
                    break
                if over:  # the room had its turn: the one waiting longest (perhaps this one again) is next
                    event, chained = next(iter(self.backend.claim_events(now, now + self.lease, 1)), None), 0
        except Exception:  # the lease runs out and the room is delivered again: at least once
            log.exception("webhooks: settling an event of room %s failed", event.room if event else "?")
        finally:
            with self._lock:
                if out:
                    self._out -= 1
                if not self._stop.is_set():
                    self._transports.append(transport)
                    transport = None
            if transport is not None:
                transport.close()

    def attempt(self, event: Event, transport: httpx.HTTPTransport) -> float | None:
        """POST the event once: None when it is done (delivered, or given up), else when to try it again."""
        content, timestamp = body(event), int(time.time())
        headers = {"content-type": "application/json", "user-agent": USER_AGENT, "webhook-id": event.id,
                   "webhook-timestamp": str(timestamp),
                   "webhook-signature": signature(self.secrets, event.id, timestamp, content)}
        status, asked = None, None
        try:
            response = transport.handle_request(httpx.Request("POST", self.url, content=content, headers=headers,
                                                              extensions={"timeout": self._timeout}))
            try:
                status, asked = response.status_code, response.headers.get("retry-after")
                if _short(response):
                    response.read()
            finally:
                response.close()
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
