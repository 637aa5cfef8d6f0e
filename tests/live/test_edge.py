"""The HTTP edge, with raw sockets against the live server: what gunicorn answers on its own is the
protocol's JSON, bodies without a length are held to MAX_MESSAGE_BYTES, slow requests get 408."""

from __future__ import annotations

import http.client
import itertools
import json
import selectors
import socket
import time

import pytest

from signaling import errors
from signaling.worker import WRITE_TIMEOUT, RequestClock

from ..conftest import NO_LIMITS
from ..support.helpers import Api, Peer, Reply, held_poll
from ..support.servers import LiveServer

pytestmark = pytest.mark.live

LIMIT = 1024  # MAX_MESSAGE_BYTES of these servers
FAR_OVER = 200_000
READ_TIMEOUT = 2  # REQUEST_READ_TIMEOUT of the `slow` server
_rooms = itertools.count()


def start(tmp_path_factory, **env: str) -> LiveServer:
    env = {**{name.upper(): "0" for name in NO_LIMITS}, "MAX_MESSAGE_BYTES": str(LIMIT), **env}
    return LiveServer(tmp_path_factory.mktemp("edge"), env).start()


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """One server for the table and the chunked bodies: each test uses rooms of its own."""
    server = start(tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    """A server with a short REQUEST_READ_TIMEOUT, for the clocks."""
    server = start(tmp_path_factory, REQUEST_READ_TIMEOUT=str(READ_TIMEOUT))
    yield server
    server.stop()


def connect(server: LiveServer, timeout: float = 30) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def read_reply(sock: socket.socket) -> Reply:
    """One HTTP response from `sock` (which stays open when the response keeps it alive)."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())


def exchange(server: LiveServer, raw: bytes) -> Reply:
    with connect(server) as sock:
        sock.sendall(raw)
        return read_reply(sock)


def head(method: str, path: str, *lines: str) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: test\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode()


def chunked(body: bytes, size: int = 500) -> bytes:
    """`body` in the chunked transfer coding, `size` bytes a chunk."""
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def assert_json_error(reply: Reply, status: int, code: str) -> None:
    """The protocol's error: JSON, its code, a request id that the header repeats, CORS for scripts."""
    assert (reply.status, reply.code) == (status, code), (reply.status, reply.raw[:300])
    assert reply.headers["content-type"] == "application/json"
    assert reply.body["error"]["message"]
    assert reply.body["error"]["request_id"] == reply.headers["x-request-id"]
    assert reply.headers["access-control-allow-origin"] == "*"
    assert "X-Request-Id" in reply.headers["access-control-expose-headers"]


def assert_still_answers(server: LiveServer) -> None:
    reply = Api.over_http(server.url).request("GET", "/healthz")
    assert reply.status == 200, reply.raw


# (id, raw request, status, code): nothing here is answered by a view; every answer is JSON.
TABLE = [
    ("request-line-too-long", head("POST", "/rooms/" + "a" * 5000 + "/peers"), 414, "uri_too_long"),
    ("header-too-large", head("GET", "/healthz", "X-Big: " + "a" * 9000), 431, "header_too_large"),
    ("too-many-headers", head("GET", "/healthz", *(f"X-H{i}: 1" for i in range(101))), 431, "header_too_large"),
    ("request-line-garbage", b"GARBAGE\r\n\r\n", 400, "bad_request"),
    ("request-line-no-version", b"GET /healthz\r\n\r\n", 400, "bad_request"),
    ("http-version-unknown", b"GET /healthz HTTP/7.1\r\nHost: test\r\n\r\n", 400, "bad_request"),
    ("method-lowercase", b"get /healthz HTTP/1.1\r\nHost: test\r\n\r\n", 400, "bad_request"),
    ("header-without-colon", head("GET", "/healthz", "Not a header"), 400, "bad_request"),
    ("header-name-bad", head("GET", "/healthz", "X(y): 1"), 400, "bad_request"),
    ("header-folded", head("GET", "/healthz", "X-A: 1", " folded"), 400, "bad_request"),
    ("header-nul", head("GET", "/healthz", "X-A: a\x00b"), 400, "bad_request"),
    ("content-length-text", head("POST", "/rooms/r/peers", "Content-Length: ten"), 400, "bad_request"),
    ("content-length-twice", head("POST", "/rooms/r/peers", "Content-Length: 2", "Content-Length: 3") + b"{}",
     400, "bad_request"),
    ("length-and-chunked", head("POST", "/rooms/r/peers", "Content-Length: 2", "Transfer-Encoding: chunked")
     + chunked(b"{}"), 400, "bad_request"),
    ("chunk-size-bad", head("POST", "/rooms/r/peers", "Transfer-Encoding: chunked") + b"zz\r\n{}\r\n0\r\n\r\n",
     400, "bad_request"),
    ("send-chunk-size-bad", head("POST", "/rooms/r/peers/bob/messages", "Authorization: Bearer alice.x",
                                 "Transfer-Encoding: chunked") + b"zz\r\n{}\r\n0\r\n\r\n", 400, "bad_request"),
    ("chunk-unterminated", head("POST", "/rooms/r/peers", "Transfer-Encoding: chunked") + b"2\r\n{}xx0\r\n\r\n",
     400, "bad_request"),
    ("chunked-over-limit", head("POST", "/rooms/r/peers", "Transfer-Encoding: chunked") + chunked(b" " * FAR_OVER),
     413, "payload_too_large"),
    ("length-over-limit", head("POST", "/rooms/r/peers", f"Content-Length: {LIMIT + 1}") + b" " * (LIMIT + 1),
     413, "payload_too_large"),
    ("transfer-coding-gzip", head("POST", "/rooms/r/peers", "Transfer-Encoding: gzip"), 400, "bad_request"),
    ("transfer-coding-unknown", head("POST", "/rooms/r/peers", "Transfer-Encoding: br, chunked") + chunked(b"{}"),
     501, "unsupported_transfer_coding"),
    # gunicorn takes these, and would hand on the body still compressed: only chunked is decoded here
    ("transfer-coding-gzip-chunked", head("POST", "/rooms/r/peers", "Transfer-Encoding: gzip, chunked")
     + chunked(b"{}"), 501, "unsupported_transfer_coding"),
    ("send-transfer-coding-deflate-chunked", head("POST", "/rooms/r/peers/bob/messages", "Authorization: Bearer a.x",
                                                  "Transfer-Encoding: deflate, chunked") + chunked(b"{}"),
     501, "unsupported_transfer_coding"),
    ("transfer-coding-two-headers", head("POST", "/rooms/r/peers", "Transfer-Encoding: gzip",
                                         "Transfer-Encoding: chunked") + chunked(b"{}"),
     501, "unsupported_transfer_coding"),
    ("transfer-coding-identity-chunked", head("POST", "/rooms/r/peers", "Transfer-Encoding: identity, chunked")
     + chunked(b"{}"), 501, "unsupported_transfer_coding"),
    ("expect-unknown", head("GET", "/healthz", "Expect: wonders"), 417, "expectation_failed"),
    ("no-such-path", head("GET", "/nowhere"), 404, "not_found"),
]


@pytest.mark.parametrize(("raw", "status", "code"), [case[1:] for case in TABLE], ids=[case[0] for case in TABLE])
def test_what_the_server_refuses_on_its_own_is_json(edge, raw, status, code):
    assert_json_error(exchange(edge, raw), status, code)
    assert_still_answers(edge)


def test_a_request_id_and_an_allowed_origin_come_back_when_the_headers_were_read(start_server):
    server = start_server(env={"ALLOWED_ORIGINS": "https://app.example"})
    reply = exchange(server, head("POST", "/rooms/r/peers", "Origin: https://app.example", "X-Request-Id: edge-1",
                                  "Content-Length: ten"))
    assert (reply.status, reply.code) == (400, "bad_request")
    assert reply.headers["x-request-id"] == reply.body["error"]["request_id"] == "edge-1"
    assert reply.headers["access-control-allow-origin"] == "https://app.example"
    assert reply.headers["vary"] == "Origin"
    # a request line too long to read: no origin is known, so none is allowed
    reply = exchange(server, head("GET", "/" + "a" * 5000, "Origin: https://app.example"))
    assert (reply.status, reply.code) == (414, "uri_too_long")
    assert "access-control-allow-origin" not in reply.headers


# -- bodies without a Content-Length


def pair(server: LiveServer) -> tuple[Peer, Peer]:
    api = Api.over_http(server.url)
    room = f"chunked{next(_rooms)}"
    alice, bob = api.peer(room, "alice"), api.peer(room, "bob")
    bob.drain()
    return alice, bob


def padded(body: dict, size: int) -> bytes:
    """`body` as JSON, padded with whitespace (still the same JSON) to `size` bytes."""
    raw = json.dumps(body).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


def send_chunked(server: LiveServer, method: str, path: str, body: bytes, token: str | None = None) -> Reply:
    lines = ["Transfer-Encoding: chunked", "Content-Type: application/json"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return exchange(server, head(method, path, *lines) + chunked(body))


SIZES = {"at-the-limit": LIMIT, "one-byte-over": LIMIT + 1, "far-over": FAR_OVER}


def accepted(size: int) -> bool:
    return size <= LIMIT


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_a_chunked_send_is_held_to_the_limit(edge, size):
    alice, bob = pair(edge)
    reply = send_chunked(edge, "POST", f"/rooms/{alice.room}/peers/bob/messages",
                         padded({"type": "offer", "data": "x"}, size), alice.token)
    if accepted(size):
        assert reply.status == 202, reply.raw
        assert [m["type"] for m in bob.receive()] == ["offer"]
    else:
        assert_json_error(reply, 413, "payload_too_large")
        assert bob.receive() == []


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_a_chunked_broadcast_is_held_to_the_limit(edge, size):
    alice, bob = pair(edge)
    reply = send_chunked(edge, "POST", f"/rooms/{alice.room}/messages", padded({"type": "hello"}, size), alice.token)
    if accepted(size):
        assert reply.status == 202, reply.raw
        assert [m["type"] for m in bob.receive()] == ["hello"]
    else:
        assert_json_error(reply, 413, "payload_too_large")
        assert bob.receive() == []


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_a_chunked_join_is_held_to_the_limit(edge, size):
    alice, _ = pair(edge)
    reply = send_chunked(edge, "POST", f"/rooms/{alice.room}/peers", padded({"peer_id": "carol"}, size))
    if accepted(size):
        assert reply.status == 201, reply.raw
    else:
        assert_json_error(reply, 413, "payload_too_large")
    assert ("carol" in alice.members().body["peers"]) is accepted(size)


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_a_poll_with_a_chunked_body_is_held_to_the_limit(edge, size):
    """A poll reads no body, but one past the limit is refused like anywhere: nothing is acknowledged."""
    alice, bob = pair(edge)
    seq = alice.send("bob", "offer").body["seq"]
    reply = send_chunked(edge, "GET", f"/rooms/{alice.room}/peers/bob/messages?after={seq}&wait=0", b" " * size,
                         bob.token)
    if accepted(size):
        assert reply.status == 200, reply.raw
    else:
        assert_json_error(reply, 413, "payload_too_large")
    assert [m["type"] for m in bob.receive()] == ([] if accepted(size) else ["offer"])


LEAVES = {
    "delete": lambda peer, size: ("DELETE", f"/rooms/{peer.room}/peers/{peer.id}", padded({}, size), peer.token),
    "beacon": lambda peer, size: ("POST", f"/rooms/{peer.room}/peers/{peer.id}/leave",
                                  padded({"token": peer.token}, size), None),
}


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("form", LEAVES.keys())
def test_a_chunked_leave_is_held_to_the_limit(edge, form, size):
    alice, bob = pair(edge)
    reply = send_chunked(edge, *LEAVES[form](bob, size))
    if accepted(size):
        assert reply.status == 204, reply.raw
    else:
        assert_json_error(reply, 413, "payload_too_large")
    assert ("bob" in alice.members().body["peers"]) is not accepted(size)


def test_a_connection_goes_on_after_a_refused_chunked_body(edge):
    """The rest of a body past the limit is read and dropped: the next request on the connection is answered."""
    alice, bob = pair(edge)
    path = f"/rooms/{alice.room}/peers/bob/messages"
    lines = ["Transfer-Encoding: chunked", f"Authorization: Bearer {alice.token}"]
    with connect(edge) as sock:
        sock.sendall(head("POST", path, *lines) + chunked(padded({"type": "big"}, FAR_OVER)))
        assert_json_error(read_reply(sock), 413, "payload_too_large")
        sock.sendall(head("POST", path, *lines) + chunked(b'{"type": "small"}'))
        assert read_reply(sock).status == 202
    assert [m["type"] for m in bob.receive()] == ["small"]


# -- REQUEST_READ_TIMEOUT


def wait_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything `sock` receives until the server closes it."""
    sock.settimeout(timeout)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def as_reply(raw: bytes) -> Reply:
    head_part, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head_part.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return Reply(int(status_line.split()[1]), headers, body)


def test_half_a_request_is_answered_408_and_closed_after_the_timeout(slow):
    with connect(slow) as sock:
        opened = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        reply = as_reply(wait_closed(sock, READ_TIMEOUT + 20))
        took = time.monotonic() - opened
    assert_json_error(reply, 408, "request_timeout")
    assert reply.headers["connection"] == "close"
    assert READ_TIMEOUT - 0.2 <= took < READ_TIMEOUT + 10


def test_the_clock_runs_from_the_first_byte_not_from_the_last(slow):
    """A client that trickles a byte at a time cannot keep restarting the clock."""
    with connect(slow) as sock:
        opened = time.monotonic()
        for byte in b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 40:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # answered and closed already
                break
            time.sleep(0.25)
            if time.monotonic() - opened > READ_TIMEOUT + 5:
                break
        reply = as_reply(wait_closed(sock, 20))
        took = time.monotonic() - opened
    assert_json_error(reply, 408, "request_timeout")
    assert took < READ_TIMEOUT + 5


@pytest.mark.parametrize("what", ["send", "join"])
def test_a_body_that_stops_halfway_is_answered_408_and_nothing_is_stored(slow, what):
    alice, bob = pair(slow)
    if what == "send":
        start = head("POST", f"/rooms/{alice.room}/peers/bob/messages", f"Authorization: Bearer {alice.token}",
                     "Content-Length: 40") + b'{"type": "offer", "da'
    else:
        start = head("POST", f"/rooms/{alice.room}/peers", "Content-Length: 40") + b'{"peer_id": "car'
    with connect(slow) as sock:
        sock.sendall(start)
        reply = read_reply(sock)
        assert wait_closed(sock, 20) == b""
    assert_json_error(reply, 408, "request_timeout")
    assert bob.receive() == []
    assert alice.members().body["peers"] == ["alice", "bob"]


def test_a_connection_that_sends_nothing_is_closed_after_the_timeout(slow):
    with connect(slow) as sock:
        opened = time.monotonic()
        reply = as_reply(wait_closed(sock, READ_TIMEOUT + 20))
        took = time.monotonic() - opened
    assert_json_error(reply, 408, "request_timeout")
    assert READ_TIMEOUT - 0.2 <= took < READ_TIMEOUT + 10


def test_a_held_poll_outlasts_the_timeout(slow):
    """A held poll waits for the server, not the client: no clock runs on it."""
    alice, bob = pair(slow)
    empty = held_poll(bob, wait=READ_TIMEOUT + 1)
    empty["thread"].join(READ_TIMEOUT + 20)
    assert empty["reply"].status == 200 and empty["reply"].body["messages"] == []
    assert empty["took"] >= READ_TIMEOUT + 0.9
    woken = held_poll(bob, wait=20)
    time.sleep(READ_TIMEOUT + 0.5)
    alice.send("bob", "offer")
    woken["thread"].join(20)
    assert [m["type"] for m in woken["reply"].body["messages"]] == ["offer"]


def test_a_kept_alive_connection_may_idle_past_the_timeout(slow):
    """Between requests, the wait is keepalive's, not REQUEST_READ_TIMEOUT's."""
    with connect(slow) as sock:
        sock.sendall(head("GET", "/healthz"))
        assert read_reply(sock).status == 200
        time.sleep(READ_TIMEOUT + 1)
        sock.sendall(head("GET", "/healthz"))
        assert read_reply(sock).status == 200


STALLED = 500


def test_stalled_connections_neither_block_others_nor_outlive_the_timeout(slow):
    selector = selectors.DefaultSelector()
    stalled, opened_at = [], {}
    try:
        for i in range(STALLED):
            sock = connect(slow)
            opened_at[sock] = time.monotonic()
            sock.sendall(f"POST /rooms/stalled/peers HTTP/1.1\r\nHost: test\r\nX-Stall: {i}\r\n".encode())
            stalled.append(sock)
        api = Api.over_http(slow.url, timeout=10)
        started = time.monotonic()
        alice = api.peer(f"stalled{next(_rooms)}", "alice")
        joined = time.monotonic()
        assert alice.poll(wait=0).status == 200
        polled = time.monotonic()
        assert joined - started < 1 and polled - joined < 1, (joined - started, polled - joined)

        received = {sock: b"" for sock in stalled}
        closed_at = {}
        for sock in stalled:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + READ_TIMEOUT + 30
        while len(closed_at) < STALLED and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                chunk = key.fileobj.recv(65536)
                if chunk:
                    received[key.fileobj] += chunk
                else:
                    closed_at[key.fileobj] = time.monotonic()
                    selector.unregister(key.fileobj)
        assert len(closed_at) == STALLED
        assert all(closed_at[sock] - opened_at[sock] >= READ_TIMEOUT - 0.2 for sock in stalled)
        for raw in received.values():
            assert_json_error(as_reply(raw), 408, "request_timeout")
    finally:
        selector.close()
        for sock in stalled:
            sock.close()
    assert_still_answers(slow)


def test_a_request_that_waited_in_the_socket_for_a_busy_worker_is_still_read():
    """The clock is the client's: bytes that arrived in time are read even when the worker gets to them late."""
    server, client = socket.socketpair()
    with server, client:
        clock = RequestClock(server, read_timeout=0.2, keepalive=5)
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.4)  # the worker was busy elsewhere, past the deadline
        assert clock.recv(1024) == b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        with pytest.raises(errors.RequestTimeout):
            clock.recv(1024)  # nothing more has arrived, and the deadline is past


# -- WRITE_TIMEOUT: a client that stops reading


ENVELOPES = 100  # one poll's answer: 100 envelopes of 64 KB (6.4 MB), more than the kernel buffers on its way
NOT_READING = 10
TCP_CLOSE, TCP_CLOSE_WAIT = 7, 8  # Linux's tcp_states.h


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A server taking envelopes of up to 200 KB, for answers larger than socket buffers."""
    server = start(tmp_path_factory, MAX_MESSAGE_BYTES="204800", MAILBOX_BYTES=str(64 * 2**20))
    yield server
    server.stop()


def full_mailbox(server: LiveServer, size: int) -> tuple[Peer, int]:
    """bob, with ENVELOPES envelopes of `size` bytes of data waiting, and the length of the answer carrying them."""
    alice, bob = pair(server)
    for i in range(ENVELOPES):
        assert alice.send("bob", "big", f"{i:03}" + "x" * (size - 3)).status == 202
    reply = bob.poll(limit=ENVELOPES)  # after=0: nothing acknowledged
    assert len(reply.body["messages"]) == ENVELOPES
    return bob, len(reply.raw)


def poll_without_reading(server: LiveServer, peer: Peer) -> socket.socket:
    """A poll for everything, sent from a socket with a small receive buffer, whose answer is left unread."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: it sets the window
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(head("GET", f"/rooms/{peer.room}/peers/{peer.id}/messages?after=0&limit={ENVELOPES}",
                      f"Authorization: Bearer {peer.token}", "Connection: close"))
    return sock


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def rss(pid: int) -> int:
    """Resident memory of a process, bytes (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        kib = next(line for line in status if line.startswith("VmRSS:")).split()[1]
    return int(kib) * 1024


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """What is left to read on `sock`; fails (a timeout) unless the server has closed or reset it."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(1 << 20):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_a_client_that_stops_reading_is_reset_after_the_write_timeout_and_loses_nothing(big):
    bob, answer = full_mailbox(big, 64_000)
    [worker] = big.worker_pids()
    before = rss(worker)
    stalled = [poll_without_reading(big, bob) for _ in range(NOT_READING)]
    try:
        started, ended, peak = time.monotonic(), {}, before
        while len(ended) < NOT_READING and time.monotonic() < started + WRITE_TIMEOUT + 10:
            peak = max(peak, rss(worker))
            for sock in stalled:
                if sock not in ended and tcp_state(sock) in (TCP_CLOSE, TCP_CLOSE_WAIT):
                    ended[sock] = time.monotonic() - started
            time.sleep(0.05)
        assert len(ended) == NOT_READING, f"{NOT_READING - len(ended)} connections still open after the write timeout"
        assert WRITE_TIMEOUT - 0.5 < min(ended.values()) and max(ended.values()) < WRITE_TIMEOUT + 3, ended
        for sock in stalled:
            assert len(read_until_closed(sock, 5)) < answer, "the whole answer came through: the write never stalled"
    finally:
        for sock in stalled:
            sock.close()
    # While stalled, the worker held each answer once (it is the answer), not more; after, none of them.
    assert peak - before < NOT_READING * answer * 1.5, (before, peak)
    after = rss(worker)
    assert after - before < 2 * answer, (before, peak, after)
    # Nothing was acknowledged: everything is still there.
    got = bob.receive(limit=ENVELOPES)
    assert [m["data"][:3] for m in got] == [f"{i:03}" for i in range(ENVELOPES)]
    assert all(len(m["data"]) == 64_000 for m in got)


def test_a_slow_reader_gets_its_whole_answer_however_long_it_takes(big):
    """The write timeout is on the client taking nothing, not on the whole answer: pauses shorter than it are fine."""
    bob, answer = full_mailbox(big, 200_000)  # 20 MB: the server is still writing after the pauses below
    with poll_without_reading(big, bob) as sock:
        started = time.monotonic()
        received = b""
        sock.settimeout(5)
        while time.monotonic() - started < WRITE_TIMEOUT * 1.5:
            time.sleep(WRITE_TIMEOUT * 0.6)  # a pause shorter than the write timeout, then a little reading
            goal = len(received) + (1 << 20)
            while len(received) < goal:
                received += sock.recv(1 << 16)
        assert len(received) < answer / 2, "the answer was no longer being written after the pauses"
        received += read_until_closed(sock, 10)
    reply = as_reply(received)
    assert reply.status == 200 and len(reply.raw) == answer
    assert len(reply.body["messages"]) == ENVELOPES
