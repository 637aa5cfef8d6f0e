"""Prometheus metrics, summed over every gunicorn worker of this instance.

Under gunicorn, `gunicorn.conf.py` points PROMETHEUS_MULTIPROC_DIR at a fresh
folder before any worker starts: each worker writes its figures there and
`/metrics` adds them up, so a scrape is right whichever worker answers it.

What the store holds (live rooms and peers, whether it answers) is asked at
scrape time by the worker that answers, in two round trips at most
(`Backend.census`): the same figures from every instance of one store, so a
dashboard takes their `max`, not their sum. The worker's memory is read at
scrape time too, for the scraping worker, and by each worker every `MEMORY_EVERY` s.
"""

from __future__ import annotations

import functools
import os
import resource
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily

_pid = os.getpid()


def _process_id() -> int:
    """This process's pid, read once a process: prometheus-client asks at every update (a system call each)."""
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # what prometheus-client read at its import: multiprocess mode
    values.ValueClass = values.MultiProcessValue(_process_id)

JOINS = Counter("signaling_joins", "Join requests, by HTTP status", ["status"])
SENDS = Counter("signaling_sends", "Send and broadcast requests, by kind and HTTP status", ["kind", "status"])
DELIVERIES = Counter("signaling_deliveries", "Envelopes handed to peers, in poll answers and on streams")
HELD_POLLS = Gauge("signaling_held_polls", "Polls held open right now", multiprocess_mode="livesum")
OPEN_STREAMS = Gauge("signaling_open_streams", "Streams (text/event-stream receives) open right now",
                     multiprocess_mode="livesum")
STREAMS_ENDED = Counter("signaling_streams_ended", "Streams ended, by why (signaling/stream.py)", ["reason"])
POLL_WAIT = Histogram(
    "signaling_poll_wait_seconds", "How long a poll was held before it answered",
    buckets=(0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 10, 20, 30),
)
PEERS_TIMED_OUT = Counter("signaling_peers_timed_out", "Peers removed for silence")
# Webhooks (signaling/webhooks.py). The backlog is the whole store's, read by every worker: the max of theirs.
WEBHOOKS_DELIVERED = Counter("signaling_webhooks_delivered", "Webhook events delivered (answered 2xx)")
WEBHOOKS_RETRIED = Counter("signaling_webhooks_retried", "Webhook attempts that failed and will be tried again")
WEBHOOKS_GIVEN_UP = Counter("signaling_webhooks_given_up", "Webhook events given up (WEBHOOK_RETRY_FOR passed)")
WEBHOOK_QUEUE = Gauge("signaling_webhook_queue_depth", "Webhook events recorded and not yet delivered or given up",
                      multiprocess_mode="max")
WEBHOOK_OLDEST = Gauge("signaling_webhook_oldest_seconds", "Age of the oldest undelivered webhook event (0: none)",
                       multiprocess_mode="max")
OPEN_CONNECTIONS = Gauge("signaling_open_connections", "Client connections open right now (each one open file)",
                         multiprocess_mode="livesum")
REQUESTS = Counter("signaling_requests", "Requests answered, by endpoint (method and path template) and status",
                   ["endpoint", "status"])
REDIS_ROUND_TRIPS = Histogram(
    "signaling_redis_round_trip_seconds", "Round trips to Redis (each carries every request waiting), by duration",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5),
)
#: one series a worker (multiprocess mode adds its `pid` label)
MEMORY = Gauge("signaling_worker_resident_memory_bytes", "Resident memory of each worker process",
               multiprocess_mode="liveall")
CONNECTIONS_SHED = Counter("signaling_connections_shed",
                           "Connections answered 503 server_busy at once: the worker had no open file left")


@functools.cache
def child(metric, *labels):
    """A labelled metric's series, looked up once: `labels()` takes a lock and checks every label each call."""
    return metric.labels(*labels)


#: seconds between two readings of a worker's memory outside scrapes (each request would be too often)
MEMORY_EVERY = 10.0
_memory_read = 0.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def note_memory(at_most_every: float = 0.0) -> None:
    """Record this worker's resident memory, unless it was read less than `at_most_every` seconds ago."""
    global _memory_read
    moment = time.monotonic()
    if moment - _memory_read < at_most_every:
        return
    _memory_read = moment
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident = int(statm.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the peak, which is what getrusage has
        resident = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    MEMORY.set(resident)


class Census:
    """The store's live rooms and peers and whether it answers, asked when scraped (`census` a callable)."""

    def __init__(self, census):
        self._census = census

    def collect(self):
        up = GaugeMetricFamily("signaling_backend_up", "1 when the store answered this scrape's census, else 0")
        try:
            rooms, peers = self._census()
        except Exception:  # unreachable: said by the 0, and the scrape still answers
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("signaling_rooms", "Rooms with members in the store (all instances')", value=rooms)
        yield GaugeMetricFamily("signaling_peers", "Peers in the store's rooms (all instances'); past "
                                "CENSUS_ROOMS rooms, estimated from that many", value=peers)


def exposition(census=None) -> tuple[bytes, str]:
    """The text format of every metric (all workers' when running under gunicorn), and `census()`'s figures."""
    note_memory()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    text = generate_latest(registry)
    if census is not None:
        store = CollectorRegistry()
        store.register(Census(census))
        text += generate_latest(store)
    return text, CONTENT_TYPE_LATEST
