"""The protocol's contract, run against every backend (memory and a real Redis)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time

import pytest

from ..support.helpers import Api, held_poll


def kinds(messages):
    return [(m["type"], m["from"]) for m in messages]


# -- join


def test_join_answers_with_everything_a_client_needs(api):
    reply = api.join("r1", "alice")
    assert reply.status == 201
    body = reply.body
    assert body["room"] == "r1" and body["peer_id"] == "alice"
    assert body["peers"] == [] and body["cursor"] == 0
    assert body["poll_wait"] == 25 and body["peer_ttl"] == 60
    assert body["ice_servers"] == []
    assert body["token"].startswith("alice.") and len(body["token"]) > 30
    assert reply.headers["location"] == "/rooms/r1/peers/alice"


def test_join_without_peer_id_gets_an_unguessable_one(api):
    first, second = api.join("r1").body, api.join("r1").body
    assert re.fullmatch(r"[A-Za-z0-9_-]{16,64}", first["peer_id"])
    assert first["peer_id"] != second["peer_id"]
    assert second["peers"] == [first["peer_id"]]


def test_join_tells_the_others(api):
    alice = api.peer("r1", "alice")
    api.peer("r1", "bob")
    assert kinds(alice.receive()) == [("peer-joined", "bob")]


def test_a_live_id_is_taken_without_its_token(api):
    alice = api.peer("r1", "alice")
    bob = api.peer("r1", "bob")
    assert api.join("r1", "alice").code == "peer_id_taken"
    assert api.join("r1", "alice", token=bob.token).code == "peer_id_taken"
    assert api.join("r1", "alice", token="garbage").status == 409
    assert alice.members().body["peers"] == ["alice", "bob"]


def test_resume_with_own_token_keeps_id_token_and_mailbox(make_app):
    api = Api.over_flask(make_app(room_capacity=2).test_client())
    alice = api.peer("r1", "alice")
    bob = api.peer("r1", "bob")
    bob.send("alice", "offer", {"sdp": "x"})
    bob.send("alice", "candidate", 1)
    alice.receive(limit=2)  # sees peer-joined and offer: cursor 2
    alice.receive(limit=1)  # acknowledges both, sees candidate

    again = api.join("r1", "alice", token=alice.token)  # the room is full: a resume still works
    assert again.status == 200
    assert again.body["token"] == alice.token
    assert again.body["cursor"] == 2
    assert again.body["peers"] == ["bob"]
    alice.cursor = again.body["cursor"]  # a reloaded page starts from the join's cursor
    assert [m["type"] for m in alice.receive()] == ["candidate"]
    assert bob.receive() == []  # no second peer-joined


def test_an_old_token_for_a_gone_peer_is_a_fresh_join(api):
    alice = api.peer("r1", "alice")
    alice.leave()
    again = api.join("r1", "alice", token=alice.token)
    assert again.status == 201
    assert again.body["token"] != alice.token


def test_room_full(make_app):
    api = Api.over_flask(make_app(room_capacity=2).test_client())
    api.peer("r1", "a")
    api.peer("r1", "b")
    reply = api.join("r1", "c")
    assert reply.status == 409 and reply.code == "room_full"
    assert api.join("r2", "c").status == 201


# -- poll


def test_poll_returns_in_order_and_after_acknowledges(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    for i in range(3):
        assert alice.send("bob", "n", i).body == {"seq": i + 1}
    reply = bob.poll(after=0)
    assert reply.status == 200
    assert [m["data"] for m in reply.body["messages"]] == [0, 1, 2]
    assert [m["seq"] for m in reply.body["messages"]] == [1, 2, 3]
    assert reply.body["cursor"] == 3
    # not acknowledged yet: they come again
    assert len(bob.poll(after=0).body["messages"]) == 3
    assert [m["data"] for m in bob.poll(after=2).body["messages"]] == [2]
    # acknowledged: gone, even for a poll that asks from 0
    assert bob.poll(after=3).body == {"messages": [], "cursor": 3}
    assert bob.poll(after=0).body == {"messages": [], "cursor": 0}


def test_envelope_shape(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    before = time.time()
    alice.send("bob", "offer", {"sdp": "v=0"})
    (envelope,) = bob.receive()
    assert set(envelope) >= {"seq", "from", "type", "data", "ts"}
    assert envelope["from"] == "alice" and envelope["type"] == "offer" and envelope["data"] == {"sdp": "v=0"}
    assert before - 1 <= envelope["ts"] <= time.time() + 1


def test_data_is_optional_and_any_json(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    reply = alice.request("POST", "/rooms/r1/peers/bob/messages", {"type": "bye"})
    assert reply.status == 202
    for value in ["text", 1.5, [1, {"a": None}], True, "ünïcödé ☃"]:
        alice.send("bob", "x", value)
    assert [m["data"] for m in bob.receive()] == [None, "text", 1.5, [1, {"a": None}], True, "ünïcödé ☃"]


def test_limit(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    for i in range(120):
        alice.send("bob", "n", i)
    assert len(bob.poll(after=0).body["messages"]) == 100
    reply = bob.poll(after=0, limit=7)
    assert [m["seq"] for m in reply.body["messages"]] == list(range(1, 8)) and reply.body["cursor"] == 7
    assert bob.poll(after=100).body["cursor"] == 120


def test_bad_cursor(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    alice.send("bob")
    reply = bob.poll(after=2)
    assert reply.status == 400 and reply.code == "bad_cursor"
    assert len(bob.poll(after=0).body["messages"]) == 1  # nothing acknowledged


def test_a_held_poll_returns_when_a_message_arrives(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    poll = held_poll(bob, wait=10)
    time.sleep(0.3)
    assert poll["thread"].is_alive()
    alice.send("bob", "offer", "x")
    poll["thread"].join(5)
    assert [m["type"] for m in poll["reply"].body["messages"]] == ["offer"]
    assert 0.3 <= poll["took"] < 2


def test_a_poll_waits_at_most_wait_seconds(api):
    bob = api.peer("r1", "bob")
    started = time.monotonic()
    assert bob.poll(wait=0.5).body == {"messages": [], "cursor": 0}
    assert 0.45 <= time.monotonic() - started < 3
    started = time.monotonic()
    bob.poll(wait=0)
    assert time.monotonic() - started < 0.5


def test_wait_is_capped_at_poll_wait(make_app):
    api = Api.over_flask(make_app(poll_wait=0.5).test_client())
    bob = api.peer("r1", "bob")
    for wait in ("1000", "3.4e%2B38", "1e400"):
        started = time.monotonic()
        reply = bob.request("GET", f"/rooms/r1/peers/bob/messages?wait={wait}")
        assert reply.status == 200
        assert 0.45 <= time.monotonic() - started < 2


def test_a_newer_poll_ends_the_older_one(api):
    bob = api.peer("r1", "bob")
    older = held_poll(bob, wait=10)
    time.sleep(0.3)
    newer = held_poll(bob, wait=1)
    older["thread"].join(5)
    assert older["reply"].status == 200 and older["reply"].body["messages"] == []
    assert older["took"] < 1.3
    newer["thread"].join(5)


def test_a_poll_without_the_token_ends_no_held_poll(api):
    bob = api.peer("r1", "bob")
    held = held_poll(bob, wait=1.5)
    time.sleep(0.3)
    for token in (None, "bob.forged"):
        reply = api.request("GET", "/rooms/r1/peers/bob/messages?wait=1", token=token)
        assert reply.status == 401
    time.sleep(0.3)
    assert held["thread"].is_alive()  # still held: only bob can end bob's poll
    held["thread"].join(5)


def test_poll_auth(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    path = "/rooms/r1/peers/bob/messages?wait=0"
    assert api.request("GET", path).code == "unauthorized"
    assert api.request("GET", path, token=alice.token).code == "unauthorized"
    assert api.request("GET", path, token="bob.forged").status == 401
    bob.leave()
    assert api.request("GET", path, token=bob.token).code == "not_joined"
    assert api.request("GET", path).status == 404
    assert api.request("GET", "/rooms/r1/peers/nobody/messages", token=alice.token).code == "not_joined"


# -- send and broadcast


def test_send_to_a_stranger(api):
    alice = api.peer("r1", "alice")
    api.peer("r2", "bob")
    reply = alice.send("bob")
    assert reply.status == 404 and reply.code == "peer_not_found"
    assert "bob" in reply.body["error"]["message"]


def test_send_needs_a_member_token(api):
    api.peer("r1", "bob")
    assert api.request("POST", "/rooms/r1/peers/bob/messages", {"type": "x"}).code == "unauthorized"
    gone = api.peer("r1", "gone")
    gone.leave()
    assert gone.send("bob").code == "not_joined"


def test_mailbox_full_refuses_and_stores_nothing(make_app):
    api = Api.over_flask(make_app(mailbox_limit=3).test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    for i in range(3):
        assert alice.send("bob", "n", i).status == 202
    reply = alice.send("bob", "n", 3)
    assert reply.status == 429 and reply.code == "mailbox_full"
    assert reply.body["error"]["message"] == ("the mailbox of 'bob' is full (MAILBOX_LIMIT 3 envelopes, "
                                             "MAILBOX_BYTES 1048576 bytes)")  # every backend
    assert int(reply.headers["retry-after"]) >= 1
    assert [m["data"] for m in bob.receive()] == [0, 1, 2]
    assert alice.send("bob", "n", 4).status == 429  # seen, not yet acknowledged
    assert bob.receive() == []  # acknowledges 1-3
    assert alice.send("bob", "n", 4).status == 202
    assert [m["data"] for m in bob.receive()] == [4]


def test_server_events_never_count_against_the_limit(make_app):
    api = Api.over_flask(make_app(mailbox_limit=2).test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    bob.send("alice")
    bob.send("alice")
    for name in ("c", "d", "e"):
        api.peer("r1", name).leave()  # each a peer-joined and a peer-left for alice
    types = [m["type"] for m in alice.receive()]
    assert types.count("note") == 2 and types.count("peer-joined") == 4 and types.count("peer-left") == 3
    assert bob.send("alice").status == 429  # the two notes fill it; the events do not
    alice.receive()
    assert bob.send("alice").status == 202


def test_reserved_types_are_refused(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    for kind in ("peer-joined", "peer-left"):
        reply = alice.send("bob", kind)
        assert reply.status == 400 and reply.code == "reserved_type"
    assert bob.receive() == []


def test_size_limit_is_exact(make_app):
    api = Api.over_flask(make_app(max_message_bytes=200).test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    head = '{"type":"x","data":"'
    exact = head + "a" * (200 - len(head) - 2) + '"}'
    assert len(exact) == 200
    assert alice.request("POST", "/rooms/r1/peers/bob/messages", data=exact).status == 202
    reply = alice.request("POST", "/rooms/r1/peers/bob/messages", data=exact[:-2] + 'a"}')
    assert reply.status == 413 and reply.code == "payload_too_large"
    assert len(bob.receive()) == 1


def test_idempotent_send(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    first = alice.send("bob", "offer", {"sdp": 1}, key="k1")
    again = alice.send("bob", "offer", {"sdp": 1}, key="k1")
    assert first.status == again.status == 202 and first.body == again.body == {"seq": 1}
    other = alice.send("bob", "offer", {"sdp": 2}, key="k1")
    assert other.status == 422 and other.code == "idempotency_key_reused"
    assert alice.send("bob", "offer", {"sdp": 1}, key="k2").body == {"seq": 2}
    assert [m["data"] for m in bob.receive()] == [{"sdp": 1}, {"sdp": 1}]
    assert alice.send("bob", "x", key="k" * 65).code == "bad_idempotency_key"


def test_a_repeat_answers_as_the_first_whatever_its_seq(api):
    """The memory backend once packed a send's seq 98 into a receipt that read as a broadcast's (a 500)."""
    alice, _bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    assert [alice.send("bob", "n", key=f"k{i}").body for i in range(1, 260)] == [{"seq": i} for i in range(1, 260)]
    assert [alice.send("bob", "n", key=f"k{i}").body for i in range(1, 260)] == [{"seq": i} for i in range(1, 260)]


def test_a_key_does_not_outlive_the_recipient(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    assert alice.send("bob", "offer", 1, key="k").body == {"seq": 1}
    bob.leave()
    bob = api.peer("r1", "bob")  # a new bob: the old receipt must not swallow this send
    assert alice.send("bob", "offer", 1, key="k").status == 202
    assert [m["type"] for m in bob.receive()] == ["offer"]


def test_a_refused_send_does_not_record_its_key(make_app):
    api = Api.over_flask(make_app(mailbox_limit=1).test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    alice.send("bob", "n", 0)
    assert alice.send("bob", "n", 1, key="retry").status == 429
    bob.receive()
    bob.receive()  # acknowledged: room for one again
    assert alice.send("bob", "n", 1, key="retry").body == {"seq": 2}
    assert [m["data"] for m in bob.receive()] == [1]


def test_broadcast(make_app):
    api = Api.over_flask(make_app(mailbox_limit=1).test_client())
    alice, bob, _carol = api.peer("r1", "alice"), api.peer("r1", "bob"), api.peer("r1", "carol")
    alice.send("carol")  # carol's mailbox is now full
    reply = alice.broadcast("hello", "hi", key="b1")
    assert reply.status == 202
    assert reply.body == {"delivered_to": ["bob"], "mailbox_full": ["carol"]}
    assert alice.broadcast("hello", "hi", key="b1").body == reply.body  # a repeat stores nothing
    assert alice.broadcast("hello", "other", key="b1").code == "idempotency_key_reused"
    assert [m["type"] for m in bob.receive()] == ["peer-joined", "hello"]
    assert [m["type"] for m in alice.receive()] == ["peer-joined", "peer-joined"]


def test_members(api):
    alice = api.peer("r1", "alice")
    api.peer("r1", "bob")
    api.peer("r2", "carol")
    assert alice.members().body == {"room": "r1", "peers": ["alice", "bob"],
                                     "members": [{"peer_id": "alice", "meta": None}, {"peer_id": "bob", "meta": None}]}
    assert api.request("GET", "/rooms/r1/peers").code == "unauthorized"


# -- leave and presence


def test_leave_by_delete(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    alice.send("bob")
    assert bob.leave().status == 204
    assert alice.members().body["peers"] == ["alice"]
    left = alice.receive()
    assert left[-1]["type"] == "peer-left" and left[-1]["from"] == "bob"
    assert left[-1]["data"] == {"reason": "left"}
    assert bob.leave().status == 204  # not a member: nothing happens
    again = api.peer("r1", "bob")
    assert again.receive() == []  # the old mailbox is gone


def test_a_held_poll_ends_200_when_its_peer_leaves_and_404_not_joined_when_it_is_removed(make_app):
    """A leave is the peer's own act: its poll ends as a newer poll would end it. Removed, it must join again."""
    api = Api.over_flask(make_app(peer_ttl=1.0, poll_wait=5, reap_interval=0.1).test_client())
    bob, carol = api.peer("r1", "bob"), api.peer("r2", "carol")
    held = held_poll(bob, wait=5)
    time.sleep(0.3)
    assert bob.leave().status == 204
    held["thread"].join(5)
    assert (held["reply"].status, held["reply"].body) == (200, {"messages": [], "cursor": 0})
    assert held["took"] < 2
    removed = held_poll(carol, wait=4)  # silent past PEER_TTL while held: the reaper removes carol
    removed["thread"].join(8)
    assert removed["reply"].code == "not_joined" and removed["took"] < 3.5


def beacon_bodies(token: str) -> dict[str, tuple[str, bytes]]:
    """(Content-Type, body) as Chromium's `navigator.sendBeacon(url, data)` sends each kind of `data`."""
    boundary = "----WebKitFormBoundaryq3dMfRQ8ZLvB2xTw"
    form_data = (f'--{boundary}\r\nContent-Disposition: form-data; name="token"\r\n\r\n{token}\r\n'
                 f"--{boundary}--\r\n")
    return {
        "string": ("text/plain;charset=UTF-8", f'{{"token": "{token}"}}'.encode()),
        "URLSearchParams": ("application/x-www-form-urlencoded;charset=UTF-8", f"token={token}".encode()),
        "FormData": (f"multipart/form-data; boundary={boundary}", form_data.encode()),
        "json-Blob": ("application/json", json.dumps({"token": token}).encode()),
    }


@pytest.mark.parametrize("how", ["header", "string", "URLSearchParams", "FormData", "json-Blob"])
def test_leave_for_send_beacon(api, how):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    path = "/rooms/r1/peers/bob/leave"
    if how == "header":
        reply = api.request("POST", path, token=bob.token)
    else:
        content_type, body = beacon_bodies(bob.token)[how]
        reply = api.request("POST", path, data=body, headers={"Content-Type": content_type})
    assert reply.status == 204, reply.raw
    assert alice.members().body["peers"] == ["alice"]


@pytest.mark.parametrize("how", ["string", "URLSearchParams", "FormData", "json-Blob"])
def test_a_beacon_with_a_wrong_token_changes_nothing(api, how):
    alice = api.peer("r1", "alice")
    api.peer("r1", "bob")
    content_type, body = beacon_bodies(alice.token)[how]
    reply = api.request("POST", "/rooms/r1/peers/bob/leave", data=body, headers={"Content-Type": content_type})
    assert reply.code == "unauthorized"
    assert alice.members().body["peers"] == ["alice", "bob"]


def test_leave_with_a_wrong_token_changes_nothing(api):
    alice = api.peer("r1", "alice")
    api.peer("r1", "bob")
    assert api.request("DELETE", "/rooms/r1/peers/bob", token=alice.token).code == "unauthorized"
    assert api.request("POST", "/rooms/r1/peers/bob/leave", {"token": "bob.nope"}).status == 401
    assert api.request("DELETE", "/rooms/r1/peers/bob").status == 401
    assert alice.members().body["peers"] == ["alice", "bob"]
    assert api.request("DELETE", "/rooms/r1/peers/nobody").status == 204


def test_silent_peers_time_out_once(make_app):
    api = Api.over_flask(make_app(peer_ttl=1.0, poll_wait=0.5, reap_interval=0.1).test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    deadline = time.monotonic() + 3
    seen = []
    while time.monotonic() < deadline:  # alice keeps polling: a heartbeat; bob says nothing
        seen += alice.receive(wait=0.2)
    assert kinds(seen) == [("peer-joined", "bob"), ("peer-left", "bob")]
    assert seen[-1]["data"] == {"reason": "timeout"}
    assert alice.members().body["peers"] == ["alice"]
    assert bob.poll().code == "not_joined"


def test_a_dead_peer_does_not_hold_its_id(make_app):
    api = Api.over_flask(make_app(peer_ttl=0.5, poll_wait=0.2, reap_interval=60).test_client())
    api.peer("r1", "alice")
    time.sleep(0.7)
    assert api.join("r1", "alice").status == 201  # the reaper has not run; the join reaps


# -- ICE, health, CORS, errors


def test_ice_servers_with_turn_rest_credentials(make_app):
    app = make_app(stun_urls=("stun:stun.example.org:3478",), turn_urls=("turn:turn.example.org:3478",),
                   turn_secret="s3cret", turn_ttl=600)
    api = Api.over_flask(app.test_client())
    alice = api.join("r1", "alice").body
    stun, turn = alice["ice_servers"]
    assert stun == {"urls": ["stun:stun.example.org:3478"]}
    expires, peer = turn["username"].split(":")
    assert peer == "alice" and 590 <= int(expires) - time.time() <= 601
    expected = base64.b64encode(hmac.new(b"s3cret", turn["username"].encode(), hashlib.sha1).digest()).decode()
    assert turn["credential"] == expected
    fresh = api.request("GET", "/rooms/r1/peers/alice/ice-servers", token=alice["token"])
    assert fresh.status == 200 and fresh.body["ttl"] == 600 and len(fresh.body["ice_servers"]) == 2
    assert api.request("GET", "/rooms/r1/peers/alice/ice-servers").code == "unauthorized"


def test_healthz(api, backend_name):
    reply = api.request("GET", "/healthz")
    expected = {"memory": "memory", "redis": "redis", "cluster": "redis-cluster"}[backend_name]
    assert reply.status == 200 and reply.body["status"] == "ok" and reply.body["backend"] == expected


def test_cors_preflight_and_exposed_headers(api):
    preflight = api.request("OPTIONS", "/rooms/r1/peers", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"})
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert all(h in allowed for h in ("authorization", "content-type", "idempotency-key"))
    assert "DELETE" in preflight.headers["access-control-allow-methods"]
    reply = api.request("POST", "/rooms/r1/peers", {}, headers={"Origin": "https://app.example"})
    assert reply.headers["access-control-allow-origin"] == "*"
    assert {"location", "retry-after"} <= set(reply.headers["access-control-expose-headers"].lower().split(", "))


def test_cors_with_listed_origins(make_app):
    api = Api.over_flask(make_app(allowed_origins=("https://a.example",)).test_client())
    good = api.request("POST", "/rooms/r1/peers", {}, headers={"Origin": "https://a.example"})
    assert good.headers["access-control-allow-origin"] == "https://a.example"
    assert "Origin" in good.headers["vary"]
    bad = api.request("POST", "/rooms/r1/peers", {}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in bad.headers


def test_a_preflight_lists_every_allowed_header_whatever_it_asks(make_app):
    """One cached preflight covers every later request of the URL; one listed origin still varies the answer."""
    api = Api.over_flask(make_app(allowed_origins=("https://a.example",)).test_client())
    for origin in ("https://a.example", "https://evil.example"):
        preflight = api.request("OPTIONS", "/rooms/r1/peers/bob/messages", headers={
            "Origin": origin, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"})
        assert preflight.status == 204
        assert "Origin" in preflight.headers["vary"]
    assert preflight.headers["access-control-allow-headers"] == (
        "Authorization, Content-Type, Idempotency-Key, Last-Event-ID")
    assert preflight.headers["access-control-max-age"] == "86400"
    assert "access-control-allow-origin" not in preflight.headers


def test_error_answers_carry_cors_headers(make_app):
    api = Api.over_flask(make_app(allowed_origins=("https://a.example",)).test_client())
    for method, path in [("GET", "/rooms/r1/peers"), ("GET", "/nowhere"), ("PUT", "/rooms/r1/peers")]:
        reply = api.request(method, path, headers={"Origin": "https://a.example"})
        assert reply.status >= 400 and reply.code
        assert reply.headers["access-control-allow-origin"] == "https://a.example"
        assert "x-request-id" in reply.headers["access-control-expose-headers"].lower()


def test_errors_are_json(api):
    for method, path, status in [("GET", "/nowhere", 404), ("PUT", "/rooms/r1/peers", 405),
                                 ("GET", "/rooms/r1/peers/a", 405)]:
        reply = api.request(method, path)
        assert reply.status == status
        assert reply.headers["content-type"].startswith("application/json")
        assert reply.body["error"]["code"] in ("not_found", "method_not_allowed")
        assert reply.body["error"]["message"]


def test_an_unexpected_error_is_a_json_500_without_a_trace(make_app):
    app = make_app()

    def broken():
        raise RuntimeError("secret internals")

    app.add_url_rule("/broken", view_func=broken)
    reply = Api.over_flask(app.test_client()).request("GET", "/broken")
    assert reply.status == 500 and reply.code == "internal_error"
    assert b"secret internals" not in reply.raw and b"Traceback" not in reply.raw
