"""The deployment docs/deploying.md recommends, as written: docs/nginx.conf in front of two instances on one Redis.

Round-robin and no stickiness, so consecutive requests of one peer land on
different instances: held polls must still pass through and wake at once,
envelopes arrive in order, and X-Forwarded-For carries each client's address
to the per-IP limits (TRUSTED_PROXIES=1).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time

import pytest

from signaling.config import Settings

from ..support.helpers import Api, held_poll
from ..support.servers import ROOT, NginxServer

pytestmark = pytest.mark.live


def api_through(nginx, source: str | None = None) -> Api:
    return Api.over_http(nginx.url, timeout=40, context=nginx.ssl_context(), source=source)


def requests_served(instance, what: str) -> int:
    """How many access-log lines of this instance contain `what`."""
    return sum(what in line for line in instance.log.read_text().splitlines())


def test_a_held_poll_passes_through_and_wakes_at_once(start_behind_nginx):
    nginx, _ = start_behind_nginx()
    api = api_through(nginx)
    assert api.request("GET", "/metrics").status == 404  # the configuration keeps metrics off the internet
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    alice.drain()
    empty = held_poll(bob, wait=1)
    empty["thread"].join(30)
    assert empty["reply"].status == 200 and empty["reply"].body["messages"] == []
    assert empty["took"] >= 0.9  # held for its wait through the proxy, not answered early

    poll = held_poll(bob, wait=20)
    time.sleep(1)  # the poll is held (on either instance)
    assert alice.send("bob", "offer", {"sdp": "v=0"}).status == 202
    poll["thread"].join(30)
    reply = poll["reply"]
    assert reply.status == 200 and [m["type"] for m in reply.body["messages"]] == ["offer"]
    assert poll["took"] < 10, "the poll was not woken by the send; it ran out its wait"


def test_envelopes_arrive_in_order_whichever_instance_serves_each_request(start_behind_nginx):
    nginx, instances = start_behind_nginx()
    api = api_through(nginx)
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    received = []
    for i in range(40):
        assert alice.send("bob", "note", i).status == 202
        if i % 7 == 3:
            received += bob.receive(limit=5)
    for _ in range(20):
        batch = bob.receive()
        if not batch:
            break
        received += batch
    assert [m["data"] for m in received] == list(range(40))
    assert [m["seq"] for m in received] == list(range(1, 41))
    sends = [requests_served(instance, "POST /rooms/r1/peers/bob/messages") for instance in instances]
    assert sum(sends) == 40 and min(sends) >= 15, f"not round-robin: {sends}"


def test_x_forwarded_for_reaches_the_per_ip_limits(start_behind_nginx):
    """Each client counts on its own address, not nginx's; a forged X-Forwarded-For does not help."""
    nginx, _ = start_behind_nginx(env={"PEERS_PER_IP": "2", "JOINS_PER_IP_PER_MINUTE": "0",
                                       "ROOMS_PER_IP": "0", "SENDS_PER_PEER_PER_SECOND": "0"}, limits=True)
    first, second = api_through(nginx, source="127.0.0.2"), api_through(nginx, source="127.0.0.3")
    assert first.join("r1", "a").status == 201
    assert first.join("r1", "b").status == 201
    assert first.join("r1", "c").code == "too_many_peers"
    forged = first.request("POST", "/rooms/r1/peers", {"peer_id": "c"}, headers={"X-Forwarded-For": "198.51.100.7"})
    assert forged.code == "too_many_peers"
    assert second.join("r1", "c").status == 201


def test_the_deployment_guide_shows_the_configuration_that_is_tested():
    guide = (ROOT / "docs" / "deploying.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", guide, re.S)
    assert blocks == [NginxServer.CONF.read_text()]


def test_nginx_takes_the_configuration_without_a_warning(tmp_path):
    check = subprocess.run([*NginxServer(tmp_path, ["127.0.0.1:1", "127.0.0.1:2"]).configure(), "-t"],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "test is successful" in check.stderr, check.stderr
    assert "[warn]" not in check.stderr, check.stderr


def test_nginx_waits_longer_than_a_held_poll_or_a_quiet_stream():
    """Past proxy_read_timeout without a byte, nginx gives up on the instance: a 504 for a poll, a cut stream."""
    [timeout] = re.findall(r"(?m)^\s*proxy_read_timeout (\d+)s;", NginxServer.CONF.read_text())
    defaults = Settings()
    assert int(timeout) >= 2 * max(defaults.poll_wait, defaults.stream_heartbeat)  # with room to spare


class Curl:
    """curl reading a stream through nginx, each line of it kept with the moment it arrived."""

    def __init__(self, nginx: NginxServer, peer, version: str):
        self.lines: list[tuple[float, str]] = []
        self.process = subprocess.Popen(
            ["curl", "--silent", "--show-error", "--no-buffer", "--compressed", f"--http{version}", "--max-time", "60",
             "--cacert", str(nginx.certificate), "--write-out", "\nversion %{http_version}\n",
             "--header", "Accept: text/event-stream", "--header", f"Authorization: Bearer {peer.token}",
             "--header", f"Last-Event-ID: {peer.cursor}",
             f"{nginx.url}/rooms/{peer.room}/peers/{peer.id}/messages"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self._reader.join(5)
        self.process.stdout.close()
        self.process.stderr.close()

    def wait_for(self, check, timeout: float) -> tuple[float, str]:
        """The first line `check` accepts, and when it came; fails after `timeout` seconds without one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for arrived, line in list(self.lines):
                if check(line):
                    return arrived, line
            time.sleep(0.01)
        raise AssertionError(f"no such line within {timeout}s: {[line for _, line in self.lines]}")


def envelope_in(line: str):
    """The data of the envelope a stream's `data:` line carries, else None."""
    return json.loads(line.removeprefix("data: "))["data"] if line.startswith("data: ") else None


@pytest.mark.parametrize("version", ["1.1", "2"], ids=["http1.1", "http2"])
def test_a_stream_passes_through_event_by_event(start_behind_nginx, version):
    """Each envelope reaches the client as it is sent, not in a burst when the stream ends (needs the stream, 1.2)."""
    nginx, _ = start_behind_nginx()
    api = api_through(nginx)
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    bob.drain()
    opened = time.monotonic()
    curl = Curl(nginx, bob, version)
    try:
        first, _ = curl.wait_for(lambda line: line != "", 5)
        assert first - opened < 2, "the stream's first line was held back"
        for n in range(3):
            time.sleep(0.5)
            sent = time.monotonic()
            assert alice.send("bob", "n", n).status == 202
            arrived, _ = curl.wait_for(lambda line, n=n: envelope_in(line) == n, 5)
            assert arrived - sent < 1, f"event {n} took {arrived - sent:.1f}s through nginx"
        assert bob.poll(wait=0.5).status == 200  # a newer held poll of the peer ends its stream, which ends cleanly
        assert curl.process.wait(10) == 0, curl.process.stderr.read()
    finally:
        curl.stop()
    _, line = curl.wait_for(lambda line: line.startswith("version "), 5)
    assert line == f"version {version}"
