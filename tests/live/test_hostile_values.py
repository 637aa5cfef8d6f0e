"""Hostile values in every query parameter, header, path id and body field the API reads, against the live
server: each gets a 4xx JSON error with a code, or is ignored; never a 5xx, never a traceback in the log.

The values are an attacker's first tries: more digits than int() converts (4,300) and a header near
gunicorn's 8,190-byte limit, bytes that are not ASCII (latin-1 '²', which str.isdigit() takes for a
digit; UTF-8 Arabic-Indic and full-width digits), signs and whitespace.
"""

from __future__ import annotations

import http.client
import itertools
import socket
import time
import urllib.parse

import pytest

from signaling import errors, protocol
from signaling.tickets import mint

from ..conftest import NO_LIMITS
from ..support.helpers import Api, Peer, Reply
from ..support.servers import LiveServer

pytestmark = pytest.mark.live

SECRET = "hostile-values-join-secret-of-40-bytes.."
ROOM = "hostile"

VALUES = {
    "digits-5000": b"1" * 5000,
    "bytes-8000": b"7" * 8000,
    "latin-1": b"\xb2\xb3\xe9",
    "arabic-indic": "١٢٣".encode(),
    "full-width": "１２３".encode(),
    "minus": b"-1",
    "plus": b"+1",
    "spaces": b"1 2\t3",
}

# name -> (method, path, body, who calls): the leave calls name alice but never carry her token, so she stays
ENDPOINTS = {
    "join": ("POST", "/rooms/{room}/peers", b"{}", None),
    "members": ("GET", "/rooms/{room}/peers", None, "alice"),
    "leave": ("DELETE", "/rooms/{room}/peers/{peer}", None, None),
    "beacon": ("POST", "/rooms/{room}/peers/{peer}/leave", b"{}", None),
    "poll": ("GET", "/rooms/{room}/peers/{peer}/messages", None, "bob"),
    "send": ("POST", "/rooms/{room}/peers/{peer}/messages", b'{"type":"x"}', "alice"),
    "broadcast": ("POST", "/rooms/{room}/messages", b'{"type":"x"}', "alice"),
    "ice-servers": ("GET", "/rooms/{room}/peers/{peer}/ice-servers", None, "alice"),
    "healthz": ("GET", "/healthz", None, None),
}
#: the peer each path names: bob's mailbox for polls and sends, alice for the rest
PATH_PEER = {"poll": "bob", "send": "bob"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Behind one trusted proxy (X-Forwarded-For is read) and with join tickets (the ticket is read)."""
    env = {**{name.upper(): "0" for name in NO_LIMITS}, "TRUSTED_PROXIES": "1", "JOIN_SECRET": SECRET}
    server = LiveServer(tmp_path_factory.mktemp("hostile"), env).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def members(server) -> dict[str, Peer]:
    api = Api.over_http(server.url)
    return {name: api.peer(ROOM, name, ticket=mint(SECRET, ROOM, name)) for name in ("alice", "bob")}


@pytest.fixture(autouse=True)
def no_traceback(server):
    """Whatever the test sent, the server wrote no traceback and no error line."""
    start = server.log.stat().st_size
    yield
    written = server.log.read_bytes()[start:]
    assert b"Traceback" not in written and b"[ERROR]" not in written, written[-3000:].decode("latin-1")


def exchange(server: LiveServer, raw: bytes) -> Reply:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())


def call(server: LiveServer, members: dict[str, Peer], endpoint: str, *, room: bytes = ROOM.encode(),
         peer: bytes | None = None, query: bytes = b"", headers: dict[str, bytes] | None = None,
         body: bytes | None = None) -> Reply:
    """One request to `endpoint` with its caller's token, raw bytes where the test puts a value."""
    method, path, default_body, caller = ENDPOINTS[endpoint]
    peer = peer if peer is not None else PATH_PEER.get(endpoint, "alice").encode()
    target = path.encode().replace(b"{room}", room).replace(b"{peer}", peer)
    if endpoint == "poll" and not query:
        query = b"wait=0"  # a poll that is not refused answers at once
    if query:
        target += b"?" + query
    lines = {"Host": b"test"}
    if caller is not None:
        lines["Authorization"] = f"Bearer {members[caller].token}".encode()
    body = default_body if body is None else body
    if body is not None:
        lines.update({"Content-Type": b"application/json", "Content-Length": str(len(body)).encode()})
    lines.update(headers or {})
    head = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in lines.items())
    return exchange(server, method.encode() + b" " + target + b" HTTP/1.1\r\n" + head + b"\r\n" + (body or b""))


def encoded(value: bytes) -> bytes:
    return urllib.parse.quote_from_bytes(value, safe="").encode()


def assert_refused(reply: Reply, what: str) -> None:
    """A 4xx with the protocol's error body."""
    assert 400 <= reply.status < 500, (what, reply.status, reply.raw[:300])
    assert reply.headers["content-type"] == "application/json", (what, reply.raw[:300])
    assert reply.body["error"]["code"] in errors.by_code() and reply.body["error"]["message"], (what, reply.raw)


def assert_answered(reply: Reply, what: str) -> None:
    """Served as if the value were absent, or refused: never a 5xx."""
    if reply.status >= 400:
        assert_refused(reply, what)


# -- integers: each hostile value is refused

INTEGER_QUERIES = [("poll", "after"), ("poll", "limit"), ("poll", "wait")]


@pytest.mark.parametrize(("endpoint", "name"), INTEGER_QUERIES, ids=[f"{e}-{n}" for e, n in INTEGER_QUERIES])
def test_a_hostile_number_in_the_query_is_refused(server, members, endpoint, name):
    for label, value in VALUES.items():
        query = (b"" if name == "wait" else b"wait=0&") + name.encode() + b"=" + encoded(value)
        assert_refused(call(server, members, endpoint, query=query), label)


def test_a_hostile_last_event_id_is_refused(server, members):
    for label, value in VALUES.items():
        assert_refused(call(server, members, "poll", headers={"Last-Event-ID": value}), label)


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_a_hostile_content_length_is_refused(server, members, endpoint):
    for label, value in VALUES.items():
        assert_refused(call(server, members, endpoint, headers={"Content-Length": value}), label)


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_a_forwarded_address_that_is_no_ip_address_is_refused(server, members, endpoint):
    for label, value in VALUES.items():
        reply = call(server, members, endpoint, headers={"X-Forwarded-For": value})
        assert_refused(reply, label)
        assert "X-Forwarded-For" in reply.body["error"]["message"], (label, reply.raw[:300])


def test_a_forwarded_ip_address_is_still_taken(server, members):
    assert call(server, members, "members", headers={"X-Forwarded-For": b"198.51.100.7"}).status == 200
    assert call(server, members, "members", headers={"X-Forwarded-For": b"2001:db8::7"}).status == 200


# -- ids and tokens in the body: refused as numbers, as strings, and as bytes that are no JSON

BODY_FIELDS = [("join", "peer_id"), ("join", "ticket"), ("beacon", "token"), ("send", "messages"),
               ("broadcast", "messages")]


@pytest.mark.parametrize(("endpoint", "field"), BODY_FIELDS, ids=[f"{e}-{f}" for e, f in BODY_FIELDS])
def test_a_hostile_value_in_a_body_field_is_refused(server, members, endpoint, field):
    for label, value in VALUES.items():
        as_string = protocol.dumps(value.decode("utf-8", "replace")).encode()
        for form, text in (("raw", value), ("string", as_string)):
            body = b'{"' + field.encode() + b'": ' + text + b"}"
            assert_refused(call(server, members, endpoint, body=body), f"{label} as {form}")


# -- everything else the API reads: ignored or refused, never a 5xx

HEADERS = [(endpoint, name) for endpoint in ENDPOINTS for name in ("Authorization", "X-Request-Id", "Origin")]
HEADERS += [("send", "Idempotency-Key"), ("broadcast", "Idempotency-Key"), ("join", "Content-Type"),
            ("beacon", "Content-Type"), ("poll", "Accept")]


@pytest.mark.parametrize(("endpoint", "name"), HEADERS, ids=[f"{e}-{n}" for e, n in HEADERS])
def test_a_hostile_header_is_never_a_server_error(server, members, endpoint, name):
    prefixes = {"Authorization": (b"", b"Bearer "), "Content-Type": (b"", b"multipart/form-data; boundary=")}
    for label, value in VALUES.items():
        for prefix in prefixes.get(name, (b"",)):
            assert_answered(call(server, members, endpoint, headers={name: prefix + value}), f"{prefix!r}{label}")


PATHS = [(endpoint, part) for endpoint, (_, path, _, _) in ENDPOINTS.items()
         for part in ("room", "peer") if "{" + part + "}" in path]


@pytest.mark.parametrize(("endpoint", "part"), PATHS, ids=[f"{e}-{p}" for e, p in PATHS])
def test_a_hostile_id_in_the_path_is_never_a_server_error(server, members, endpoint, part):
    for label, value in VALUES.items():
        assert_answered(call(server, members, endpoint, **{part: encoded(value)}), label)


# -- bodies the server must not take for something else

_boundaries = itertools.count()


def form(fields: list[tuple[str, str]]) -> tuple[bytes, bytes]:
    """(Content-Type, body) of a multipart/form-data body, as `navigator.sendBeacon(url, formData)` sends it."""
    boundary = f"b{next(_boundaries)}"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
             for name, value in fields]
    return f"multipart/form-data; boundary={boundary}".encode(), ("".join(parts) + f"--{boundary}--\r\n").encode()


def test_a_beacon_form_of_too_many_parts_says_so(server, members):
    content_type, body = form([("x", "1")] * 1100 + [("token", members["alice"].token)])
    assert len(body) < 65536  # within MAX_MESSAGE_BYTES: the size is not what is wrong
    reply = call(server, members, "beacon", headers={"Content-Type": content_type}, body=body)
    assert_refused(reply, "1,101 parts")
    assert reply.status == 400 and "parts" in reply.body["error"]["message"], reply.raw
    assert "MAX_MESSAGE_BYTES" not in reply.body["error"]["message"]
    assert members["alice"].members().status == 200  # she did not leave


def test_a_beacon_form_with_its_token_still_leaves(server, members):
    api = Api.over_http(server.url)
    carol = api.peer(ROOM, "carol", ticket=mint(SECRET, ROOM, "carol"))
    content_type, body = form([("token", carol.token)])
    reply = call(server, members, "beacon", peer=b"carol", headers={"Content-Type": content_type}, body=body)
    assert reply.status == 204, reply.raw
    assert carol.members().code == "not_joined"


# -- log lines: one request, one line, whatever its path holds

FORGED = b'/x%0a127.0.0.1%20%22DELETE%20/rooms/victim/peers/alice%22%20204%200%200ms%20%3C1%3E%20request_id=forged'
# (request id, method, target, what the access log must show of the path)
LOGGED = [
    ("log-forged-line", "GET", FORGED,
     '/x\\x0a127.0.0.1 \\"DELETE /rooms/victim/peers/alice\\" 204 0 0ms <1> request_id=forged'),
    ("log-terminal-escape", "GET", b"/x%1b%5B2J%1b%5B31mred", "/x\\x1b[2J\\x1b[31mred"),
    ("log-quote-backslash-cr", "GET", b"/x%22%5C%0d%85", '/x\\"\\\\\\x0d\\x85'),
    ("log-message-path", "GET", b"/rooms/r%0ax/peers/bob/messages", "/rooms/r\\x0ax/peers/bob/messages"),
    ("log-flask-path", "POST", b"/rooms/r%0a%1bx/peers", "/rooms/r\\x0a\\x1bx/peers"),
]


def test_a_path_cannot_forge_an_access_log_line(server):
    start = server.log.stat().st_size
    for request_id, method, target, _ in LOGGED:
        reply = exchange(server, f"{method} ".encode() + target + b" HTTP/1.1\r\nHost: test\r\nX-Request-Id: "
                         + request_id.encode() + b"\r\nContent-Length: 2\r\n\r\n{}")
        assert_refused(reply, request_id)
    deadline = time.monotonic() + 10
    while not all(rid.encode() in server.log.read_bytes()[start:] for rid, *_ in LOGGED):
        assert time.monotonic() < deadline, server.log.read_bytes()[start:].decode("latin-1")
        time.sleep(0.05)
    written = server.log.read_bytes()[start:]
    assert b"\x1b" not in written and b"\r" not in written and b"\x85" not in written
    lines = written.decode().splitlines()
    lines = [line.partition(" gunicorn.access: ")[2] or line for line in lines]  # the message, past logs.LINE's prefix
    assert not any(line.startswith('127.0.0.1 "DELETE /rooms/victim') for line in lines), lines
    for request_id, method, _, path in LOGGED:
        mine = [line for line in lines if f"request_id={request_id}" in line]
        assert len(mine) == 1, (request_id, lines)
        assert mine[0].startswith(f'127.0.0.1 "{method} {path}" 4'), (mine[0], path)
        assert mine[0].endswith(f"request_id={request_id}"), mine[0]
