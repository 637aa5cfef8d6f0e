"""Bad input gets a clear 4xx JSON error and changes nothing, on every backend."""

from __future__ import annotations

import io

import pytest

from signaling import errors, http

from ..support.helpers import Api

LIMIT = 512  # MAX_MESSAGE_BYTES for these tests
SEND = "/rooms/r1/peers/bob/messages"
POLL = "/rooms/r1/peers/bob/messages"

# (id, method, path, body, extra headers, status, code); the body is raw text, sent as JSON.
# Requests go with alice's token, except polls, which carry bob's.
CASES = [
    ("join-malformed", "POST", "/rooms/r1/peers", "{bad", {}, 400, "bad_json"),
    ("join-array", "POST", "/rooms/r1/peers", "[1]", {}, 400, "bad_json"),
    ("join-only-whitespace", "POST", "/rooms/r1/peers", "\r\n", {}, 400, "bad_json"),  # not JSON, and not empty
    ("join-peer-id-number", "POST", "/rooms/r1/peers", '{"peer_id": 5}', {}, 400, "bad_id"),
    ("join-peer-id-space", "POST", "/rooms/r1/peers", '{"peer_id": "a b"}', {}, 400, "bad_id"),
    ("join-peer-id-65", "POST", "/rooms/r1/peers", '{"peer_id": "%s"}' % ("a" * 65), {}, 400, "bad_id"),
    ("join-peer-id-empty", "POST", "/rooms/r1/peers", '{"peer_id": ""}', {}, 400, "bad_id"),
    ("join-nan", "POST", "/rooms/r1/peers", '{"peer_id": NaN}', {}, 400, "bad_json"),
    ("join-bad-room", "POST", "/rooms/bad.room/peers", "{}", {}, 400, "bad_id"),
    ("join-room-65", "POST", "/rooms/%s/peers" % ("r" * 65), "{}", {}, 400, "bad_id"),
    ("join-not-utf8", "POST", "/rooms/r1/peers", b'{"peer_id": "\xff"}', {}, 400, "bad_json"),
    ("join-oversize", "POST", "/rooms/r1/peers", '{"x": "%s"}' % ("a" * LIMIT), {}, 413, "payload_too_large"),
    ("send-malformed", "POST", SEND, '{"type": "x",', {}, 400, "bad_json"),
    ("send-not-object", "POST", SEND, '"offer"', {}, 400, "bad_json"),
    ("send-empty", "POST", SEND, "", {}, 400, "bad_json"),
    ("send-no-type", "POST", SEND, '{"data": 1}', {}, 400, "bad_field"),
    ("send-type-number", "POST", SEND, '{"type": 7}', {}, 400, "bad_field"),
    ("send-type-spaces", "POST", SEND, '{"type": "an offer"}', {}, 400, "bad_field"),
    ("send-type-65", "POST", SEND, '{"type": "%s"}' % ("t" * 65), {}, 400, "bad_field"),
    ("send-reserved-joined", "POST", SEND, '{"type": "peer-joined"}', {}, 400, "reserved_type"),
    ("send-reserved-left", "POST", SEND, '{"type": "peer-left", "data": {"reason": "left"}}', {}, 400,
     "reserved_type"),
    ("send-nan", "POST", SEND, '{"type": "x", "data": NaN}', {}, 400, "bad_json"),
    ("send-infinity", "POST", SEND, '{"type": "x", "data": [-Infinity]}', {}, 400, "bad_json"),
    ("send-overflowing-number", "POST", SEND, '{"type": "x", "data": 1e400}', {}, 400, "bad_json"),
    ("broadcast-overflowing-number", "POST", "/rooms/r1/messages", '{"type": "x", "data": -1e999}', {}, 400,
     "bad_json"),
    ("poll-wait-underscore", "GET", POLL + "?wait=1_0", None, {}, 400, "bad_query"),
    ("leave-surrogate-token", "POST", "/rooms/r1/peers/bob/leave", '{"token": "\\ud800"}', {"Authorization": ""},
     401, "unauthorized"),
    ("send-oversize", "POST", SEND, '{"type": "x", "data": "%s"}' % ("a" * LIMIT), {}, 413, "payload_too_large"),
    ("send-key-65", "POST", SEND, '{"type": "x"}', {"Idempotency-Key": "k" * 65}, 400, "bad_idempotency_key"),
    ("send-bad-to", "POST", "/rooms/r1/peers/b%20b/messages", '{"type": "x"}', {}, 400, "bad_id"),
    ("broadcast-not-object", "POST", "/rooms/r1/messages", "[]", {}, 400, "bad_json"),
    ("broadcast-reserved", "POST", "/rooms/r1/messages", '{"type": "peer-left"}', {}, 400, "reserved_type"),
    ("poll-after-negative", "GET", POLL + "?after=-1", None, {}, 400, "bad_query"),
    ("poll-after-text", "GET", POLL + "?after=abc", None, {}, 400, "bad_query"),
    ("poll-after-float", "GET", POLL + "?after=1.5", None, {}, 400, "bad_query"),
    ("poll-after-beyond", "GET", POLL + "?after=99", None, {}, 400, "bad_cursor"),
    ("poll-limit-0", "GET", POLL + "?limit=0", None, {}, 400, "bad_query"),
    ("poll-limit-101", "GET", POLL + "?limit=101", None, {}, 400, "bad_query"),
    ("poll-wait-negative", "GET", POLL + "?wait=-1", None, {}, 400, "bad_query"),
    ("poll-wait-nan", "GET", POLL + "?wait=nan", None, {}, 400, "bad_query"),
    ("poll-wait-inf", "GET", POLL + "?wait=inf", None, {}, 400, "bad_query"),
    ("poll-wait-text", "GET", POLL + "?wait=soon", None, {}, 400, "bad_query"),
    # int() refuses more than 4,300 digits: the length is checked first
    ("poll-last-event-id-4301-digits", "GET", POLL, None, {"Last-Event-ID": "1" * 4301}, 400, "bad_query"),
    ("poll-after-4301-digits", "GET", POLL + "?after=" + "1" * 4301, None, {}, 400, "bad_query"),
    ("poll-limit-4301-digits", "GET", POLL + "?limit=" + "1" * 4301, None, {}, 400, "bad_query"),
    ("poll-after-20-digits", "GET", POLL + "?after=" + "9" * 20, None, {}, 400, "bad_query"),
    ("poll-wait-long", "GET", POLL + "?wait=" + "0" * 5000, None, {}, 400, "bad_query"),
    ("method-put-peers", "PUT", "/rooms/r1/peers", "{}", {}, 405, "method_not_allowed"),
    ("method-patch-messages", "PATCH", SEND, '{"type": "x"}', {}, 405, "method_not_allowed"),
    ("method-get-broadcast", "GET", "/rooms/r1/messages", None, {}, 405, "method_not_allowed"),
    ("method-get-leave", "GET", "/rooms/r1/peers/bob/leave", None, {}, 405, "method_not_allowed"),
    ("unknown-path", "GET", "/rooms", None, {}, 404, "not_found"),
    # 1.1: batches, all or nothing, and the cursor as a header
    ("batch-empty", "POST", SEND, '{"messages": []}', {}, 400, "bad_field"),
    ("batch-not-list", "POST", SEND, '{"messages": {"type": "x"}}', {}, 400, "bad_field"),
    ("batch-101", "POST", SEND, '{"messages": [' + ",".join(["{}"] * 101) + "]}", {}, 400, "bad_field"),
    ("batch-and-type", "POST", SEND, '{"type": "x", "messages": [{"type": "x"}]}', {}, 400, "bad_field"),
    ("batch-bad-item", "POST", SEND, '{"messages": [{"type": "x"}, {"type": 7}]}', {}, 400, "bad_field"),
    ("batch-item-not-object", "POST", SEND, '{"messages": [{"type": "x"}, []]}', {}, 400, "bad_field"),
    ("batch-reserved-item", "POST", SEND, '{"messages": [{"type": "x"}, {"type": "peer-joined"}]}', {}, 400,
     "reserved_type"),
    ("batch-nan-item", "POST", SEND, '{"messages": [{"type": "x", "data": NaN}]}', {}, 400, "bad_json"),
    ("batch-oversize", "POST", SEND, '{"messages": [{"type": "x", "data": "%s"}]}' % ("a" * LIMIT), {}, 413,
     "payload_too_large"),
    ("broadcast-batch-bad-item", "POST", "/rooms/r1/messages", '{"messages": [{"type": "x"}, {}]}', {}, 400,
     "bad_field"),
    ("poll-last-event-id-text", "GET", POLL, None, {"Last-Event-ID": "abc"}, 400, "bad_query"),
    ("poll-last-event-id-negative", "GET", POLL, None, {"Last-Event-ID": "-1"}, 400, "bad_query"),
    ("poll-last-event-id-beyond", "GET", POLL, None, {"Last-Event-ID": "99"}, 400, "bad_cursor"),
    ("poll-last-event-id-disagrees", "GET", POLL + "?after=0", None, {"Last-Event-ID": "1"}, 400, "bad_query"),
    ("send-no-token", "POST", SEND, '{"type": "x"}', {"Authorization": ""}, 401, "unauthorized"),
    ("send-basic-auth", "POST", SEND, '{"type": "x"}', {"Authorization": "Basic YTpi"}, 401, "unauthorized"),
]


@pytest.fixture
def room(make_app):
    """alice and bob in r1, bob with one unacknowledged envelope."""
    api = Api.over_flask(make_app(max_message_bytes=LIMIT).test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    alice.send("bob", "offer", {"sdp": "v=0"})
    return api, alice, bob


def snapshot(alice, bob):
    """What a bad request must not change: who is in, and what each mailbox holds."""
    return (
        alice.members().body,
        alice.poll(after=0).body,
        bob.poll(after=0).body,
    )


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(room, case):
    api, alice, bob = room
    _, method, path, body, headers, status, code = case
    before = snapshot(alice, bob)
    token = bob.token if path.startswith(POLL) and method == "GET" else alice.token
    headers = {"Content-Type": "application/json", **headers}
    if "Authorization" not in headers:
        headers["Authorization"] = f"Bearer {token}"
    elif not headers["Authorization"]:
        del headers["Authorization"]
    reply = api.request(method, path, data=body, headers=headers)
    assert reply.status == status, reply.raw
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.code == code
    assert reply.body["error"]["message"]
    assert snapshot(alice, bob) == before


def test_unknown_fields_are_ignored(room):
    _, alice, bob = room
    reply = alice.request("POST", SEND, {"type": "x", "data": 1, "extra": True, "seq": 99, "from": "mallory"})
    assert reply.status == 202
    last = bob.receive()[-1]
    assert last["from"] == "alice" and last["seq"] == 2 and "extra" not in last


def test_a_deeply_nested_beacon_body_holds_no_token(make_app):
    api = Api.over_flask(make_app().test_client())
    api.peer("r1", "bob")
    reply = api.request("POST", "/rooms/r1/peers/bob/leave", data="[" * 30000)
    assert reply.status == 401 and reply.code == "unauthorized"
    assert api.request("POST", "/rooms/r1/peers/nobody/leave", data="[" * 30000).status == 204


@pytest.mark.parametrize("length", ["1" * 5000, "1" * 20, "\u00b2", "\u0661\u0662", "\uff11", "-1", "+1", " 1"])
def test_a_content_length_that_is_no_short_number_is_refused(length):
    """gunicorn refuses these before the app; read_body holds without it (the test client, another server)."""
    with pytest.raises(errors.BadRequest):
        http.read_body({"CONTENT_LENGTH": length, "wsgi.input": io.BytesIO(b"{}")}, 65536)
