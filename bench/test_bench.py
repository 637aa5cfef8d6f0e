"""The bench's own parts that its figures rest on: the floor server, the batching client, the report.

They live beside the bench (pytest collects bench/ too) because tests/ never imports the bench.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench import report
from bench.__main__ import SERVER_ENV
from bench.client import BenchError, Chunked, Event, Outbox, Peer, SseReader, call, connect, envelope
from bench.procs import FloorServer, Setup
from bench.scenarios import CallSetups, Floor, HeldStep, Idle, Inbox, Sends, Throughput, Wait
from tests.support.servers import ROOT, LiveServer

pytestmark = pytest.mark.live


@pytest.fixture
def live_server(tmp_path):
    """A gunicorn+gevent server on the memory backend, set up as the bench sets up its servers."""
    server = LiveServer(tmp_path, SERVER_ENV).start()
    yield server
    server.stop()


def test_the_floor_is_the_bare_app_on_one_gevent_worker_pinned_to_the_cpu(tmp_path):
    server = FloorServer(tmp_path, {"WORKER_CONNECTIONS": "20000"}, 1, cpu=0).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("POST", "/rooms/r/peers/p/messages", body=b'{"type":"x"}')
        reply = conn.getresponse()
        assert (reply.status, reply.read()) == (200, b"hello world\n")
        conn.close()
        [worker] = server.worker_pids()
        assert os.sched_getaffinity(worker) == {0}
        assert "Using worker: gevent" in server.log.read_text()
    finally:
        server.stop()


def run(scenario) -> None:
    """asyncio.run(scenario()) in a thread of its own: Playwright (the browser tests) may keep an event
    loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(scenario())).result(timeout=120)


async def joined(port: int, room: str, *names: str) -> list[tuple[Peer, object]]:
    """Peers joined in order, each with its connection, polling with `Last-Event-ID`."""
    peers = []
    for name in names:
        conn = await connect(port)
        peer = Peer(room, name, cursor_header=True)
        peer.joined(await call(conn, peer.join_request(), 30, (201,)))
        peers.append((peer, conn))
    return peers


def test_the_outbox_sends_the_first_envelope_alone_and_what_follows_as_one_batch(live_server):
    async def scenario():
        (bob, bob_conn), (alice, alice_conn) = await joined(live_server.port, "r1", "bob", "alice")
        answered = []
        outbox = Outbox(alice_conn, alice, "bob", collections.Counter(), lambda reply, n: answered.append(n))
        seqs = [outbox.send(envelope(f"c{i}", 40)) for i in range(5)]
        assert alice_conn.waiter is not None  # the first is on its way before send() returns
        assert await asyncio.wait_for(asyncio.gather(*seqs), 30) == [2, 3, 4, 5, 6]  # 1: alice's peer-joined
        await outbox.idle()
        assert (outbox.requests, answered) == (2, [1, 4])
        messages = bob.polled(await call(bob_conn, bob.poll_request(5), 30))
        assert [m["type"] for m in messages] == ["peer-joined", "c0", "c1", "c2", "c3", "c4"]
        again = bob.polled(await call(bob_conn, bob.poll_request(0), 30))  # the header acknowledged them
        assert again == [] and bob.cursor == 6
        for conn in (bob_conn, alice_conn):
            conn.close()

    run(scenario)


def test_a_batch_refused_fails_every_send_waiting_and_every_later_one(live_server):
    async def scenario():
        (_, bob_conn), (alice, alice_conn) = await joined(live_server.port, "r1", "bob", "alice")
        errors = []
        outbox = Outbox(alice_conn, alice, "bob", collections.Counter(), on_error=errors.append)
        first = outbox.send(envelope("offer", 40))
        batch = [outbox.send(envelope("candidate", 40)), outbox.send(envelope("peer-joined", 40))]  # reserved: 400
        assert isinstance(await asyncio.wait_for(first, 30), int)
        done, _ = await asyncio.wait(batch, timeout=30)
        assert len(done) == 2 and all(isinstance(f.exception(), BenchError) for f in done)
        assert "HTTP 400" in str(errors[0]) and "1.1 batch" in str(errors[0])
        with pytest.raises(BenchError):
            outbox.send(envelope("candidate", 40))
        for conn in (bob_conn, alice_conn):
            conn.close()

    run(scenario)


def test_every_cpu_per_request_figure_is_also_a_multiple_of_the_floor():
    cpu = {"server": 1.0, "load": 0.1, "other": 0.0}
    floor = Floor(connections=32, seconds=1.0, requests=4_000, cpu=cpu)  # 250 µs per request
    one = Throughput(pairs=32, seconds=1.0, delivered=1_000, sent=1_000, sends=1_000, refused=0, polls=1_000,
                     cpu=cpu, failed={})  # 500 µs per request
    batched = Throughput(pairs=32, seconds=1.0, delivered=3_000, sent=3_000, sends=1_000, refused=0, polls=1_000,
                         cpu=cpu, failed={}, window=4)
    setups = CallSetups(calls=10, seconds=1.0, completed=100, p50_ms=20.0, p99_ms=40.0, requests_per_setup=15.0,
                        requests=1_250, cpu=cpu, failed={})  # 800 µs per request
    results = {Setup("redis", 1): {"throughput": [one], "batched": [batched], "setups": [setups], "errors": []}}
    rows = report.rows((50,), (1,), (32,), (10,), floor)
    text = report.table(results, rows, floor)
    assert text.startswith("Floor (") and "4,000 requests/s, 250 µs" in text
    cpu_rows = [line for line in text.splitlines() if line.startswith("|") and "CPU per request" in line]
    assert len(cpu_rows) == 3
    assert all("× floor)" in line for line in cpu_rows)
    assert "500 µs (2.0× floor)" in text and "800 µs (3.2× floor)" in text
    assert "3,000 (3.0 / 3.0)" in text  # batched: delivered/s (envelopes per send / per poll answer)


def chunked(*pieces: bytes) -> bytes:
    """A body in chunked transfer encoding, one chunk per piece, sizes in hex (with an extension on one)."""
    out = b"".join(f"{len(p):x}".encode() + (b";x=1" if i == 1 else b"") + b"\r\n" + p + b"\r\n"
                   for i, p in enumerate(pieces))
    return out + b"0\r\n\r\n"


def test_the_stream_reader_cuts_events_and_chunks_wherever_the_pieces_split():
    body = chunked(b"retry: 1000\n\n", b'id: 7\ndata: {"seq":7}\n\n:\n\nid: 8\n', b'data: {"seq":8}\n\n',
                   b"id: 9\r\ndata: a\rdata: b\r\n\r\n: heartbeat\n\n")
    wire = body + b"HTTP/1.1 200 OK\r\n"  # the next response's first bytes, on the same connection
    expected = [Event("7", '{"seq":7}'), Event("8", '{"seq":8}'), Event("9", "a\nb")]
    for size in (1, 2, 3, 5, 7, 11, len(wire)):  # every split point, some at CR|LF, inside sizes and in "\r\n"
        framing, sse = Chunked(), SseReader()
        events, body_seen, after = [], b"", b""
        for at in range(0, len(wire), size):
            if framing.done:  # as Conn does: what follows the body is the next response's
                after += wire[at:at + size]
                continue
            data = framing.feed(wire[at:at + size])
            body_seen += data
            events += sse.feed(data)
        assert events == expected, size
        assert (sse.retry_ms, sse.comments, framing.done) == (1000, 2, True)
        assert body_seen.endswith(b"heartbeat\n\n") and framing.rest + after == b"HTTP/1.1 200 OK\r\n"


def test_a_stream_chunk_framing_error_is_an_error():
    with pytest.raises(BenchError):
        Chunked().feed(b"3\r\nabcXY")


def test_a_streaming_ping_pong_delivers_every_envelope_once_and_in_order_across_reconnects(tmp_path):
    """MAILBOX_LIMIT 8: each stream ends after 4 envelopes unacknowledged, and the receivers reconnect with
    Last-Event-ID, which acknowledges them."""
    server = LiveServer(tmp_path, dict(SERVER_ENV, MAILBOX_LIMIT="8")).start()

    async def scenario():
        (alice, alice_sends), (bob, bob_sends) = await joined(server.port, "r1", "alice", "bob")
        for peer, conn in ((alice, alice_sends), (bob, bob_sends)):  # past the peer-joined events
            peer.polled(await call(conn, peer.poll_request(0), 30))
        failed = collections.Counter()
        inboxes = [Inbox(await connect(server.port), peer, failed) for peer in (alice, bob)]
        got = {"alice": [], "bob": []}
        for i in range(30):
            await call(alice_sends, alice.send_request("bob", envelope(f"ping{i}", 60)), 30, (202,))
            got["bob"].append((await inboxes[1].get(30))[0])  # raises what the stream's reader raised
            await call(bob_sends, bob.send_request("alice", envelope(f"pong{i}", 60)), 30, (202,))
            got["alice"].append((await inboxes[0].get(30))[0])
        assert [m["type"] for m in got["bob"]] == [f"ping{i}" for i in range(30)]
        assert [m["type"] for m in got["alice"]] == [f"pong{i}" for i in range(30)]
        first = got["alice"][0]["seq"]
        assert [m["seq"] for m in got["alice"]] == list(range(first, first + 30))
        assert all(inbox.queue.empty() for inbox in inboxes)  # nothing more, nothing twice
        assert all(inbox.receiver.opens >= 30 // 4 for inbox in inboxes)  # each stream ended at 4 and reopened
        assert not failed
        for inbox in inboxes:
            inbox.close()
            inbox.receiver.conn.close()
        for conn in (alice_sends, bob_sends):
            conn.close()

    try:
        run(scenario)
    finally:
        server.stop()


def test_the_stream_rows_are_ratios_within_the_run_and_a_delivery_less_its_send():
    cpu = {"server": 1.0, "load": 0.1, "other": 0.0}
    floor = Floor(connections=32, seconds=1.0, requests=4_000, cpu=cpu, held=1_000, rss_per_held_kib=10.0)
    polled = Throughput(pairs=32, seconds=1.0, delivered=1_000, sent=1_000, sends=1_000, refused=0, polls=1_000,
                        cpu=cpu, failed={})
    streamed = Throughput(pairs=32, seconds=1.0, delivered=2_000, sent=2_000, sends=2_000, refused=0, polls=3,
                          cpu=cpu, failed={}, receive="stream")  # 500 µs per envelope, its send included
    sends = Sends(pairs=32, seconds=1.0, sends=4_000, cpu={"server": 1.2}, failed={})  # 300 µs per send
    held = HeldStep(1_000, 1_000, 1_000, 0.1, rss_kib=12_000 + 1_000, baseline_kib=1_000, healthz_held=1_000,
                    redis_clients=None, failed={}, idle=Idle(15, {"server": 0.004}, heartbeats=1_000))
    results = {Setup("redis", 1): {"throughput": [polled], "throughput_stream": [streamed], "sends": [sends],
                                   "streams": [held], "errors": []}}
    text = report.table(results, report.rows((1_000,), (1,), (32,), (1,), floor, idle_clients=1_000), floor)
    assert "2,000 (2.00× polling)" in text
    assert "300 µs (1.2× floor) / 200 µs (0.8× floor)" in text  # (1 s − 2,000 × 300 µs) / 2,000
    assert "12.0 KiB (1.2× floor)" in text  # RSS per held stream, as a multiple of the held request's
    assert "0.4 % over 15 s (1,000 heartbeats read)" in text and "a quick run's count" in text


def test_the_wait_rows_pool_each_settings_rounds_and_give_1_over_0():
    def sends(count: int, server: float, latency_ms: float) -> Sends:
        return Sends(pairs=32, seconds=1.0, sends=count, cpu={"server": server}, failed={},
                     latencies_ms=[latency_ms] * count)

    wait = Wait({0: [sends(1_000, 0.5, 10.0), sends(3_000, 1.0, 10.0)],  # 2,000/s, 375 µs per send
                 1: [sends(1_000, 0.6, 20.0), sends(2_000, 1.0, 20.0)]})  # 1,500/s, 533 µs per send
    text = report.table({Setup("redis", 1): {"wait": [wait], "errors": []}},
                        report.rows((50,), (1,), (32,), (1,), None, wait_pairs=32))
    assert "| 2,000/s, 375 µs, 10.00 / 10.00 ms |" in text
    assert "| 1,500/s, 533 µs, 20.00 / 20.00 ms |" in text
    assert "| 0.75× / 1.42× / 2.00× / 2.00× (2 and 2 rounds) |" in text


def test_the_quick_wait_part_measures_both_settings_with_a_replica_in_sync():
    """`python -m bench --quick --only wait`: its own process (the bench pins itself to a CPU)."""
    bench = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "wait", "--setups", "redis-1"],
                           cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert "a replica in sync on port" in bench.stderr
    rows = [line for line in bench.stdout.splitlines() if line.startswith("| REDIS_WAIT_REPLICAS=")]
    assert len(rows) == 3 and not any("| – |" in row for row in rows), bench.stdout[-3000:]
    assert "Parts that failed" not in bench.stdout
    assert "(2 and 2 rounds)" in rows[2]
