"""The deployment docs/deploying.md recommends, as written: docs/nginx.conf in front of two instances on one Redis.

Round-robin and no stickiness, so consecutive requests of one peer land on
different instances: held polls must still pass through and wake at once,
envelopes arrive in order, and X-Forwarded-For carries each client's address
to the per-IP limits (TRUSTED_PROXIES=1).
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

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
