"""signaling.client, the Python peers' client, against live gunicorn servers on memory and Redis."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import http.client
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import redis

from signaling.client import Session, SignalingError, StreamTiming, join

from ..support.helpers import Api
from ..support.servers import ROOT, LiveServer

pytestmark = pytest.mark.live

#: Quick retries: the tests restart servers and wait for the client to notice.
FAST = {"backoff": (0.1, 1.0)}


def run(scenario, timeout: float = 60):
    """Run one async scenario to its end, failing it if it takes longer than `timeout`.

    In a thread of its own: in a run with browser tests, Playwright's loop is the main thread's.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, asyncio.wait_for(scenario, timeout)).result()


async def until(session: Session, kind: str, timeout: float = 15, **fields) -> dict:
    """The next envelope of `kind` (whose fields equal `fields`) that `session` yields."""
    async with asyncio.timeout(timeout):
        async for envelope in session:
            if envelope["type"] == kind and all(envelope.get(k) == v for k, v in fields.items()):
                return envelope
    raise AssertionError(f"{session.peer_id}'s session closed before a {kind} came: {session.error!r}")


def room() -> str:
    return f"c{uuid.uuid4().hex[:10]}"


def log_lines(server: LiveServer, method: str, path: str, at_least: int = 1) -> list[int]:
    """The statuses of the access log's lines for `method path`, in order, once it has `at_least` of them.

    A line is written just after its response is sent, so the test may read first: it waits (5 s at most).
    """
    pattern = re.compile(rf'"{method} {re.escape(path)}" (\d{{3}}) ')
    deadline = time.monotonic() + 5
    while True:
        statuses = [int(m.group(1)) for m in pattern.finditer(server.log.read_text())]
        if len(statuses) >= at_least or time.monotonic() > deadline:
            return statuses
        time.sleep(0.05)


class Recorder:
    """Every response an httpx client got (a stream's as its headers arrive): real traffic, seen.

    Kept as (monotonic time, method, path, status, the request's Accept, the answer's Content-Type).
    """

    def __init__(self):
        self.responses: list[tuple[float, str, str, int, str, str]] = []

    def client(self) -> httpx.AsyncClient:
        async def seen(response: httpx.Response):
            request = response.request
            self.responses.append((time.monotonic(), request.method, request.url.path, response.status_code,
                                   request.headers.get("Accept", ""), response.headers.get("Content-Type", "")))

        return httpx.AsyncClient(timeout=30, event_hooks={"response": [seen]})

    def of(self, method: str, path: str) -> list[tuple[float, int]]:
        return [(t, status) for t, m, p, status, *_ in self.responses if m == method and p == path]

    def kinds(self, path: str) -> list[tuple[str, str]]:
        """(what the request accepted, what the answer was) of each GET of `path`: a stream, or a poll."""
        return [(accept, kind.split(";")[0]) for _, m, p, _, accept, kind in self.responses
                if m == "GET" and p == path]


@pytest.fixture(params=["memory", "redis"])
def server(request, start_server) -> LiveServer:
    env = {"REDIS_URL": request.getfixturevalue("redis_url")} if request.param == "redis" else {}
    return start_server(env=env)


def test_two_peers_exchange_envelopes_and_see_each_other_come_and_go(server):
    r = room()

    async def scenario():
        alice = await join(server.url, r, peer_id="alice")
        assert (alice.peer_id, alice.peers, alice.resumed) == ("alice", set(), False)
        assert alice.token and alice.ice_servers == []
        async with await join(server.url, r, peer_id="bob") as bob:
            assert bob.peers == {"alice"}
            joined = await until(alice, "peer-joined")
            assert joined["from"] == "bob" and alice.peers == {"bob"}

            assert await bob.send("alice", "offer", {"sdp": "v=0"}) == 2  # after peer-joined, seq 1
            offer = await until(alice, "offer")
            assert (offer["from"], offer["data"], offer["seq"]) == ("bob", {"sdp": "v=0"}, 2)
            assert isinstance(offer["ts"], float)

            assert await alice.broadcast("hello", [1, 2]) == {"delivered_to": ["bob"], "mailbox_full": []}
            assert (await until(bob, "hello"))["data"] == [1, 2]
        left = await until(alice, "peer-left")
        assert (left["from"], left["data"]) == ("bob", {"reason": "left"})
        assert alice.peers == set()
        await alice.leave()
        await alice.leave()  # twice is fine
        with pytest.raises(SignalingError) as closed:
            await alice.send("bob", "offer")
        assert closed.value.code == "closed"

    run(scenario())
    assert log_lines(server, "DELETE", f"/rooms/{r}/peers/alice") == [204]


def test_a_refused_join_raises_with_the_servers_code(server):
    r = room()

    async def scenario():
        async with await join(server.url, r, peer_id="alice"):
            with pytest.raises(SignalingError) as taken:
                await join(server.url, r, peer_id="alice")
            assert (taken.value.status, taken.value.code) == (409, "peer_id_taken")

    run(scenario())


def test_a_token_resumes_the_peer_with_its_unacknowledged_envelopes(server):
    r = room()
    api = Api.over_http(server.url)
    earlier = api.peer(r, "alice")  # a page that saved its id and token, then reloaded

    async def scenario():
        async with await join(server.url, r, peer_id="bob") as bob:
            for n in range(3):
                await bob.send("alice", "note", n)
            assert [m["data"] for m in earlier.receive()] == [None, 0, 1, 2]  # peer-joined, then the notes
            earlier.poll(after=2)  # acknowledges peer-joined and note 0 only

            async with await join(server.url, r, peer_id="alice", token=earlier.token) as alice:
                assert alice.resumed and alice.token == earlier.token and alice.peers == {"bob"}
                assert [(await until(alice, "note"))["data"] for _ in range(2)] == [1, 2]
                await bob.send("alice", "note", 3)
                assert (await until(alice, "note"))["data"] == 3
            # A resume is no new member: bob heard of alice's leave, and of no second join.
            assert (await until(bob, "peer-left"))["from"] == "alice"

    run(scenario())


def test_a_resume_with_last_seq_skips_what_the_earlier_session_saw(server):
    """A new process resuming a peer (token and last_seq kept) is not handed again what the last one saw."""
    r = room()
    api = Api.over_http(server.url)
    earlier = api.peer(r, "alice")  # a process that kept its token and last seq, then ended without leaving

    async def scenario():
        async with await join(server.url, r, peer_id="bob") as bob:
            for n in range(3):
                await bob.send("alice", "note", n)
            seen = earlier.receive()  # read from cursor 0: nothing acknowledged
            assert [m["data"] for m in seen] == [None, 0, 1, 2]
            last_seq = seen[2]["seq"]  # note 1: the earlier process saw it, and note 2 it did not

            async with await join(server.url, r, peer_id="alice", token=earlier.token, last_seq=last_seq) as alice:
                assert alice.resumed and alice.last_seq == last_seq
                assert (await until(alice, "note"))["data"] == 2
                await bob.send("alice", "note", 3)
                assert (await until(alice, "note"))["data"] == 3
                assert alice.last_seq == seen[3]["seq"] + 1

    run(scenario())


def test_both_peers_rejoin_after_the_server_forgot_them(server):
    r = room()
    redis_url = server.env.get("REDIS_URL")

    async def scenario():
        async with await join(server.url, r, peer_id="alice", **FAST) as alice, \
                await join(server.url, r, peer_id="bob", **FAST) as bob:
            await until(alice, "peer-joined", **{"from": "bob"})
            old_tokens = alice.token, bob.token

            await asyncio.to_thread(server.stop)
            if redis_url:  # gunicorn alone keeps nothing: Redis must forget too
                with redis.Redis.from_url(redis_url) as client:
                    client.flushall()
            await asyncio.sleep(0.5)  # the polls fail meanwhile, and back off
            await asyncio.to_thread(server.start)  # the same port, nothing remembered

            # Each poll now gets 404 not_joined: both join afresh, and say who went and who is there.
            for session, other in ((alice, "bob"), (bob, "alice")):
                await until(session, "peer-left", **{"from": other, "data": {"reason": "rejoined"}})
            while alice.peers != {"bob"} or bob.peers != {"alice"}:
                await asyncio.sleep(0.05)
            assert (alice.token, bob.token) != old_tokens and alice.state == bob.state == "connected"
            seq = await alice.send("bob", "offer", "again")
            assert (await until(bob, "offer"))["seq"] == seq

    run(scenario())
    assert 404 in log_lines(server, "GET", f"/rooms/{r}/peers/alice/messages")


def test_a_full_mailbox_429_is_waited_out_for_its_retry_after_then_the_send_goes_through(start_server):
    server = start_server(env={"MAILBOX_LIMIT": "2"})
    r = room()
    api = Api.over_http(server.url)
    alice = api.peer(r, "alice")  # polls by hand, so her mailbox fills
    recorder = Recorder()
    path = f"/rooms/{r}/peers/alice/messages"

    async def scenario():
        async with recorder.client() as http, await join(server.url, r, peer_id="bob", http=http) as bob:
            assert await bob.send("alice", "note", 1) == 2  # peer-joined is seq 1, and is not counted
            assert await bob.send("alice", "note", 2) == 3
            third = asyncio.create_task(bob.send("alice", "note", 3))
            while not recorder.of("POST", path)[2:]:
                await asyncio.sleep(0.02)
            assert recorder.of("POST", path)[2][1] == 429
            await asyncio.to_thread(alice.drain)
            assert await third == 4

    run(scenario())
    (refused, _), (accepted, _) = recorder.of("POST", path)[2:]
    assert accepted - refused >= 1.0, "the retry came before the server's Retry-After: 1"
    assert log_lines(server, "POST", path, at_least=4) == [202, 202, 429, 202]


def test_a_redis_outage_is_waited_out_by_retry_after_on_503_then_the_peer_rejoins(start_server, private_redis):
    # POLL_WAIT=3: a poll held while the wake-up channel reconnects answers soon anyway.
    server = start_server(env={"REDIS_URL": private_redis.url, "POLL_WAIT": "3"})
    r = room()
    recorder = Recorder()
    path = f"/rooms/{r}/peers/alice/messages"

    async def scenario():
        async with recorder.client() as http, await join(server.url, r, peer_id="alice", http=http, **FAST) as alice:
            while not recorder.of("GET", path):
                await asyncio.sleep(0.02)
            await asyncio.to_thread(private_redis.stop)
            while [status for _, status in recorder.of("GET", path)].count(503) < 2:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(private_redis.start)  # the same port, and empty: alice is forgotten
            async with await join(server.url, r, peer_id="bob") as bob:
                await until(alice, "peer-joined", **{"from": "bob"})
                await bob.send("alice", "offer", "after the outage")
                assert (await until(alice, "offer"))["data"] == "after the outage"

    run(scenario())
    polls = recorder.of("GET", path)
    assert 404 in [status for _, status in polls], "alice should have found herself forgotten"
    gaps = [later - at for (at, status), (later, _) in zip(polls, polls[1:], strict=False) if status == 503]
    assert gaps and min(gaps) >= 1.0, f"a poll after a 503 came before its Retry-After: 1 ({gaps})"


def test_rate_limited_sends_are_waited_out_and_all_arrive_once_in_order(start_server):
    server = start_server(env={"SENDS_PER_PEER_PER_SECOND": "5"}, limits=True)
    r = room()

    async def scenario():
        async with await join(server.url, r, peer_id="alice") as alice, \
                await join(server.url, r, peer_id="bob") as bob:
            for n in range(12):
                await bob.send("alice", "note", n)
            received = [(await until(alice, "note"))["data"] for _ in range(12)]
            assert received == list(range(12))

    run(scenario())
    statuses = log_lines(server, "POST", f"/rooms/{r}/peers/alice/messages", at_least=13)
    assert 429 in statuses and statuses.count(202) == 12


def test_a_burst_of_sends_to_one_peer_resolves_each_to_its_own_seq_in_order(server):
    r = room()

    async def scenario():
        async with await join(server.url, r, peer_id="alice") as alice, \
                await join(server.url, r, peer_id="bob") as bob:
            seqs = await asyncio.gather(*(bob.send("alice", "candidate", {"n": n}) for n in range(40)))
            assert seqs == list(range(2, 42))
            received = [await until(alice, "candidate") for _ in range(40)]
            assert [(m["seq"], m["data"]["n"]) for m in received] == list(zip(seqs, range(40), strict=True))

    run(scenario())


def test_a_burst_of_sends_goes_as_one_batch_in_fewer_requests_than_envelopes(server):
    r = room()
    path = f"/rooms/{r}/peers/alice/messages"

    async def scenario():
        async with await join(server.url, r, peer_id="alice") as alice, \
                await join(server.url, r, peer_id="bob") as bob:
            first = asyncio.create_task(bob.send("alice", "description", "offer"))
            await asyncio.sleep(0)  # its request is under way; what follows waits for it, then goes as one
            burst = await asyncio.gather(*(bob.send("alice", "candidate", n) for n in range(30)))
            assert [await first, *burst] == list(range(2, 33))
            received = [(await until(alice, "candidate"))["data"] for _ in range(30)]
            assert received == list(range(30))

    run(scenario())
    posts = log_lines(server, "POST", path)
    assert posts and len(posts) <= 2 and set(posts) == {202}, posts


def test_a_bad_envelope_in_a_batch_fails_its_own_send_only(server):
    r = room()

    async def scenario():
        async with await join(server.url, r, peer_id="alice") as alice, \
                await join(server.url, r, peer_id="bob") as bob:
            kinds = ["note", "note", "peer-joined", "note"]  # a reserved type: the server refuses it
            results = await asyncio.gather(*(bob.send("alice", kind, n) for n, kind in enumerate(kinds)),
                                           return_exceptions=True)
            refused = results.pop(2)
            assert isinstance(refused, SignalingError) and refused.code == "reserved_type", refused
            assert results == [2, 3, 4]
            assert [(await until(alice, "note"))["data"] for _ in range(3)] == [0, 1, 3]

    run(scenario())


def test_a_batch_over_the_size_limit_is_sent_one_by_one(start_server):
    server = start_server(env={"MAX_MESSAGE_BYTES": "2000"})
    r = room()

    async def scenario():
        async with await join(server.url, r, peer_id="alice") as alice, \
                await join(server.url, r, peer_id="bob") as bob:
            big = "x" * 600  # one fits in a request, five do not
            assert await asyncio.gather(*(bob.send("alice", "note", big) for _ in range(5))) == [2, 3, 4, 5, 6]
            assert [len((await until(alice, "note"))["data"]) for _ in range(5)] == [600] * 5

    run(scenario())
    assert log_lines(server, "POST", f"/rooms/{r}/peers/alice/messages", at_least=6) == [413] + [202] * 5


def test_leaving_the_block_finishes_the_sends_already_made_then_leaves(server):
    r = room()

    async def scenario():
        async with await join(server.url, r, peer_id="alice") as alice:
            async with await join(server.url, r, peer_id="bob") as bob:
                unawaited = [asyncio.create_task(bob.send("alice", "note", n)) for n in range(5)]
                await asyncio.sleep(0)
            assert all(task.done() and not task.exception() for task in unawaited)
            assert [(await until(alice, "note"))["data"] for _ in range(5)] == list(range(5))
            left = await until(alice, "peer-left")
            assert left["data"] == {"reason": "left"}  # at once, not after peer_ttl

    run(scenario())
    assert log_lines(server, "DELETE", f"/rooms/{r}/peers/bob") == [204]


def test_the_client_imports_without_flask_gevent_or_redis():
    """A Python peer installs httpx alone: the import must not reach for the server's libraries."""
    code = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"flask", "werkzeug", "gevent", "redis", "gunicorn", "prometheus_client"}:
            raise ImportError(f"{name} must not be imported")
sys.meta_path.insert(0, Refuse())
import signaling.client
from signaling.client import join, Session, SignalingError, rtc_ice_servers
print("ok", sorted(m for m in sys.modules if m.split(".")[0] in {"flask", "gevent", "redis", "aiortc"}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "[]"]


def test_ice_servers_become_aiortc_rtc_ice_servers():
    from aiortc import RTCIceServer

    from signaling.client import rtc_ice_servers

    servers = rtc_ice_servers([
        {"urls": ["stun:stun.example.com:3478"]},
        {"urls": ["turn:turn.example.com:3478"], "username": "1700000000:bot", "credential": "c2VjcmV0"},
    ])
    assert servers == [
        RTCIceServer(urls=["stun:stun.example.com:3478"]),
        RTCIceServer(urls=["turn:turn.example.com:3478"], username="1700000000:bot", credential="c2VjcmV0"),
    ]


# -- the terminal client


class Terminal:
    """`python -m signaling.client ROOM` as a subprocess: lines in on stdin, JSON lines out on stdout."""

    def __init__(self, url: str, room: str, peer_id: str, *options: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "signaling.client", room, "--url", url, "--peer-id", peer_id, *options],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.readers: list[threading.Thread] = []
        self.out, self.err = self._lines(self.process.stdout), self._lines(self.process.stderr)
        self.notes = self.err.get(timeout=20)
        assert self.notes.startswith(f"# joined {room} as {peer_id}"), self.notes

    def _lines(self, stream) -> queue.Queue:
        """The stream's lines, read by a thread as they come; "" at its end."""
        lines: queue.Queue[str] = queue.Queue()

        def read():
            for line in stream:
                lines.put(line)
            lines.put("")

        self.readers.append(threading.Thread(target=read, daemon=True))
        self.readers[-1].start()
        return lines

    def type(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def envelope(self) -> dict:
        line = self.out.get(timeout=20)
        assert line, f"the terminal client ended: {list(self.err.queue)}"
        return json.loads(line)

    def quit(self) -> int:
        self.process.stdin.close()
        code = self.process.wait(20)
        for reader in self.readers:
            reader.join(5)
        self.process.stdout.close()
        self.process.stderr.close()
        return code


def test_two_terminal_clients_chat(live_server):
    r = room()
    alice = Terminal(live_server.url, r, "alice")
    bob = Terminal(live_server.url, r, "bob")
    try:
        assert bob.notes.strip() == f"# joined {r} as bob; here: alice"
        joined = alice.envelope()
        assert (joined["type"], joined["from"]) == ("peer-joined", "bob")

        bob.type('alice chat {"text": "hi alice"}')
        said = alice.envelope()
        assert (said["from"], said["type"], said["data"]) == ("bob", "chat", {"text": "hi alice"})
        alice.type("* chat \"hi all\"")
        alice.type("bob wave")  # no data: null
        assert [(m["type"], m["data"]) for m in (bob.envelope(), bob.envelope())] == [("chat", "hi all"),
                                                                                     ("wave", None)]
        assert bob.quit() == 0  # end of input: leave
        left = alice.envelope()
        assert (left["type"], left["from"], left["data"]) == ("peer-left", "bob", {"reason": "left"})
    finally:
        for terminal in (alice, bob):
            if terminal.process.poll() is None:
                terminal.quit()
    assert alice.process.returncode == 0


# -- servers of the tests' own: one that checks join tickets, and a proxy that replays an answer


@dataclasses.dataclass
class Streamed:
    """A SmallServer's answer written piece by piece: `parts` are bytes (written at once) or seconds (a pause);
    after them the server holds the connection, silent, for `hold` seconds, then closes it."""

    parts: list[bytes | float]
    hold: float = 0.0


class SmallServer:
    """A real HTTP server on 127.0.0.1 whose answers come from `answer(method, path, headers, body)`.

    `answer` returns (status, JSON body or None, or a Streamed answer, extra headers); every request is kept
    in `requests`.
    """

    def __init__(self, answer):
        self.requests: list[tuple[str, str, dict, dict | None]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                headers = {k.lower(): v for k, v in self.headers.items()}
                owner.requests.append((self.command, self.path, headers, body))
                status, reply, extra = answer(self.command, self.path, headers, body, raw)
                if isinstance(reply, Streamed):
                    return self.stream(status, reply, extra)
                data = b"" if reply is None else (reply if isinstance(reply, bytes) else json.dumps(reply).encode())
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **extra}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def stream(self, status: int, reply: Streamed, extra: dict) -> None:
                """Headers, then each part as it comes: no length, the end of the connection ends the body."""
                self.send_response(status)
                for name, value in {"Content-Type": "text/event-stream", **extra, "Connection": "close"}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.flush()
                for part in reply.parts:
                    if isinstance(part, bytes):
                        self.wfile.write(part)
                        self.wfile.flush()
                    else:
                        time.sleep(part)
                time.sleep(reply.hold)
                self.close_connection = True

            do_GET = do_POST = do_DELETE = handle_one

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client that hung up mid-poll (the session left): nothing to report

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SmallServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def joins(self) -> list[dict]:
        return [body for method, path, _, body in self.requests if method == "POST" and path.endswith("/peers")]


def error(status: int, code: str, message: str = "no") -> tuple[int, dict, dict]:
    return status, {"error": {"code": code, "message": message}}, {}


def ticket_checking(valid: set[str], polls_before_forgetting: int = 0):
    """A server that wants a valid ticket for each join, and forgets its peer after some polls."""
    polls = []

    def answer(method, path, headers, body, raw):
        if method == "POST" and path.endswith("/peers"):
            if "ticket" not in body:
                return error(401, "ticket_required", "this room needs a ticket")
            if body["ticket"] not in valid:
                return error(401, "bad_ticket", "ticket expired")
            joined = {"room": "r", "peer_id": body["peer_id"], "token": f"{body['peer_id']}.s", "peers": [],
                      "cursor": 0, "poll_wait": 1, "peer_ttl": 60, "ice_servers": []}
            return 201, joined, {}
        if method == "GET":
            polls.append(path)
            if len(polls) > polls_before_forgetting:
                return error(404, "not_joined", "no peer 'alice' in room 'r'")
            return 200, {"messages": [], "cursor": 0}, {}
        return 204, None, {}

    return answer


def test_a_ticket_is_fetched_for_every_fresh_join_and_a_bad_ticket_ends_the_session():
    tickets = iter(["t1", "t2"])
    fetched = []

    async def get_ticket():  # an application's backend would issue one here
        fetched.append(next(tickets))
        return fetched[-1]

    async def scenario(url):
        session = await join(url, "r", peer_id="alice", get_ticket=get_ticket, **FAST)
        # The server forgets alice at her first poll; her fresh join's new ticket is refused.
        with pytest.raises(SignalingError) as refused:
            async for _ in session:
                pass
        assert (refused.value.status, refused.value.code) == (401, "bad_ticket")
        assert session.state == "closed" and session.error is refused.value
        await session.leave()

    with SmallServer(ticket_checking(valid={"t1"})) as server:
        run(scenario(server.url))
    assert fetched == ["t1", "t2"]
    assert server.joins() == [{"peer_id": "alice", "ticket": "t1"}, {"peer_id": "alice", "ticket": "t2"}]


def test_a_join_refused_for_want_of_a_ticket_is_not_tried_again():
    async def scenario(url):
        with pytest.raises(SignalingError) as refused:
            await join(url, "r", peer_id="alice", **FAST)
        assert (refused.value.status, refused.value.code) == (401, "ticket_required")
        with pytest.raises(SignalingError) as bad:
            await join(url, "r", peer_id="alice", ticket="forged", **FAST)
        assert bad.value.code == "bad_ticket"

    with SmallServer(ticket_checking(valid={"t1"})) as server:
        run(scenario(server.url))
    assert server.joins() == [{"peer_id": "alice"}, {"peer_id": "alice", "ticket": "forged"}]


def test_a_resume_goes_without_a_ticket_and_gets_one_only_when_the_server_wants_it():
    async def scenario(url):
        async with await join(url, "r", peer_id="alice", token="alice.old", get_ticket=lambda: "t1",
                              **FAST) as session:
            assert session.token == "alice.s"

    with SmallServer(ticket_checking(valid={"t1"}, polls_before_forgetting=10)) as server:
        run(scenario(server.url))
    assert server.joins() == [{"peer_id": "alice"}, {"peer_id": "alice", "ticket": "t1"}]
    assert [headers.get("authorization") for method, path, headers, _ in server.requests if method == "POST"] == [
        "Bearer alice.old", "Bearer alice.old"]


def test_an_answer_delivered_twice_yields_its_envelopes_once(live_server):
    """A proxy in front of the real server answers one poll twice (a replay); the client drops the repeats."""
    r = room()
    upstream = urllib.parse.urlsplit(live_server.url)
    replayed: list[bytes] = []

    def forward(method, path, headers, body, raw):
        if replayed and "/peers/alice/messages" in path and len(replayed) == 1:
            replayed.append(replayed[0])
            return 200, replayed[0], {}
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=40)
        try:
            sent = {k: v for k, v in headers.items() if k in ("authorization", "content-type", "idempotency-key",
                                                                "last-event-id")}
            conn.request(method, path, body=raw or None, headers=sent)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if method == "GET" and "/peers/alice/messages" in path and not replayed and json.loads(data)["messages"]:
            replayed.append(data)
        return response.status, data or None, {}

    async def scenario(url):
        async with await join(live_server.url, r, peer_id="bob") as bob, \
                await join(url, r, peer_id="alice") as alice:  # alice polls through the proxy
            for n in range(3):
                await bob.send("alice", "note", n)
            while len(replayed) < 2:  # the poll after the first answer got that answer again
                await asyncio.sleep(0.02)
            await bob.send("alice", "note", "last")
            notes = []
            while notes[-1:] != ["last"]:
                notes.append((await until(alice, "note"))["data"])
            assert notes == [0, 1, 2, "last"]

    with SmallServer(forward) as proxy:
        run(scenario(proxy.url))
    assert json.loads(replayed[1])["messages"], "the replayed answer should carry envelopes"


def test_the_documented_example_prints_what_the_document_says(live_server):
    section = (ROOT / "docs" / "clients.md").read_text().split("## Python peers\n", 1)[1].split("\n## ", 1)[0]
    program = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    printed = section.split("It prints:\n", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    program = program.replace("http://localhost:8000", live_server.url)
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == printed


def test_against_a_server_that_takes_no_batches_sends_go_one_by_one():
    """A protocol 1.0 server reads a batch as one envelope without a type: 400. The client then stops batching."""
    stored: list[dict] = []

    def answer(method, path, headers, body, raw):
        if method == "POST" and path.endswith("/peers"):
            return 201, {"room": "r", "peer_id": "bob", "token": "bob.s", "peers": ["alice"], "cursor": 0,
                         "poll_wait": 1, "peer_ttl": 60, "ice_servers": []}, {}
        if method == "POST" and path.endswith("/alice/messages"):
            if not isinstance(body.get("type"), str):
                return error(400, "bad_field", "'type' must be 1-64 characters of A-Z a-z 0-9 _ . : -, got None")
            stored.append(body)
            return 202, {"seq": len(stored)}, {}
        if method == "GET":
            time.sleep(0.2)
            return 200, {"messages": [], "cursor": 0}, {}
        return 204, None, {}

    async def scenario(url):
        async with await join(url, "r", peer_id="bob", **FAST) as bob:
            first = await asyncio.gather(*(bob.send("alice", "candidate", n) for n in range(5)))
            second = await asyncio.gather(*(bob.send("alice", "candidate", n) for n in range(5, 8)))
            assert first + second == list(range(1, 9))

    with SmallServer(answer) as server:
        run(scenario(server.url))
    assert [body["data"] for body in stored] == list(range(8))
    sends = [body for method, path, _, body in server.requests if method == "POST" and "/messages" in path]
    assert ["messages" in body for body in sends] == [True] + [False] * 8  # one batch tried, then none


def test_join_tickets_against_the_real_server(start_server):
    """JOIN_SECRET on: the client's tickets admit it, a rejoin after a restart fetches a new one, none is fatal."""
    import jwt

    secret = "s" * 32
    server = start_server(env={"JOIN_SECRET": secret})
    r = room()
    fetched = []

    def get_ticket():
        fetched.append(jwt.encode({"room": r, "sub": "alice", "exp": int(time.time()) + 60, "jti": uuid.uuid4().hex},
                                  secret, algorithm="HS256"))
        return fetched[-1]

    async def scenario():
        with pytest.raises(SignalingError) as refused:
            await join(server.url, r, peer_id="alice")
        assert refused.value.code == "ticket_required"
        async with await join(server.url, r, peer_id="alice", get_ticket=get_ticket, **FAST) as alice:
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.start)  # memory forgotten: a fresh join, which needs a new ticket
            while len(fetched) < 2 or alice.state != "connected":
                await asyncio.sleep(0.05)
            assert await alice.send("alice", "note", "me again") == 1

    run(scenario())
    assert len(set(fetched)) == 2  # single-use tickets (jti): each fresh join had its own


# -- streaming receive (protocol 1.2)

STREAM = "text/event-stream"


def sse(seq: int, data=None) -> bytes:
    """One envelope as a server streams it: its seq as the event's id, the envelope as the data."""
    envelope = {"seq": seq, "from": "bob", "type": "note", "data": seq if data is None else data, "ts": 1.0 * seq}
    return f"id: {seq}\ndata: {json.dumps(envelope)}\n\n".encode()


def joined_answer(peer: str = "alice", poll_wait: float = 1) -> tuple[int, dict, dict]:
    return 201, {"room": "r", "peer_id": peer, "token": f"{peer}.s", "peers": [], "cursor": 0,
                 "poll_wait": poll_wait, "peer_ttl": 60, "ice_servers": []}, {}


async def envelopes(session: Session, count: int, timeout: float = 15) -> list[dict]:
    """The next `count` envelopes `session` yields."""
    got = []
    async with asyncio.timeout(timeout):
        async for envelope in session:
            got.append(envelope)
            if len(got) == count:
                return got
    raise AssertionError(f"the session closed after {len(got)} envelopes: {session.error!r}")


def test_a_session_streams_by_default_and_one_request_carries_every_envelope(server):
    """Needs the server's stream (protocol 1.2)."""
    r = room()
    recorder = Recorder()
    modes = []
    path = f"/rooms/{r}/peers/alice/messages"

    async def scenario():
        async with recorder.client() as http, \
                await join(server.url, r, peer_id="alice", http=http,
                           on_receive_mode=lambda *mode: modes.append(mode)) as alice, \
                await join(server.url, r, peer_id="bob") as bob:
            for burst in range(5):
                await asyncio.gather(*(bob.send("alice", "note", burst * 10 + n) for n in range(10)))
            got = await envelopes(alice, 51)
            assert [m["type"] for m in got[:1]] == ["peer-joined"]
            assert [m["data"] for m in got[1:]] == list(range(50))
            assert [m["seq"] for m in got] == list(range(1, 52))
            assert alice.receive_mode == "stream"

    run(scenario())
    assert modes == [("stream", "stream-open")]
    assert recorder.kinds(path) == [(STREAM, STREAM)], "one request, answered by a stream, carried all 51"


def test_a_stream_the_server_ends_is_followed_by_the_next_which_acknowledges_and_nothing_is_lost(start_server):
    """Needs the server's stream: it ends one at half of MAILBOX_LIMIT unacknowledged, the next acknowledges."""
    server = start_server(env={"MAILBOX_LIMIT": "6"})
    r = room()
    recorder = Recorder()
    path = f"/rooms/{r}/peers/alice/messages"

    async def scenario():
        async with recorder.client() as http, await join(server.url, r, peer_id="alice", http=http) as alice, \
                await join(server.url, r, peer_id="bob") as bob:
            for n in range(20):  # one at a time: with streams acknowledged as they end, never mailbox_full
                await bob.send("alice", "note", n)
            got = await envelopes(alice, 21)
            assert [m["data"] for m in got[1:]] == list(range(20))

    run(scenario())
    kinds = recorder.kinds(path)
    assert len(kinds) >= 4 and set(kinds) == {(STREAM, STREAM)}, kinds


def test_receive_poll_still_polls(server):
    r = room()
    recorder = Recorder()
    modes = []
    path = f"/rooms/{r}/peers/alice/messages"

    async def scenario():
        async with recorder.client() as http, \
                await join(server.url, r, peer_id="alice", http=http, receive="poll",
                           on_receive_mode=lambda *mode: modes.append(mode)) as alice, \
                await join(server.url, r, peer_id="bob") as bob:
            for n in range(3):
                await bob.send("alice", "note", n)
                assert (await until(alice, "note"))["data"] == n
            assert alice.receive_mode == "poll"

    run(scenario())
    assert modes == [("poll", "receive-option")]
    kinds = recorder.kinds(path)
    assert len(kinds) >= 3 and set(kinds) == {("*/*", "application/json")}, kinds


def test_a_server_that_answers_json_is_polled_for_good_and_its_answer_delivered():
    """A protocol 1.1 server ignores Accept: text/event-stream and answers a poll."""
    answers = iter([
        {"messages": [{"seq": 1, "from": "bob", "type": "note", "data": "in the first answer", "ts": 1.0}],
         "cursor": 1},
        {"messages": [{"seq": 2, "from": "bob", "type": "note", "data": "polled", "ts": 2.0}], "cursor": 2},
    ])

    def answer(method, path, headers, body, raw):
        if method == "POST":
            return joined_answer()
        if method == "GET":
            reply = next(answers, None)
            if reply is None:
                time.sleep(0.1)
                reply = {"messages": [], "cursor": 2}
            return 200, reply, {}
        return 204, None, {}

    modes = []

    async def scenario(url):
        async with await join(url, "r", peer_id="alice", on_receive_mode=lambda *mode: modes.append(mode),
                              **FAST) as alice:
            assert [m["data"] for m in await envelopes(alice, 2)] == ["in the first answer", "polled"]
            while len([r for r in server.requests if r[0] == "GET"]) < 4:
                await asyncio.sleep(0.05)
            assert alice.receive_mode == "poll"

    with SmallServer(answer) as server:
        run(scenario(server.url))
    gets = [(path, headers) for method, path, headers, _ in server.requests if method == "GET"]
    assert [headers.get("accept") for _, headers in gets[:4]] == [STREAM, "*/*", "*/*", "*/*"]
    assert [headers["last-event-id"] for _, headers in gets[:3]] == ["0", "1", "2"]
    assert modes == [("poll", "server-sends-json")]


def test_a_stream_that_ends_is_reopened_at_once_with_the_last_seq_seen_and_repeats_are_dropped():
    streams = iter([
        # The end cuts the third event off: it is not delivered, and not acknowledged.
        Streamed([b": hi\n\n", sse(1), sse(2), b'id: 3\ndata: {"seq": 3'], hold=0.1),
        # Not acknowledged yet, seq 2 may come again: the client drops it.
        Streamed([b"retry: 1000\n\n", sse(2), sse(3), sse(4)], hold=10),
    ])

    def answer(method, path, headers, body, raw):
        if method == "POST":
            return joined_answer()
        if method == "GET":
            return 200, next(streams), {}
        return 204, None, {}

    async def scenario(url):
        async with await join(url, "r", peer_id="alice", **FAST) as alice:
            assert [m["seq"] for m in await envelopes(alice, 3)] == [1, 2, 3]
            assert [m["seq"] for m in await envelopes(alice, 1)] == [4]
            assert alice.receive_mode == "stream"

    with SmallServer(answer) as server:
        run(scenario(server.url))
    gets = [(path, headers) for method, path, headers, _ in server.requests if method == "GET"]
    assert len(gets) == 2
    assert [headers["accept"] for _, headers in gets] == [STREAM, STREAM]
    assert [headers["last-event-id"] for _, headers in gets] == ["0", "2"]
    assert "after=2&" in gets[1][0]


def test_a_stream_held_back_by_a_buffering_proxy_is_left_for_polls_and_tried_again_later():
    """No byte within first_byte: cut, polls for poll_for (losing nothing), then a stream again."""
    gets = []

    def answer(method, path, headers, body, raw):
        if method == "POST":
            return joined_answer()
        if method != "GET":
            return 204, None, {}
        gets.append(headers)
        if headers.get("accept") == STREAM:
            if len(gets) == 1:
                return 200, Streamed([], hold=5), {}  # the headers, and nothing: the proxy holds the rest
            return 200, Streamed([b": hi\n\n", sse(2)], hold=10), {}
        if len(gets) == 2:
            return 200, {"messages": [json.loads(sse(1).split(b"data: ")[1])], "cursor": 1}, {}
        time.sleep(0.3)
        return 200, {"messages": [], "cursor": 1}, {}

    modes = []

    async def scenario(url):
        timing = StreamTiming(first_byte=0.5, poll_for=1.0)
        async with await join(url, "r", peer_id="alice", stream_timing=timing,
                              on_receive_mode=lambda *mode: modes.append(mode), **FAST) as alice:
            assert [m["seq"] for m in await envelopes(alice, 2)] == [1, 2]

    with SmallServer(answer) as server:
        run(scenario(server.url))
    kinds = [headers.get("accept") for headers in gets]
    assert kinds[:2] == [STREAM, "*/*"] and kinds[-1] == STREAM and set(kinds[1:-1]) == {"*/*"}, kinds
    assert modes == [("poll", "no-first-byte"), ("stream", "stream-open")]


def test_heartbeats_keep_a_quiet_stream_and_silence_past_heartbeat_and_grace_cuts_it():
    streams = iter([
        # 1.2 s of comments only: ten times the silence the client takes (0.3 s) between two of them.
        Streamed([b": hi\n\n", sse(1), *[0.1, b":\n"] * 12, sse(2)], hold=5),
        Streamed([b": hi\n\n", sse(3)], hold=10),
    ])

    def answer(method, path, headers, body, raw):
        if method == "POST":
            return joined_answer()
        if method == "GET":
            return 200, next(streams), {}
        return 204, None, {}

    async def scenario(url):
        async with await join(url, "r", peer_id="alice", stream_timing=StreamTiming(heartbeat=0.15, grace=0.15),
                              **FAST) as alice:
            assert [m["seq"] for m in await envelopes(alice, 3)] == [1, 2, 3]

    with SmallServer(answer) as server:
        run(scenario(server.url))
    gets = [headers for method, _, headers, _ in server.requests if method == "GET"]
    assert [headers["last-event-id"] for headers in gets] == ["0", "2"]


def test_the_terminal_client_says_it_streams(live_server):
    """Needs the server's stream."""
    r = room()
    alice = Terminal(live_server.url, r, "alice")
    bob = Terminal(live_server.url, r, "bob")  # alice has something to receive, whichever way
    try:
        assert alice.err.get(timeout=20) == "# receiving by stream: one open response (Server-Sent Events)\n"
        assert alice.envelope()["type"] == "peer-joined"
    finally:
        assert bob.quit() == 0 and alice.quit() == 0


def test_the_terminal_client_polls_when_asked(live_server):
    r = room()
    alice = Terminal(live_server.url, r, "alice", "--receive", "poll")
    try:
        assert alice.err.get(timeout=20) == "# receiving by polling: as asked\n"
    finally:
        assert alice.quit() == 0


SERVER_KEY = "a-server-api-key-of-at-least-32-chars-01"


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_meta_is_seen_and_a_removal_ends_the_session_for_good(start_server, request, store):
    env = {"SERVER_API_KEYS": SERVER_KEY, "STREAM_HEARTBEAT": "0.5"}
    if store == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    server = start_server(env=env)
    r = room()
    api = Api.over_http(server.url)

    async def scenario():
        alice = await join(server.url, r, peer_id="alice", meta={"name": "Alice"}, **FAST)
        assert alice.meta == {"name": "Alice"} and alice.members == {}
        bob = await join(server.url, r, peer_id="bob", meta={"name": "Bob"}, **FAST)
        assert bob.members == {"alice": {"name": "Alice"}}
        joined = await until(alice, "peer-joined")
        assert joined["data"] == {"meta": {"name": "Bob"}} and alice.members == {"bob": {"name": "Bob"}}
        await asyncio.to_thread(api.request, "DELETE", f"/server/rooms/{r}/peers/bob", {"reason": "be nice"},
                                token=SERVER_KEY)
        with pytest.raises(SignalingError) as removed:
            async with asyncio.timeout(10):
                async for _ in bob:
                    pass
        assert (removed.value.status, removed.value.code) == (403, "removed") and "be nice" in str(removed.value)
        assert bob.state == "closed"
        await bob.leave()  # nothing to leave: no request
        left = await until(alice, "peer-left")
        assert left["data"] == {"reason": "removed"} and alice.members == {}
        await alice.leave()

    run(scenario())
    assert log_lines(server, "POST", f"/rooms/{r}/peers", at_least=2) == [201, 201]  # bob never joined again
    assert log_lines(server, "DELETE", f"/rooms/{r}/peers/bob", at_least=0) == []
