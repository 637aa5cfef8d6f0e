"""Faults on the real thing: Redis going away and back, SIGTERM, a killed worker, a client that vanishes."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import resource
import selectors
import signal
import socket
import struct
import threading
import time
import urllib.parse
from collections import defaultdict

import pytest

from ..support.helpers import Api, Peer, Reply
from ..support.servers import LiveServer

pytestmark = pytest.mark.live

#: What a client sees when the server (or its worker) goes away under a request.
CONNECTION_ERRORS = (OSError, http.client.HTTPException)


def wait_until(check, timeout: float, what: str):
    """Call `check` until it returns something true, at most `timeout` seconds; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


class Call:
    """A call in a thread: `result` is its return value or the exception it raised; `ended` when it returned."""

    def __init__(self, call):
        self.result: object = None
        self.ended: float | None = None
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call) -> None:
        try:
            self.result = call()
        except Exception as exc:  # kept for the test to look at
            self.result = exc
        self.ended = time.monotonic()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> object:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still running after {timeout}s"
        return self.result


def is_error(reply: object, status: int, code: str) -> bool:
    return isinstance(reply, Reply) and reply.status == status and reply.code == code


def healthz(api: Api) -> int | None:
    try:
        return api.request("GET", "/healthz").status
    except CONNECTION_ERRORS:
        return None


def alive(server: LiveServer) -> bool:
    return server.process.poll() is None


def raw_poll(server: LiveServer, peer: Peer, after: int, wait: float) -> socket.socket:
    """Send a poll by hand on a socket of our own, and return the socket without reading from it."""
    port = urllib.parse.urlsplit(server.url).port
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    path = f"/rooms/{peer.room}/peers/{peer.id}/messages?after={after}&wait={wait}"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {peer.token}\r\n"
                 "Connection: close\r\n\r\n".encode())
    return sock


def abort(sock: socket.socket) -> None:
    """Close at once with a reset, what a client that crashes or loses its network does to the server."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def worker_holding(server: LiveServer, sock: socket.socket) -> int | None:
    """The pid of the gunicorn worker that holds the server's end of our connection `sock` (Linux /proc)."""
    ports = (urllib.parse.urlsplit(server.url).port, sock.getsockname()[1])
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            if tuple(int(end.split(":")[1], 16) for end in fields[1:3]) == ports and fields[9] != "0":
                inodes.add(f"socket:[{fields[9]}]")
    for pid in server.worker_pids():
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:  # closed meanwhile
                continue
    return None


# -- Redis goes away while polls are held, and comes back


def test_redis_down_answers_503_at_once_and_the_service_recovers_by_itself(start_server, private_redis):
    server = start_server(env={"REDIS_URL": private_redis.url}, workers=2)
    api = Api.over_http(server.url, timeout=10)
    master, workers = server.process.pid, sorted(server.worker_pids())
    assert len(workers) == 2
    alice = api.peer("r1", "alice")
    waiting = [api.peer("r1", f"p{i}") for i in range(4)]  # several, so both workers hold some
    for peer in [alice, *waiting]:
        peer.drain()
    polls = [Call(lambda p=p: p.poll(wait=20)) for p in waiting]
    time.sleep(0.5)
    assert all(poll.alive() for poll in polls), "the polls should be held"

    stopped = time.monotonic()
    private_redis.stop()
    for poll in polls:
        reply = poll.join(5)
        assert is_error(reply, 503, "backend_unavailable"), reply
        assert poll.ended - stopped < 2, f"a held poll took {poll.ended - stopped:.1f}s to answer"

    # New requests while Redis is down: 503 at once, for polls that would wait too.
    for call in (lambda: waiting[0].poll(wait=10), lambda: alice.send("p0", "offer", "x"),
                 lambda: api.join("r1", "zoe"), lambda: api.request("GET", "/healthz"), alice.members):
        for _ in range(3):  # several connections: both workers answer
            started = time.monotonic()
            reply = call()
            assert is_error(reply, 503, "backend_unavailable"), (reply.status, reply.raw)
            assert time.monotonic() - started < 2
    assert alive(server) and sorted(server.worker_pids()) == workers, "a worker or the master died"

    private_redis.start()  # the same port, and empty
    wait_until(lambda: healthz(api) == 200, 5, "/healthz answering 200 after Redis came back")
    for _ in range(10):  # every worker, not just one
        assert healthz(api) == 200
    assert server.process.pid == master and alive(server)
    assert sorted(server.worker_pids()) == workers, "a worker was restarted: something crashed"

    # The restarted Redis forgot everyone: peers join again, then talk as before.
    assert is_error(waiting[0].poll(), 404, "not_joined")
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    alice.drain()
    assert alice.send("bob", "offer", 1).status == 202
    assert [m["data"] for m in bob.receive()] == [1]
    # Held polls are woken again: the wake-up channel came back too.
    for n in range(2, 6):  # on either worker
        poll = Call(lambda: bob.poll(wait=10))
        time.sleep(0.3)
        assert poll.alive()
        assert alice.send("bob", "offer", n).status == 202
        sent = time.monotonic()
        reply = poll.join(12)
        assert isinstance(reply, Reply) and reply.status == 200, reply
        assert [m["data"] for m in reply.body["messages"]] == [n]
        # At once, or once the wake-up channel's reconnect backoff (5 s at most) has run out.
        assert poll.ended - sent < 6, "a held poll was not woken after Redis came back"
        bob.cursor = reply.body["cursor"]
    assert "Traceback" not in server.log.read_text()


# -- SIGTERM


def test_sigterm_ends_held_polls_and_loses_no_accepted_envelope(start_server, redis_url):
    graceful = 10
    # room for every send the loop below can make, so it ends on the stop, not on a full mailbox
    server = start_server(env={"REDIS_URL": redis_url, "GRACEFUL_TIMEOUT": str(graceful), "MAILBOX_LIMIT": "10000"},
                          workers=2)
    api = Api.over_http(server.url, timeout=5)
    alice, dave = api.peer("r1", "alice"), api.peer("r1", "dave")
    waiting = [api.peer("r1", f"p{i}") for i in range(3)]
    for peer in [alice, dave, *waiting]:
        peer.drain()
    accepted: dict[int, int] = {}  # number -> seq, for every send answered 202
    attempted = []

    def send_until_gone():
        """Send numbered envelopes to dave until the server stops answering (bounded in count and time)."""
        deadline = time.monotonic() + 20
        for n in range(5000):
            if time.monotonic() > deadline:
                return "time"
            attempted.append(n)
            try:
                reply = alice.send("dave", "n", n)
            except CONNECTION_ERRORS:
                return "gone"
            if reply.status != 202:
                return reply
            accepted[n] = reply.body["seq"]
            time.sleep(0.002)  # a steady stream, not a flood: the stop must land mid-stream
        return "count"

    polls = [Call(lambda p=p: p.poll(wait=20)) for p in waiting]
    sender = Call(send_until_gone)
    wait_until(lambda: len(accepted) >= 30, 10, "sends accepted before the stop")
    assert all(poll.alive() for poll in polls), "the polls should be held"

    stopped = time.monotonic()
    server.process.terminate()
    for peer, poll in zip(waiting, polls, strict=True):
        reply = poll.join(5)
        assert isinstance(reply, Reply) and reply.status == 200, reply
        assert reply.body == {"messages": [], "cursor": peer.cursor}
        assert poll.ended - stopped < 2, f"a held poll took {poll.ended - stopped:.1f}s to end"
    assert server.process.wait(graceful + 5) == 0
    took = time.monotonic() - stopped
    assert took < graceful, f"gunicorn took {took:.1f}s to stop"
    assert sender.join(10) == "gone", sender.result

    fresh = Api.over_http(start_server(env={"REDIS_URL": redis_url}).url)
    dave = dave.on(fresh)
    got = []
    for _ in range(len(attempted) // 100 + 2):  # 100 a poll at most
        got += dave.receive()
    by_number = {m["data"]: m["seq"] for m in got}
    assert len(by_number) == len(got), "an envelope was stored twice"
    assert {n: by_number.get(n) for n in accepted} == accepted, "an accepted envelope was lost"
    assert [m["data"] for m in got] == sorted(by_number), "out of order"
    assert set(by_number) <= set(attempted)
    for peer in waiting:  # the members are still there for the fresh instance
        assert peer.on(fresh).poll().status == 200


# -- SIGTERM with many connections open: the worker stops at once


HELD, IDLE, PER_ROOM = 1000, 100, 40


def wait_for_answer(server: LiveServer, peer: Peer) -> socket.socket:
    """A held poll (a raw one, answered and closed at the stop)."""
    return raw_poll(server, peer, after=peer.cursor, wait=25)


def wait_for_events(server: LiveServer, peer: Peer) -> socket.socket:
    """An open stream (1.2): Accept: text/event-stream on the poll URL; its first line arrives at once."""
    port = urllib.parse.urlsplit(server.url).port
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"GET /rooms/{peer.room}/peers/{peer.id}/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 f"Authorization: Bearer {peer.token}\r\nAccept: text/event-stream\r\nLast-Event-ID: {peer.cursor}\r\n"
                 "Connection: close\r\n\r\n".encode())
    assert sock.recv(1, socket.MSG_PEEK), "the stream's first byte did not come at once"
    return sock


def wait_for_next_request(server: LiveServer) -> socket.socket:
    """A kept-alive connection, answered once, now idle: it waits for a request that never comes."""
    port = urllib.parse.urlsplit(server.url).port
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    reply = http.client.HTTPResponse(sock)
    reply.begin()
    assert reply.status == 200 and reply.read() and not reply.will_close
    return sock


def poll_answer(raw: bytes, after: int) -> tuple[list[dict], int]:
    """What a held poll's client got at the stop, which must be a whole answer: (envelopes, cursor)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    assert status == 200 and int(headers["content-length"]) == len(body), raw[:300]
    answer = json.loads(body)
    return answer["messages"], answer["cursor"]


def stream_answer(raw: bytes, after: int) -> tuple[list[dict], int]:
    """What a stream from `after` showed its client: events, then a clean end (the chunked body's last chunk);
    (envelopes, the last id seen, which the client resumes from)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    assert status == 200 and headers["content-type"].startswith("text/event-stream"), raw[:300]
    assert headers["transfer-encoding"] == "chunked", headers
    text = b""
    while True:  # the chunked coding, to its last chunk: a stream cut off mid-way fails here
        size, _, body = body.partition(b"\r\n")
        assert size, "the stream was cut off before its last chunk"
        length = int(size, 16)
        if length == 0:
            assert body == b"\r\n", f"bytes after the last chunk: {body[:100]!r}"
            break
        text, body = text + body[:length], body[length + 2:]
    envelopes, last = [], after
    for event in text.decode().replace("\r\n", "\n").split("\n\n"):
        fields = {}
        for line in event.split("\n"):
            if line and not line.startswith(":"):  # a comment: the first line, or a heartbeat
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if "data" in fields:
            envelopes.append(json.loads(fields["data"]))
            last = int(fields["id"])
    return envelopes, last


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    return int(status_line.split()[1]), {n.strip().lower(): v.strip() for n, _, v in (x.partition(":") for x in lines)}


#: A kind of client a stopping worker must end at once: how one opens, and what its client got at the end.
KINDS = {"held polls": (wait_for_answer, poll_answer), "streams": (wait_for_events, stream_answer)}


def read_to_the_end(socks: list[socket.socket], timeout: float) -> dict[socket.socket, tuple[bytes, float]]:
    """Everything each socket receives until the server closes it, and when it closed."""
    selector = selectors.DefaultSelector()
    received = {sock: b"" for sock in socks}
    closed: dict[socket.socket, tuple[bytes, float]] = {}
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while len(closed) < len(socks) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                try:
                    chunk = key.fileobj.recv(1 << 16)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[key.fileobj] += chunk
                else:
                    closed[key.fileobj] = (received[key.fileobj], time.monotonic())
                    selector.unregister(key.fileobj)
    finally:
        selector.close()
    return closed


def stop_with_clients_open(start_server, redis_url, kind: str) -> None:
    """HELD clients of `kind` and IDLE kept-alive connections on one worker; SIGTERM to the master.

    Every process exits within 2 s (not after GRACEFUL_TIMEOUT); each held client gets a whole answer at once,
    each idle connection is closed at once; and every envelope accepted meanwhile is still there for another
    instance (on the same Redis), whatever the clients saw: nothing is acknowledged by being delivered.
    """
    open_one, answer_of = KINDS[kind]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * (HELD + IDLE)  # this process's ends, and the server's (which inherits the limit)
    assert hard == resource.RLIM_INFINITY or hard >= needed, f"{needed} open files needed, at most {hard} allowed"
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    server = start_server(env={"REDIS_URL": redis_url, "GRACEFUL_TIMEOUT": "10"})
    api = Api.over_http(server.url, timeout=10)
    senders, peers = [], []
    for room in range(HELD // PER_ROOM):
        senders.append(api.peer(f"stop{room}", "sender"))
        peers += [api.peer(f"stop{room}", f"p{i}") for i in range(PER_ROOM)]
    for peer in peers:
        peer.drain()  # of the news of the peers who joined after it
    accepted: dict[str, list[int]] = defaultdict(list)  # "room/peer" -> numbers answered 202, in order
    unanswered: dict[str, int] = {}  # the send the stop cut off, which may or may not have been stored

    def send_until_gone():
        for n in range(2000):  # bounded in count and time: the server is gone within seconds
            sender = senders[n % len(senders)]
            to = f"p{n // len(senders) % PER_ROOM}"
            try:
                reply = sender.send(to, "n", n)
            except CONNECTION_ERRORS:
                unanswered[f"{sender.room}/{to}"] = n
                return "gone"
            if reply.status != 202:
                return reply
            accepted[f"{sender.room}/{to}"].append(n)
            time.sleep(0.002)
        return "count"

    with contextlib.ExitStack() as opened:
        held = [opened.enter_context(open_one(server, peer)) for peer in peers]
        idle = [opened.enter_context(wait_for_next_request(server)) for _ in range(IDLE)]
        if kind == "held polls":
            wait_until(lambda: api.request("GET", "/healthz").body["held_polls"] == HELD, 20, "every poll held")
        workers = server.worker_pids()
        sender = Call(send_until_gone)
        wait_until(lambda: sum(map(len, accepted.values())) >= 20, 10, "sends accepted before the stop")
        stopped = time.monotonic()
        server.process.terminate()
        ends = read_to_the_end(held + idle, 15)
        assert server.process.wait(15) == 0
        took = time.monotonic() - stopped
    assert took < 2, f"SIGTERM to exit took {took:.1f}s"
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers), "a worker outlived the master"
    assert len(ends) == HELD + IDLE, f"{HELD + IDLE - len(ends)} connections were never closed"
    assert max(at for _, at in ends.values()) - stopped < 2
    assert all(ends[sock][0] == b"" for sock in idle), "an idle connection got bytes"
    assert sender.join(10) == "gone", sender.result
    log = server.log.read_text()
    assert "Traceback" not in log, log[log.find("Traceback") - 1500:][:5000]

    fresh = Api.over_http(start_server(env={"REDIS_URL": redis_url}).url)
    for peer, sock in zip(peers, held, strict=True):
        seen, cursor = answer_of(ends[sock][0], peer.cursor)
        resumed = dataclasses.replace(peer, api=fresh, cursor=cursor)
        rest = []
        for _ in range(5):
            got = resumed.receive(limit=100)
            if not got:
                break
            rest += got
        numbers, key = [m["data"] for m in seen + rest], f"{peer.room}/{peer.id}"
        assert numbers in (accepted[key], [*accepted[key], unanswered.get(key)]), (key, seen, rest)


def test_sigterm_with_1000_held_polls_and_100_idle_connections_exits_at_once(start_server, redis_url):
    stop_with_clients_open(start_server, redis_url, "held polls")


def test_sigterm_with_1000_streams_and_100_idle_connections_exits_at_once(start_server, redis_url):
    stop_with_clients_open(start_server, redis_url, "streams")


# -- SIGKILL of one worker under load


def test_a_killed_worker_loses_and_duplicates_no_accepted_envelope(start_server, redis_url):
    server = start_server(env={"REDIS_URL": redis_url}, workers=2)
    api = Api.over_http(server.url, timeout=10)
    receivers = [api.peer("load", f"r{i}") for i in range(2)]
    senders = [api.peer("load", f"s{i}") for i in range(4)]
    watcher = api.peer("load", "watcher")
    for peer in [*receivers, watcher]:
        peer.drain()

    per_sender, deadline = 120, time.monotonic() + 40
    target = {s.id: receivers[i % len(receivers)].id for i, s in enumerate(senders)}
    accepted: dict[tuple[str, int], int] = {}  # (sender, number) -> seq answered with 202
    attempted: dict[str, list[int]] = defaultdict(list)
    delivered: dict[str, list[dict]] = defaultdict(list)  # receiver -> every envelope it got, repeats too
    trouble: list = []  # unexpected answers, and sends given up
    interrupted = {"send": 0, "poll": 0}
    senders_done = threading.Event()

    def send_all(sender: Peer) -> None:
        for n in range(per_sender):
            attempted[sender.id].append(n)
            for _ in range(50):  # retry a lost request with the same key, as the protocol offers
                if time.monotonic() > deadline:
                    trouble.append(("sender out of time", sender.id, n))
                    return
                try:
                    reply = sender.send(target[sender.id], "n", n, key=f"{sender.id}-{n}")
                except CONNECTION_ERRORS:
                    interrupted["send"] += 1
                    time.sleep(0.05)
                    continue
                if reply.status == 202:
                    accepted[sender.id, n] = reply.body["seq"]
                else:
                    trouble.append((sender.id, n, reply.status, reply.raw))
                break
            else:
                trouble.append(("send given up", sender.id, n))

    def expected(receiver: Peer) -> set[tuple[str, int]]:
        return {key for key in accepted.copy() if target[key[0]] == receiver.id}

    def receive_all(receiver: Peer) -> None:
        cursor = 0
        while time.monotonic() < deadline:
            got = {(m["from"], m["data"]) for m in delivered[receiver.id]}
            if senders_done.is_set() and expected(receiver) <= got:
                return
            try:
                reply = receiver.poll(after=cursor, wait=2)
            except CONNECTION_ERRORS:
                interrupted["poll"] += 1  # nothing acknowledged: poll again from the same cursor
                time.sleep(0.05)
                continue
            if reply.status != 200:
                trouble.append((receiver.id, reply.status, reply.raw))
                return
            delivered[receiver.id] += reply.body["messages"]
            cursor = reply.body["cursor"]
        trouble.append(("receiver out of time", receiver.id))

    receiving = [Call(lambda r=r: receive_all(r)) for r in receivers]
    sending = [Call(lambda s=s: send_all(s)) for s in senders]
    total = per_sender * len(senders)
    # The victim is the worker holding this poll, so the kill surely cuts a request in flight.
    held = raw_poll(server, watcher, watcher.cursor, wait=20)
    master = server.process.pid
    victim = wait_until(lambda: worker_holding(server, held), 5, "a worker taking the held poll")
    wait_until(lambda: len(accepted) >= total // 3, 20, "a third of the sends accepted")
    os.kill(victim, signal.SIGKILL)
    killed_at = len(accepted)
    with held:
        try:
            answer = held.recv(100)
        except ConnectionResetError:
            answer = b""
    assert answer == b"", "the held poll of the killed worker answered"
    # That client polls again from the same cursor, and gets what was sent since.
    for _ in range(20):
        try:
            reply = senders[0].send("watcher", "after-kill", key="after-kill")
            break
        except CONNECTION_ERRORS:
            time.sleep(0.05)
    else:
        raise AssertionError("no send got through after the kill")
    assert reply.status == 202
    assert [m["type"] for m in watcher.receive(wait=5)] == ["after-kill"]

    for call in sending:
        call.join(45)
    senders_done.set()
    for call in receiving:
        call.join(45)
    assert not trouble, (trouble[:10], interrupted)
    assert all(call.result is None for call in sending + receiving), [c.result for c in sending + receiving]
    assert killed_at < total, "the worker was killed after the load"
    assert len(accepted) == total, "every send should have been accepted in the end"

    for receiver in receivers:
        by_seq: dict[int, dict] = {}
        for message in delivered[receiver.id]:
            assert by_seq.setdefault(message["seq"], message) == message, "one seq, two envelopes"
        in_order = [by_seq[seq] for seq in sorted(by_seq) if by_seq[seq]["type"] == "n"]
        for sender in senders:
            if target[sender.id] != receiver.id:
                continue
            numbers = [m["data"] for m in in_order if m["from"] == sender.id]
            assert numbers == sorted(set(numbers)), f"{sender.id}'s envelopes repeated or out of order"
            assert set(numbers) <= set(attempted[sender.id])
            mine = {n: seq for (s, n), seq in accepted.items() if s == sender.id}
            assert {m["data"]: m["seq"] for m in in_order if m["from"] == sender.id} == mine

    # gunicorn replaced the killed worker; the master lived on.
    assert alive(server) and server.process.pid == master
    pids = wait_until(lambda: (p := server.worker_pids()) and len(p) == 2 and p, 10, "a new worker")
    assert victim not in pids
    assert healthz(api) == 200


# -- a client that vanishes before it reads (all of) a poll's response


def answered(server: LiveServer, peer: Peer) -> int:
    """How many polls of this peer the server has answered 200 (so far), by its access log."""
    return server.log.read_text().count(f'"GET /rooms/{peer.room}/peers/{peer.id}/messages" 200')


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_client_that_vanishes_mid_response_gets_the_same_envelopes_again(request, start_server, backend):
    env = {"REDIS_URL": request.getfixturevalue("redis_url")} if backend == "redis" else {}
    server = start_server(env=env)
    api = Api.over_http(server.url, timeout=10)

    def pair(room: str) -> tuple[Peer, Peer]:
        alice, bob = api.peer(room, "alice"), api.peer(room, "bob")
        alice.drain()
        return alice, bob

    def same_again(bob: Peer, sent: list[tuple[int, object]]) -> None:
        """A normal poll from the unmoved cursor gets what the vanished one was sent; then `after` acknowledges."""
        for _ in range(2):  # and again: nothing is acknowledged until `after` moves
            reply = bob.poll(wait=0)
            assert reply.status == 200
            assert [(m["seq"], m["data"]) for m in reply.body["messages"]] == sent
        bob.cursor = reply.body["cursor"]
        assert bob.receive() == []

    # 1. The client closes its socket right after sending the poll; the server answers into the void.
    alice, bob = pair("gone-early")
    sent = [(alice.send("bob", "n", n).body["seq"], n) for n in range(3)]
    before = answered(server, bob)
    raw_poll(server, bob, bob.cursor, wait=5).close()
    wait_until(lambda: answered(server, bob) > before, 5, "the server answering the vanished poll")
    same_again(bob, sent)

    # 2. The client reads the start of a large response, then resets the connection.
    alice, bob = pair("gone-midway")
    big = "x" * 60_000
    sent = [(alice.send("bob", "big", f"{n}{big}").body["seq"], f"{n}{big}") for n in range(3)]
    with raw_poll(server, bob, bob.cursor, wait=5) as sock:
        head = b""
        while len(head) < 2000:
            chunk = sock.recv(2000 - len(head))
            assert chunk, head
            head += chunk
        abort(sock)
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    same_again(bob, sent)

    # 3. The client vanishes while its poll is held; a send wakes the poll, which answers into the void.
    alice, bob = pair("gone-held")
    before = answered(server, bob)
    sock = raw_poll(server, bob, bob.cursor, wait=10)
    wait_until(lambda: api.request("GET", "/healthz").body["held_polls"] == 1, 5, "the raw poll being held")
    sock.close()
    sent = [(alice.send("bob", "n", n).body["seq"], n) for n in range(2)]
    wait_until(lambda: answered(server, bob) > before, 5, "the woken poll answering its vanished client")
    same_again(bob, sent)
