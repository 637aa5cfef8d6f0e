"""Streaming receive (protocol 1.2), on every backend: the poll URL with `Accept: text/event-stream`."""

from __future__ import annotations

import time

import pytest

from signaling import metrics
from signaling.service import Service
from signaling.stream import accepted

from ..support.helpers import Api, Peer

#: streams in these tests say something at least this often, so a read never waits long
QUICK = {"stream_heartbeat": 0.1}


@pytest.fixture
def quick(make_app):
    """An app whose streams write a heartbeat every 0.1 s, and its API."""
    app = make_app(**QUICK)
    return app, Api.over_flask(app.test_client())


def pair(api: Api, room: str = "r1") -> tuple[Peer, Peer]:
    """alice and bob in `room`, bob's peer-joined already acknowledged by alice."""
    alice, bob = api.peer(room, "alice"), api.peer(room, "bob")
    alice.drain()
    return alice, bob


def notes(envelopes: list[dict]) -> list[object]:
    return [e["data"] for e in envelopes if e["type"] == "note"]


def open_streams(app) -> tuple[int, int]:
    """What the process still holds for streams: hub entries, peers kept alive."""
    service = Service.of(app)
    return len(service.hub), len(service.keep_alive)


# -- what a stream is


def test_a_stream_answers_at_once_with_its_headers_and_a_first_line(quick):
    app, api = quick
    _, bob = pair(api)
    stream = bob.stream(headers={"X-Request-Id": "trace-7", "Origin": "https://app.example"})
    try:
        assert stream.status == 200 and stream.streaming
        assert stream.headers["content-type"] == "text/event-stream"
        assert stream.headers["cache-control"] == "no-store"
        assert stream.headers["x-accel-buffering"] == "no"
        assert stream.headers["x-request-id"] == "trace-7"
        assert stream.headers["access-control-allow-origin"] == "*"
        assert "content-length" not in stream.headers
        assert stream.take() == ("retry", 1000)  # the first line, before anything is there to deliver
        assert stream.first.startswith(b"retry: 1000\n\n")
    finally:
        stream.close()


def test_a_stream_replays_everything_after_its_cursor_oldest_first(quick):
    _, api = quick
    alice, bob = pair(api)
    for i in range(3):
        alice.send("bob", "note", i)
    for cursor, expected in [(0, [1, 2, 3]), (1, [2, 3])]:
        stream = bob.stream(last_event_id=cursor)
        try:
            assert [e["seq"] for e in stream.until_quiet()] == expected
        finally:
            stream.close()
    stream = bob.stream(query="after=2")  # the cursor as a poll gives it
    try:
        got = stream.until_quiet()
        assert [(e["seq"], e["from"], e["type"], e["data"]) for e in got] == [(3, "alice", "note", 2)]
    finally:
        stream.close()


def test_envelopes_arrive_on_the_stream_as_they_are_stored(quick):
    _, api = quick
    alice, bob = pair(api)
    stream = bob.stream()
    try:
        assert stream.until_quiet() == []
        alice.send("bob", "offer", {"sdp": "v=0"})
        [offer] = stream.envelopes(1)
        assert (offer["seq"], offer["type"], offer["data"]) == (1, "offer", {"sdp": "v=0"})
        alice.send_batch("bob", [{"type": "note", "data": i} for i in range(3)])
        alice.broadcast("note", "all")
        assert [(e["seq"], e["data"]) for e in stream.envelopes(4)] == [(2, 0), (3, 1), (4, 2), (5, "all")]
        assert stream.until_quiet() == []
        api.peer("r1", "carol")  # server events come the same way
        assert [(e["type"], e["from"]) for e in stream.envelopes(1)] == [("peer-joined", "carol")]
    finally:
        stream.close()


def test_a_backlog_longer_than_one_look_comes_whole_and_in_order(make_app):
    api = Api.over_flask(make_app(mailbox_limit=1000, **QUICK).test_client())
    alice, bob = pair(api)
    for start in range(0, 250, 50):
        alice.send_batch("bob", [{"type": "note", "data": i} for i in range(start, start + 50)])
    stream = bob.stream(query="limit=7")  # each look reads 7: a stream reads on without waiting
    try:
        assert notes(stream.until_quiet()) == list(range(250))
    finally:
        stream.close()


def test_nothing_is_acknowledged_by_being_streamed(quick):
    _, api = quick
    alice, bob = pair(api)
    for i in range(3):
        alice.send("bob", "note", i)
    stream = bob.stream()
    assert notes(stream.until_quiet()) == [0, 1, 2]
    stream.close()
    again = bob.stream(last_event_id=0)  # a reconnect from the same id replays the same
    assert notes(again.until_quiet()) == [0, 1, 2]
    again.close()
    assert notes(bob.poll(after=0).body["messages"]) == [0, 1, 2]
    later = bob.stream(last_event_id=2)  # a later id acknowledges what it covers: only newer ones come
    assert notes(later.until_quiet()) == [2]
    later.close()
    assert [m["seq"] for m in bob.poll(after=2).body["messages"]] == [3]
    assert bob.poll(after=1).body["messages"][0]["seq"] == 3  # 1 and 2 are gone for good


def test_heartbeats_keep_a_quiet_stream_talking(quick):
    _, api = quick
    _, bob = pair(api)
    stream = bob.stream()
    try:
        assert stream.take() == ("retry", 1000)
        started = time.monotonic()
        assert [stream.take(2) for _ in range(5)] == [("comment", "")] * 5
        assert time.monotonic() - started >= 0.4  # about one every STREAM_HEARTBEAT (0.1 s), not a flood
    finally:
        stream.close()


# -- how a stream ends (cleanly: the response finishes, the client reconnects with Last-Event-ID)


def test_a_stream_ends_after_stream_max(make_app):
    api = Api.over_flask(make_app(stream_max=0.6, **QUICK).test_client())
    _, bob = pair(api)
    started = time.monotonic()
    stream = bob.stream()
    assert stream.until_end(timeout=5) == []
    assert 0.5 <= time.monotonic() - started < 3  # STREAM_MAX, spread down by at most 10 %


def test_a_stream_ends_when_what_it_delivered_is_half_the_mailbox(make_app):
    app = make_app(mailbox_limit=4, **QUICK)
    api = Api.over_flask(app.test_client())
    alice, bob = pair(api)
    api.peer("r1", "carol")  # a server event on bob's stream: it never counts
    stream = bob.stream()
    alice.send("bob", "note", 1)
    assert notes(stream.until_quiet()) == [1]
    alice.send("bob", "note", 2)
    assert notes(stream.until_end()) == [2]  # 2 of 4 delivered and not acknowledged: reconnect
    assert open_streams(app) == (0, 0)
    assert alice.send("bob", "note", 3).status == 202  # a receiver that keeps up: its senders never see it full
    again = bob.stream(last_event_id=3)  # acknowledges the three it saw
    assert notes(again.until_quiet()) == [3]
    again.close()


def test_a_stream_ends_when_what_it_delivered_is_half_the_mailbox_bytes(make_app):
    api = Api.over_flask(make_app(mailbox_bytes=1000, **QUICK).test_client())
    alice, bob = pair(api)
    stream = bob.stream()
    alice.send("bob", "note", "x" * 300)
    assert len(stream.until_quiet()) == 1
    alice.send("bob", "note", "y" * 300)  # two of about 370 bytes: past half of 1,000
    assert notes(stream.until_end()) == ["y" * 300]


def test_a_newer_stream_or_poll_of_the_peer_ends_a_stream(quick):
    app, api = quick
    alice, bob = pair(api)
    older = bob.stream()
    newer = bob.stream()
    assert older.until_end() == []
    alice.send("bob", "note", 1)
    assert notes(newer.until_quiet()) == [1]
    assert bob.poll(wait=0.2).status == 200  # a newer held poll ends it too
    assert newer.until_end() == []
    assert open_streams(app) == (0, 0)


def test_a_stream_of_another_peer_or_a_refused_one_ends_no_stream(quick):
    _, api = quick
    alice, bob = pair(api)
    stream = bob.stream()
    try:
        assert alice.stream().status == 200  # alice's own stream
        assert api.stream("/rooms/r1/peers/bob/messages", token=alice.token).status == 401
        assert api.stream("/rooms/r1/peers/bob/messages", token="bob.forged").status == 401
        alice.send("bob", "note", 1)
        assert notes(stream.until_quiet()) == [1]
        assert not stream.ended
    finally:
        stream.close()


def test_a_stream_ends_when_its_peer_leaves(quick):
    app, api = quick
    alice, bob = pair(api)
    stream = bob.stream()
    assert stream.until_quiet() == []
    assert bob.leave().status == 204
    stream.until_end()
    assert open_streams(app) == (0, 0)
    assert [m["type"] for m in alice.receive()] == ["peer-left"]


def test_a_stream_ends_when_its_peer_times_out(make_app):
    app = make_app(peer_ttl=0.6, poll_wait=0.3, reap_interval=0.05, **QUICK)
    api = Api.over_flask(app.test_client())
    alice, bob = pair(api)
    Service.of(app).keep_alive.stop()  # as if the store could not hear the keep-alive: bob goes silent
    stream = bob.stream()
    seen, deadline = [], time.monotonic() + 5
    while not stream.ended and time.monotonic() < deadline:
        stream.until_quiet()
        seen += alice.receive()  # alice polls: her own heartbeat
    assert stream.ended
    assert [m["data"] for m in seen + alice.receive()] == [{"reason": "timeout"}]


def test_a_stream_ends_when_the_server_stops(quick):
    app, api = quick
    _, bob = pair(api)
    stream = bob.stream()
    assert stream.until_quiet() == []
    Service.of(app).hub.close()
    assert stream.until_end() == []


def test_a_client_that_goes_away_leaves_nothing_held(quick):
    app, api = quick
    alice, bob = pair(api)
    gauge = metrics.OPEN_STREAMS._value.get()
    for reads in (0, 1, 3):  # closed before reading, after the first line, mid-stream
        stream = bob.stream()
        assert open_streams(app) == (1, 1)
        assert metrics.OPEN_STREAMS._value.get() == gauge + 1
        alice.send("bob", "note", reads)
        for _ in range(reads):
            stream.take()
        stream.close()
        assert open_streams(app) == (0, 0)
        assert metrics.OPEN_STREAMS._value.get() == gauge


# -- liveness


def test_a_streaming_peer_stays_live_past_peer_ttl_and_times_out_after(make_app):
    app = make_app(peer_ttl=0.9, poll_wait=0.3, reap_interval=0.05, **QUICK)
    api = Api.over_flask(app.test_client())
    alice, bob = pair(api)
    stream = bob.stream()
    deadline = time.monotonic() + 2.5  # nearly three PEER_TTLs without a request of bob's
    seen = []
    while time.monotonic() < deadline:
        stream.until_quiet()
        seen += alice.receive(wait=0.1)  # alice polls: her own heartbeat
    assert seen == [] and alice.members().body["peers"] == ["alice", "bob"]
    stream.close()
    deadline = time.monotonic() + 3
    while not seen and time.monotonic() < deadline:
        seen += alice.receive(wait=0.2)
    assert [(m["type"], m["from"], m["data"]) for m in seen] == [("peer-left", "bob", {"reason": "timeout"})]


def test_streams_are_kept_live_in_one_backend_call_a_tick(make_app, backend_name):
    app = make_app(peer_ttl=0.6, poll_wait=0.3, reap_interval=0.05, stream_heartbeat=0.15)
    backend, tick = Service.of(app).backend, Service.of(app).keep_alive.interval
    assert tick == 0.15  # below PEER_TTL / 3
    api = Api.over_flask(app.test_client())
    peers = [api.peer("r1", f"p{i}") for i in range(3)] + [api.peer("r2", f"q{i}") for i in range(3)]
    calls, looks, real_keep_alive, real_look = [], [], backend.keep_alive, backend.acknowledge_and_read

    def keep_alive(listeners, now):
        calls.append(sorted((listener.room, listener.peer) for listener in listeners))
        return real_keep_alive(listeners, now)

    def look(*args, **kwargs):
        looks.append(args[:2])
        return real_look(*args, **kwargs)

    backend.keep_alive, backend.acknowledge_and_read = keep_alive, look
    streams = [peer.stream() for peer in peers]
    started = time.monotonic()
    time.sleep(1.3)  # two PEER_TTLs: six streams, about eight ticks
    elapsed = time.monotonic() - started
    everyone = sorted((peer.room, peer.id) for peer in peers)
    assert 4 <= len(calls) <= elapsed / tick + 1 and all(call == everyone for call in calls)
    assert len(looks) == len(peers)  # one look each, when it opened: heartbeats cost the store nothing
    for stream in streams:
        stream.take()
    assert all(api.request("GET", "/rooms/r1/peers", token=p.token).status == 200 for p in peers[:3])
    if backend_name != "memory":  # and one call is one round trip, whatever the number of rooms and streams,
        # and a second when heartbeats asked for renewals (the rooms' reap schedule, the IP leases: PEER_TTL/2 apart)
        Service.of(app).keep_alive.stop()  # its own ticks would count here too
        trips = backend._round_trips.round_trips
        Service.of(app).keep_alive.tick(time.time())
        assert backend._round_trips.round_trips in (trips + 1, trips + 2)
    for stream in streams:
        stream.close()


# -- refusals come before any stream


@pytest.mark.parametrize(("path", "token", "headers", "status", "code"), [
    ("/rooms/r1/peers/bob/messages", None, {}, 401, "unauthorized"),
    ("/rooms/r1/peers/bob/messages", "bob.forged", {}, 401, "unauthorized"),
    ("/rooms/r1/peers/nobody/messages", "bob", {}, 404, "not_joined"),
    ("/rooms/r1/peers/bob/messages", "bob", {"Last-Event-ID": "9"}, 400, "bad_cursor"),
    ("/rooms/r1/peers/bob/messages", "bob", {"Last-Event-ID": "abc"}, 400, "bad_query"),
    ("/rooms/r1/peers/bob/messages?after=-1", "bob", {}, 400, "bad_query"),
    ("/rooms/r1/peers/bob/messages?after=1", "bob", {"Last-Event-ID": "0"}, 400, "bad_query"),
    ("/rooms/r1/peers/bob/messages?limit=0", "bob", {}, 400, "bad_query"),
    ("/rooms/r!/peers/bob/messages", "bob", {}, 400, "bad_id"),
])
def test_refusals_are_json_and_no_stream(quick, path, token, headers, status, code):
    app, api = quick
    _, bob = pair(api)
    token = bob.token if token == "bob" else token
    reply = api.stream(path, token=token, headers=headers)
    assert (reply.status, reply.code) == (status, code)
    assert reply.headers["content-type"] == "application/json" and not reply.streaming
    assert reply.headers["access-control-allow-origin"] == "*" and reply.headers["x-request-id"]
    assert open_streams(app) == (0, 0)


def test_a_body_past_the_limit_is_413_and_no_stream(make_app):
    app = make_app(max_message_bytes=30, **QUICK)
    api = Api.over_flask(app.test_client())
    _, bob = pair(api)
    path = "/rooms/r1/peers/bob/messages"
    reply = api.request("GET", path, data="x" * 31, token=bob.token, headers={"Accept": "text/event-stream"})
    assert (reply.status, reply.code) == (413, "payload_too_large")
    assert open_streams(app) == (0, 0)


@pytest.mark.parametrize(("accept", "streams"), [
    ("text/event-stream", True),
    ("application/json, text/event-stream;q=0.5", True),
    ("Text/Event-Stream ; charset=utf-8", True),
    ("text/html,text/event-stream;q=1.0,*/*;q=0.8", True),
    ("text/event-stream;q=0", False),
    ("text/event-stream; q=0.000", False),
    ("text/event-stream;q=abc", False),
    ("*/*", False),
    ("text/*", False),
    ("application/json", False),
    ("text/event-streams", False),
    ("", False),
])
def test_accept_variants(quick, accept, streams):
    _, api = quick
    alice, bob = pair(api)
    alice.send("bob", "note", 1)
    reply = api.stream("/rooms/r1/peers/bob/messages?wait=0", token=bob.token, accept=accept)
    try:
        assert reply.status == 200 and reply.streaming == streams == accepted(accept)
        if streams:
            assert notes(reply.until_quiet()) == [1]
        else:  # the poll, exactly as before
            assert reply.headers["content-type"] == "application/json"
            assert notes(reply.body["messages"]) == [1] and reply.body["cursor"] == 1
    finally:
        reply.close()


@pytest.mark.parametrize("backend_name", ["redis", "cluster"])
def test_a_send_on_another_instance_reaches_a_stream(make_app, backend_name):
    one, two = make_app(**QUICK), make_app(**QUICK)
    a, b = Api.over_flask(one.test_client()), Api.over_flask(two.test_client())
    alice, bob = pair(a)
    stream = bob.stream()
    try:
        assert stream.until_quiet() == []
        alice.on(b).send("bob", "note", "from two")
        assert notes(stream.envelopes(1)) == ["from two"]
        bob.on(b).poll(wait=0.2)  # a newer poll on the other instance ends it
        assert stream.until_end() == []
    finally:
        stream.close()
