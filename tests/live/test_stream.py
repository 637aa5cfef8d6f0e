"""Streams (1.2) through the real server: gunicorn's gevent worker writes each event as it comes."""

from __future__ import annotations

import socket
import time

import pytest

from ..support.helpers import Api
from ..support.servers import LiveServer

pytestmark = pytest.mark.live

QUICK = {"STREAM_HEARTBEAT": "0.2"}


def read_until(sock: socket.socket, received: bytearray, wanted: bytes, timeout: float = 5) -> None:
    """Read the raw connection until `wanted` has arrived; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while wanted not in received:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"{wanted!r} did not arrive within {timeout} s; got {bytes(received)!r}") from None
        assert chunk, f"the server closed the connection before {wanted!r}"
        received += chunk


def test_events_arrive_one_by_one_while_sends_happen(start_server):
    """As curl -N sees it: chunked, the first line at once, each envelope as it is sent, not in a burst."""
    server: LiveServer = start_server(env=QUICK)
    api = Api.over_http(server.url)
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    alice.drain()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            f"GET /rooms/r1/peers/bob/messages HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {bob.token}\r\n\r\n".encode()
        )
        received = bytearray()
        read_until(sock, received, b"retry: 1000\n\n")  # before anything was sent: the headers left at once
        head = bytes(received).split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 200")
        for header in (b"transfer-encoding: chunked", b"content-type: text/event-stream", b"cache-control: no-store",
                       b"x-accel-buffering: no"):
            assert header in head.split(b"\r\n"), head
        for i in range(1, 4):
            assert alice.send("bob", "note", i).status == 202
            read_until(sock, received, b'"data":%d' % i)
            assert b"id: %d\n" % i in received
            assert b'"data":%d' % (i + 1) not in received  # not sent yet: each one came on its own
        read_until(sock, received, b":\n\n")  # and a quiet stream says so every STREAM_HEARTBEAT


def test_a_send_on_another_instance_reaches_a_stream_held_here(start_server, redis_url):
    one = start_server(env={"REDIS_URL": redis_url, **QUICK})
    two = start_server(env={"REDIS_URL": redis_url, **QUICK})
    a, b = Api.over_http(one.url, timeout=10), Api.over_http(two.url, timeout=10)
    alice, bob = a.peer("r1", "alice"), a.peer("r1", "bob")
    stream = bob.stream()
    try:
        assert stream.status == 200 and stream.until_quiet() == []
        for i in range(3):
            assert alice.on(b).send("bob", "note", i).status == 202
            [envelope] = stream.envelopes(1)
            assert (envelope["seq"], envelope["data"]) == (i + 1, i)
        bob.on(b).poll(wait=0.2)  # a newer poll of bob's on the other instance ends it
        stream.until_end()
    finally:
        stream.close()


def test_a_client_that_goes_away_leaves_nothing_held(start_server):
    server = start_server(env=QUICK)
    api = Api.over_http(server.url)
    bob = api.peer("r1", "bob")
    streams = [bob.stream() for _ in range(3)]  # each newer one ends the older
    assert [stream.until_end() for stream in streams[:2]] == [[], []]
    assert streams[2].take() == ("retry", 1000)
    assert api.request("GET", "/healthz").body["held_polls"] == 1
    for stream in streams:
        stream.close()
    deadline = time.monotonic() + 5  # the next heartbeat's write finds the connection gone
    while api.request("GET", "/healthz").body["held_polls"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert api.request("GET", "/healthz").body["held_polls"] == 0
