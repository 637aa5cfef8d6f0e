"""Protocol 1.1 on every backend: batch sends and broadcasts, and the cursor as the Last-Event-ID header."""

from __future__ import annotations

import time

import pytest

from ..support.helpers import Api, held_poll


def notes(*data):
    return [{"type": "note", "data": d} for d in data]


# -- batch send


def test_a_batch_gets_consecutive_seqs_in_its_order(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    assert alice.send("bob", "note", 0).body == {"seq": 1}
    reply = alice.send_batch("bob", [{"type": "offer", "data": {"sdp": "v=0"}}, {"type": "candidate"}, *notes(3)])
    assert reply.status == 202 and reply.body == {"seqs": [2, 3, 4]}
    messages = bob.receive()
    assert [(m["seq"], m["type"], m["data"]) for m in messages] == [
        (1, "note", 0), (2, "offer", {"sdp": "v=0"}), (3, "candidate", None), (4, "note", 3)]
    assert {m["from"] for m in messages} == {"alice"} and len({m["ts"] for m in messages[1:]}) == 1


def test_a_held_poll_wakes_once_with_the_whole_batch(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    poll = held_poll(bob, wait=10)
    time.sleep(0.3)
    alice.send_batch("bob", notes(*range(5)))
    poll["thread"].join(5)
    assert [m["data"] for m in poll["reply"].body["messages"]] == [0, 1, 2, 3, 4]
    assert poll["reply"].body["cursor"] == 5


def test_a_batch_the_mailbox_cannot_hold_whole_stores_nothing(make_app):
    api = Api.over_flask(make_app(mailbox_limit=4).test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    alice.send("bob", "note", 0)
    reply = alice.send_batch("bob", notes(1, 2, 3, 4))
    assert reply.status == 429 and reply.code == "mailbox_full" and int(reply.headers["retry-after"]) >= 1
    assert alice.send_batch("bob", notes(1, 2, 3)).body == {"seqs": [2, 3, 4]}  # exactly fills it
    assert [m["data"] for m in bob.receive()] == [0, 1, 2, 3]


def test_a_batch_larger_than_a_mailbox_is_too_large_not_full(make_app):
    api = Api.over_flask(make_app(mailbox_limit=3).test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    for reply in (alice.send_batch("bob", notes(1, 2, 3, 4)), alice.send_batch(None, notes(1, 2, 3, 4))):
        assert reply.status == 413 and reply.code == "payload_too_large" and "retry-after" not in reply.headers
        assert "send at most 3 at a time" in reply.body["error"]["message"]
    assert bob.receive() == []


@pytest.mark.parametrize("bad, code, says", [
    ([{"type": "note"}, {"type": "bad type"}], "bad_field", "messages[1]: 'type' must be"),
    ([{"type": "note"}, {"type": "note"}, {"type": "peer-left"}], "reserved_type", "messages[2]: 'peer-left'"),
    ([{"type": "note"}, "note"], "bad_field", "messages[1]: an envelope must be a JSON object"),
    ([], "bad_field", "'messages' must be a list of 1-100 envelopes, got 0 items"),
    ([{"type": "note"}] * 101, "bad_field", "got 101 items"),
    ({"type": "note"}, "bad_field", "'messages' must be a list"),
])
def test_a_bad_batch_is_refused_by_index_and_stores_nothing(api, bad, code, says):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    for reply in (alice.send_batch("bob", bad), alice.send_batch(None, bad)):
        assert reply.status == 400 and reply.code == code
        assert says in reply.body["error"]["message"]
    assert bob.receive() == []
    assert alice.send("bob", "note").body == {"seq": 1}  # no seq was used up


def test_a_body_with_both_messages_and_type_is_refused(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    reply = alice.request("POST", "/rooms/r1/peers/bob/messages", {"type": "note", "messages": notes(1)})
    assert reply.status == 400 and reply.code == "bad_field" and "not both" in reply.body["error"]["message"]
    assert bob.receive() == []


def test_one_idempotency_key_covers_the_batch(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    first = alice.send_batch("bob", notes(1, 2, 3), key="b1")
    again = alice.send_batch("bob", notes(1, 2, 3), key="b1")
    assert first.body == again.body == {"seqs": [1, 2, 3]}
    assert alice.send_batch("bob", notes(1, 2), key="b1").code == "idempotency_key_reused"
    assert alice.send("bob", "note", 1, key="b1").code == "idempotency_key_reused"  # a single send is another body
    assert [m["data"] for m in bob.receive()] == [1, 2, 3]


def test_the_send_rate_counts_envelopes(make_app):
    api = Api.over_flask(make_app(sends_per_peer_per_second=5).test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    assert alice.send_batch("bob", notes(1, 2, 3)).status == 202
    reply = alice.send_batch("bob", notes(4, 5, 6))  # 6 envelopes within the window the first one opened
    assert reply.code == "send_rate_limited" and int(reply.headers["retry-after"]) >= 1
    assert [m["data"] for m in bob.receive()] == [1, 2, 3]


def test_a_batch_over_the_rate_passes_when_the_second_is_fresh(make_app):
    api = Api.over_flask(make_app(sends_per_peer_per_second=2).test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    assert alice.send_batch("bob", notes(1, 2, 3, 4)).body == {"seqs": [1, 2, 3, 4]}
    assert alice.send("bob").code == "send_rate_limited"
    assert len(bob.receive()) == 4


# -- broadcast batch


def test_a_broadcast_batch_goes_whole_to_each_member_with_room(make_app):
    api = Api.over_flask(make_app(mailbox_limit=3).test_client())
    alice, bob, carol = api.peer("r1", "alice"), api.peer("r1", "bob"), api.peer("r1", "carol")
    alice.send("carol", "note", 0)
    alice.send("carol", "note", 0)  # carol has room for one more, not two
    reply = alice.send_batch(None, notes(1, 2), key="bb")
    assert reply.status == 202 and reply.body == {"delivered_to": ["bob"], "mailbox_full": ["carol"]}
    assert alice.send_batch(None, notes(1, 2), key="bb").body == reply.body  # a repeat stores nothing
    assert [m["data"] for m in bob.receive() if m["type"] == "note"] == [1, 2]
    assert [m["data"] for m in carol.receive() if m["type"] == "note"] == [0, 0]


# -- the cursor as a header


def poll_with(peer, headers, query=""):
    return peer.request("GET", f"/rooms/{peer.room}/peers/{peer.id}/messages?wait=0{query}", headers=headers)


def test_last_event_id_is_the_cursor(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    alice.send_batch("bob", notes(1, 2, 3))
    reply = poll_with(bob, {"Last-Event-ID": "2"})
    assert reply.status == 200 and [m["seq"] for m in reply.body["messages"]] == [3]
    assert reply.body["cursor"] == 3
    assert poll_with(bob, {"Last-Event-ID": "0"}).body["messages"] == reply.body["messages"]  # 1-2 acknowledged
    assert poll_with(bob, {"Last-Event-ID": "3"}).body == {"messages": [], "cursor": 3}


def test_last_event_id_and_after_must_agree(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    alice.send_batch("bob", notes(1, 2))
    assert poll_with(bob, {"Last-Event-ID": "1"}, "&after=1").body["cursor"] == 2
    reply = poll_with(bob, {"Last-Event-ID": "2"}, "&after=1")
    assert reply.status == 400 and reply.code == "bad_query" and "disagree" in reply.body["error"]["message"]
    assert [m["seq"] for m in bob.receive()] == [2]  # the refused poll acknowledged nothing


@pytest.mark.parametrize("value, code", [("-1", "bad_query"), ("x", "bad_query"), ("1.5", "bad_query"),
                                         ("9", "bad_cursor")])
def test_a_bad_last_event_id_is_refused(api, value, code):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    alice.send("bob")
    reply = poll_with(bob, {"Last-Event-ID": value})
    assert reply.status == 400 and reply.code == code
    assert len(bob.receive()) == 1


def test_preflights_allow_last_event_id(api):
    reply = api.request("OPTIONS", "/rooms/r1/peers/bob/messages", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, last-event-id"})
    assert reply.status in (200, 204)
    allowed = {h.strip().lower() for h in reply.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "last-event-id", "idempotency-key", "content-type"} <= allowed
