"""Every endpoint of the API, one row each: the one routing table (tests/test_openapi.py reads it too).

`plain` rows are answered by `http.Front` before Flask (messages.py); the
others are Flask views (api.py; server_api.py for the server API). `count` counts each answer by its status.
"""

from __future__ import annotations

from . import api, messages, metrics, server_api
from .http import Route

ROOM_PEER = "/rooms/{room}/peers/{peer}"

ROUTES = (
    Route("GET", ROOM_PEER + "/messages", messages.poll, plain=True),
    Route("POST", ROOM_PEER + "/messages", messages.send, plain=True,
          count=lambda status: metrics.child(metrics.SENDS, "send", status).inc()),
    Route("POST", "/rooms/{room}/messages", messages.broadcast, plain=True,
          count=lambda status: metrics.child(metrics.SENDS, "broadcast", status).inc()),
    Route("POST", "/rooms/{room}/peers", api.join, count=lambda status: metrics.child(metrics.JOINS, status).inc()),
    Route("GET", "/rooms/{room}/peers", api.members),
    Route("DELETE", ROOM_PEER, api.leave),
    Route("POST", ROOM_PEER + "/leave", api.leave_beacon),
    Route("GET", ROOM_PEER + "/ice-servers", api.refresh_ice_servers),
    Route("GET", "/server/rooms/{room}", server_api.room),
    Route("POST", "/server/rooms/{room}/peers/{peer}/messages", server_api.send),
    Route("POST", "/server/rooms/{room}/messages", server_api.broadcast),
    Route("DELETE", "/server/rooms/{room}/peers/{peer}", server_api.remove),
    Route("DELETE", "/server/rooms/{room}", server_api.close),
    Route("GET", "/healthz", api.healthz),
    Route("GET", "/livez", api.livez),
    Route("GET", "/readyz", api.readyz),
    Route("GET", "/openapi.json", api.openapi),
    Route("GET", "/metrics", api.prometheus_metrics, cors=False),
    Route("GET", "/", api.demo),
)
