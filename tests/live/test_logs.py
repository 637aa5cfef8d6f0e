"""The log on the real server: one format with timestamps, an outage in two lines, nothing left in /tmp."""

from __future__ import annotations

import re
import time

import pytest

from ..support.helpers import Api
from .test_faults import wait_until

pytestmark = pytest.mark.live

#: signaling/logs.py LINE: ISO 8601 time with milliseconds and offset, [pid], [LEVEL], logger: message
LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d \[\d+\] \[[A-Z]+\] [\w.]+: .+")


def test_every_line_has_one_format_with_a_timestamp(start_server):
    server = start_server()
    api = Api.over_http(server.url)
    api.peer("l1", "alice").poll()
    api.request("GET", "/rooms/l1/peers/nobody/messages")  # an app line or not, an access line
    server.stop()
    lines = server.log.read_text().splitlines()
    assert any("gunicorn.access: 127.0.0.1 \"POST /rooms/l1/peers\" 201" in line for line in lines), lines
    assert any("gunicorn.error: Booting worker" in line for line in lines), lines
    assert [line for line in lines if not LINE.fullmatch(line)] == []


def test_a_redis_outage_is_one_line_when_it_starts_and_one_when_it_ends(start_server, private_redis):
    server = start_server(env={"REDIS_URL": private_redis.url, "REAP_INTERVAL": "0.1"})
    private_redis.stop()
    time.sleep(3)  # thirty reaper ticks, and the wake-up listener's retries
    private_redis.start()
    wait_until(lambda: "backend unavailable: over after" in server.log.read_text(), 15, "the outage's end logged")
    log = server.log.read_text()
    began = [line for line in log.splitlines() if "[WARNING]" in line and "backend unavailable" in line]
    ended = [line for line in log.splitlines() if "backend unavailable: over after" in line]
    assert len(began) == 1 and len(ended) == 1, log[-4000:]
    assert "reaper: backend unavailable, will retry" not in log and "wake-up channel lost" not in log.replace(
        began[0], "")


def test_the_metrics_folder_goes_when_the_server_stops(start_server, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    server = start_server(env={"TMPDIR": str(scratch)})
    assert [p.name for p in scratch.iterdir() if p.name.startswith("signaling-metrics-")], "made where TMPDIR says"
    assert server.stop() == 0
    assert [p.name for p in scratch.iterdir() if p.name.startswith("signaling-metrics-")] == []
