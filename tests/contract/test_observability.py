"""Request ids, Prometheus metrics (right with several workers) and logs that never hold a token."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ..support.helpers import Api


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match and match[1] == name and ",".join(sorted((match[2] or "").split(","))).strip(",") == wanted:
            return float(match[3])
    return 0.0


def test_every_response_has_a_request_id_and_errors_carry_it(api):
    ok = api.request("POST", "/rooms/r1/peers", {})
    assert re.fullmatch(r"[0-9a-f]{32}", ok.headers["x-request-id"])
    error = api.request("GET", "/rooms/r1/peers/x/messages", headers={"X-Request-Id": "trace-42"})
    assert error.headers["x-request-id"] == "trace-42"
    assert error.body["error"]["request_id"] == "trace-42"
    odd = api.request("GET", "/nowhere", headers={"X-Request-Id": "not ok\u00e9"})
    assert odd.body["error"]["request_id"] == odd.headers["x-request-id"] != "not ok"


def test_metrics_count_joins_sends_deliveries_and_timeouts(make_app):
    api = Api.over_flask(make_app(peer_ttl=0.6, poll_wait=0.3, reap_interval=0.05, mailbox_limit=1).test_client())
    before = api.request("GET", "/metrics").raw.decode()
    alice, bob = api.peer("m1", "alice"), api.peer("m1", "bob")
    api.join("m1", "alice")  # 409
    alice.send("bob")
    alice.send("bob")  # 429
    alice.broadcast("x")
    bob.receive()
    time.sleep(1.0)  # both go silent and time out
    after = api.request("GET", "/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.raw.decode()

    def grew(name, **labels):
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert grew("signaling_joins_total", status="201") == 2
    assert grew("signaling_joins_total", status="409") == 1
    assert grew("signaling_sends_total", kind="send", status="202") == 1
    assert grew("signaling_sends_total", kind="send", status="429") == 1
    assert grew("signaling_sends_total", kind="broadcast", status="202") == 1
    assert grew("signaling_deliveries_total") == 1
    assert grew("signaling_peers_timed_out_total") == 2


@pytest.mark.live
def test_metrics_are_right_with_two_workers_and_logs_hold_no_token(start_server, redis_url):
    server = start_server(env={"REDIS_URL": redis_url, "ROOM_CAPACITY": "500"}, workers=2)
    api = Api.over_http(server.url)

    def worker_pids() -> set[str]:
        """The workers that answered joins (readiness probes may have reached both already)."""
        access = r'\[(\d+)\] \[INFO\] gunicorn\.access: \S+ "POST /rooms/big/peers" '
        return set(re.findall(access, server.log.read_text()))

    peers = []
    with ThreadPoolExecutor(8) as pool:  # concurrent joins until both workers have answered some
        while len(worker_pids()) < 2 and len(peers) < 400:
            peers += pool.map(lambda i: api.peer("big", f"p{i}"), range(len(peers), len(peers) + 16))
            time.sleep(0.05)
    assert len(worker_pids()) == 2, "both workers answered joins"
    for peer in peers[1:]:
        peers[0].send(peer.id, "hello")
    beacon = api.request("POST", f"/rooms/big/peers/{peers[-1].id}/leave", data=f'{{"token":"{peers[-1].token}"}}')
    assert beacon.status == 204
    polls = [threading.Thread(target=p.poll, kwargs={"after": 999, "wait": 3}) for p in peers[:5]]  # 400s
    for peer in peers[5:8]:
        peer.drain()  # so the next poll is held
    held = [threading.Thread(target=p.poll, kwargs={"wait": 3}) for p in peers[5:8]]
    for thread in polls + held:
        thread.start()
    time.sleep(0.5)
    for _ in range(6):  # whichever worker answers, the figures are the instance's
        text = api.request("GET", "/metrics").raw.decode()
        assert metric(text, "signaling_joins_total", status="201") == len(peers)
        assert metric(text, "signaling_sends_total", kind="send", status="202") == len(peers) - 1
        assert metric(text, "signaling_held_polls") == 3
    for thread in polls + held:
        thread.join(10)
    log = server.log.read_text()
    joins = [line for line in log.splitlines() if '"POST /rooms/big/peers"' in line]
    assert len(joins) == len(peers) and all(re.search(r"request_id=[0-9a-f]{32}", line) for line in joins)
    for peer in peers:
        assert peer.token.split(".", 1)[1] not in log
