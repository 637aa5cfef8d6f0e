"""The open-file limit on the real server: said at start, and met by shedding, not by a traceback storm.

Each held poll is one open connection, one open file. The server runs with
soft and hard RLIMIT_NOFILE both at `LIMIT`, so raising the soft limit cannot
help, and more polls than that are opened.
"""

from __future__ import annotations

import http.client
import json
import resource
import selectors
import socket
import time
import urllib.parse

import pytest

from ..support.helpers import Api
from .test_faults import abort, raw_poll, wait_until

pytestmark = pytest.mark.live

LIMIT = 128
POLLS = 150


def low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def answers(socks: list[socket.socket], within: float) -> list[bytes]:
    """What the server wrote on each socket within `within` seconds (b"" for nothing: a held poll)."""
    got = {sock: b"" for sock in socks}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + within
        while selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                try:
                    data = key.fileobj.recv(65536)
                except ConnectionResetError:
                    data = b""
                got[key.fileobj] += data
                if not data or b"\r\n\r\n" in got[key.fileobj]:
                    selector.unregister(key.fileobj)
    return [got[sock] for sock in socks]


def test_past_the_file_limit_new_connections_are_shed_with_503_health_answers_and_it_recovers(start_server):
    server = start_server(preexec=low_file_limit)
    port = urllib.parse.urlsplit(server.url).port
    api = Api.over_http(server.url, timeout=10)
    peers = [api.peer(f"files{i // 40}", f"p{i}") for i in range(POLLS)]
    for peer in peers:
        peer.drain()  # nothing waiting: each poll is held
    kept_alive = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # a balancer's health check connection
    kept_alive.request("GET", "/healthz")
    assert kept_alive.getresponse().read()

    start = server.log.stat().st_size
    socks = [raw_poll(server, peer, peer.cursor, 20) for peer in peers]
    try:
        replies = answers(socks, 3)
        shed = [a for a in replies if a.startswith(b"HTTP/1.1 503")]
        held = [a for a in replies if a == b""]
        assert len(shed) + len(held) == POLLS, [a[:80] for a in replies if a and not a.startswith(b"HTTP/1.1 503")]
        assert shed and len(held) >= LIMIT // 2, (len(shed), len(held))
        head, _, body = shed[0].partition(b"\r\n\r\n")
        assert b"Retry-After: 1" in head and json.loads(body)["error"]["code"] == "server_busy"

        # the kept-alive connection is served while new ones are shed
        kept_alive.request("GET", "/healthz")
        assert kept_alive.getresponse().status == 200
    finally:
        for sock in socks:
            abort(sock)

    # connections closed: new ones are accepted again, without a restart; the episode ends once it is quiet
    kept_alive.close()
    checks = Api.over_http(server.url, timeout=5)

    def over() -> str | None:
        # the aborted polls' files are free once the worker is done with them (their held polls end, within
        # the test server's 5 s cap on a poll's wait): until then a new connection is still shed, as it should be
        if checks.request("GET", "/healthz").status != 200:
            return None
        text = server.log.read_text()[start:]
        return text if "over after" in text else None

    log = wait_until(over, 30, "a new connection served and the end of the episode in the log")
    assert "Traceback" not in log and "Too many open files" not in log, log[-3000:]
    assert log.count("open-file limit reached") == 2, log[-3000:]  # one line when it starts, one when it ends
    assert [line for line in log.splitlines() if "open-file limit reached" in line][1].endswith("times)"), log[-3000:]


def test_a_file_limit_below_worker_connections_is_said_in_one_line_at_start(start_server):
    server = start_server(preexec=low_file_limit)
    lines = [line for line in server.log.read_text().splitlines() if "open files: the limit is" in line]
    assert len(lines) == 1, server.log.read_text()
    assert f"the limit is {LIMIT} (hard {LIMIT})" in lines[0] and "WORKER_CONNECTIONS=10000" in lines[0], lines


def test_the_soft_file_limit_is_raised_to_the_hard_one(start_server):
    def soft_below_hard():
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, hard))

    server = start_server(preexec=soft_below_hard)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    for pid in [server.process.pid, *server.worker_pids()]:
        with open(f"/proc/{pid}/limits") as limits:
            (line,) = [line for line in limits if line.startswith("Max open files")]
        soft_now = line.split()[3]
        assert soft_now == (str(hard) if hard != resource.RLIM_INFINITY else "unlimited"), line
