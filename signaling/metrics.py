"""Prometheus metrics, summed over every gunicorn worker of this instance.

Under gunicorn, `gunicorn.conf.py` points PROMETHEUS_MULTIPROC_DIR at a fresh
folder before any worker starts: each worker writes its figures there and
`/metrics` adds them up, so a scrape is right whichever worker answers it.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

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
OPEN_CONNECTIONS = Gauge("signaling_open_connections", "Client connections open right now (each one open file)",
                         multiprocess_mode="livesum")
CONNECTIONS_SHED = Counter("signaling_connections_shed",
                           "Connections answered 503 server_busy at once: the worker had no open file left")


def exposition() -> tuple[bytes, str]:
    """The text format of every metric (all workers' when running under gunicorn)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
