"""The real thing: gunicorn with gevent workers, over HTTP, on memory and on a real Redis."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from signaling.backends.redis import LANES

from ..support.helpers import Api, Peer, held_poll
from ..support.servers import ROOT, LiveServer, free_port

pytestmark = pytest.mark.live


def alice_and_a_held_poll_of_bob(server: LiveServer) -> tuple[Peer, dict]:
    """Alice, and a poll of Bob's (who joined second, so has nothing to read) held on `server`."""
    api = Api.over_http(server.url)
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    bob.receive()
    poll = held_poll(bob)
    time.sleep(0.5)
    return alice, poll


def test_a_worker_starts_without_warnings(start_server):
    """The worker monkey-patches before the app's modules load: no MonkeyPatchWarning (PyJWT imports ssl)."""
    server = start_server(env={"JOIN_SECRET": "s" * 32})
    assert Api.over_http(server.url).request("GET", "/healthz").status == 200
    log = server.log.read_text()
    assert "Booting worker" in log
    assert "Warning" not in log, log


def test_a_held_poll_is_woken_by_a_send(live_server):
    alice, poll = alice_and_a_held_poll_of_bob(live_server)
    assert poll["thread"].is_alive()
    sent = time.monotonic()
    alice.send("bob", "offer", {"sdp": "v=0"})
    poll["thread"].join(5)
    assert time.monotonic() - sent < 0.5
    assert [m["type"] for m in poll["reply"].body["messages"]] == ["offer"]


def test_a_held_poll_is_answered_while_another_connection_floods_sends(live_server):
    """A connection whose next request is already buffered must not keep the worker to itself."""
    alice, poll = alice_and_a_held_poll_of_bob(live_server)
    body = '{"type":"n"}'
    request = (
        f"POST /rooms/r1/peers/bob/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {alice.token}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    sends = 200
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as flood:
        flood.sendall(request * sends)  # pipelined: the worker never waits for this connection's next request
        poll["thread"].join(10)
        answers = b""
        while answers.count(b"HTTP/1.1 202") < sends:
            answers += flood.recv(65536)
    got = poll["reply"].body["messages"]
    # answered as the first sends landed, not once the worker had worked through the whole flood
    assert 1 <= len(got) < 20, len(got)


def test_the_memory_backend_refuses_several_workers(tmp_path):
    server = LiveServer(tmp_path, workers=2)
    process = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
        cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=30,
    )
    assert process.returncode != 0
    assert "Set REDIS_URL" in process.stderr + process.stdout


def test_a_bad_setting_is_refused_with_its_name(tmp_path):
    server = LiveServer(tmp_path, env={"POLL_WAIT": "soon"})
    process = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
        cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=30,
    )
    assert process.returncode != 0
    assert "POLL_WAIT='soon'" in process.stderr + process.stdout


def test_two_instances_on_one_redis_wake_each_others_polls(start_server, redis_url):
    one = Api.over_http(start_server(env={"REDIS_URL": redis_url}).url)
    two = Api.over_http(start_server(env={"REDIS_URL": redis_url}, workers=2).url)
    alice, bob = one.peer("r1", "alice"), two.peer("r1", "bob")
    alice.receive()
    for sender, receiver in ((alice, bob), (bob.on(one), alice.on(two))):
        poll = held_poll(receiver)
        time.sleep(0.5)
        sent = time.monotonic()
        assert sender.send(receiver.id, "offer", sender.id).status == 202
        poll["thread"].join(5)
        assert time.monotonic() - sent < 0.5
        assert [m["data"] for m in poll["reply"].body["messages"]] == [sender.id]
        receiver.cursor = poll["reply"].body["cursor"]
        receiver.receive()  # acknowledge


def test_held_polls_share_a_fixed_few_redis_connections(start_server, redis_url, redis_server):
    server = start_server(env={"REDIS_URL": redis_url, "ROOM_CAPACITY": "300"})
    api = Api.over_http(server.url)
    host = api.peer("big", "host")
    peers = [api.peer("big", f"p{i}") for i in range(200)]
    with ThreadPoolExecutor(50) as pool:
        list(pool.map(Peer.drain, peers))  # the peer-joined events
    polls = [held_poll(p) for p in peers]
    deadline = time.monotonic() + 10
    while api.request("GET", "/healthz").body["held_polls"] < len(peers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert api.request("GET", "/healthz").body["held_polls"] == len(peers)
    with redis_server.client() as db:
        names = [c["name"] for c in db.client_list() if c["name"].startswith("signaling:")]
    by_instance = collections.Counter(name.split(":")[1] for name in names)
    assert len(by_instance) == 1, names  # one worker: one instance
    # a connection per lane, one or two of the pool for commands outside them (healthz, the reaper), one for pub/sub
    assert 2 <= by_instance.most_common(1)[0][1] <= LANES + 3, names
    reply = host.broadcast("ring", "all")
    assert len(reply.body["delivered_to"]) == len(peers)
    for poll in polls:
        poll["thread"].join(10)
        assert [m["type"] for m in poll["reply"].body["messages"]] == ["ring"]


def test_sigkill_loses_no_accepted_envelope(start_server, redis_url):
    first = start_server(env={"REDIS_URL": redis_url})
    api = Api.over_http(first.url)
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    accepted = [alice.send("bob", "n", i).body["seq"] for i in range(50)]
    first.kill()
    second = Api.over_http(start_server(env={"REDIS_URL": redis_url}).url)
    bob_again = bob.on(second)
    got = bob_again.receive()
    assert [m["seq"] for m in got] == accepted
    assert [m["data"] for m in got] == list(range(50))


def test_sigterm_ends_held_polls_at_once(start_server):
    server = start_server(env={"GRACEFUL_TIMEOUT": "20"})
    api = Api.over_http(server.url)
    bob = api.peer("r1", "bob")
    poll = held_poll(bob)
    time.sleep(0.5)
    stopped = time.monotonic()
    server.process.terminate()
    poll["thread"].join(10)
    assert poll["reply"].status == 200 and poll["reply"].body["messages"] == []
    assert poll["took"] < 5
    server.process.wait(20)
    assert time.monotonic() - stopped < 20


def test_make_run_prints_the_url_and_serves(tmp_path):
    port = free_port()
    env = {"PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin", "PORT": str(port), "HOME": str(tmp_path)}
    process = subprocess.Popen(["make", "run"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []  # set-up (creating .venv, installing) may come first
        while not (lines and "signaling: http" in lines[-1]) and len(lines) < 50:
            lines.append(process.stdout.readline())
        banner = lines[-1]  # a log line of the service's, said once its settings and address passed
        assert f"http://localhost:{port}/" in banner and "memory" in banner, lines
        while "Listening at:" not in lines[-1]:
            assert len(lines) < 100, lines
            lines.append(process.stdout.readline())
        assert f"Listening at: http://127.0.0.1:{port} " in lines[-1], lines  # this machine only, unless HOST
        api = Api.over_http(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if api.request("GET", "/healthz").status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        assert api.join("demo", "alice").status == 201
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
        process.stdout.close()
