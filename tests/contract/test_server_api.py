"""Peer metadata and the server API (protocol 1.2), every rule on every backend: memory, Redis, Redis Cluster."""

from __future__ import annotations

import json
import threading
import time

import jwt
import pytest

from ..support.helpers import Api, held_poll

KEY = "a-server-api-key-of-at-least-32-chars-01"
OLD_KEY = "the-previous-server-key-still-in-use-002"
SECRET = "a-join-secret-of-at-least-32-bytes-0001"
ROUNDS = 20  # races of a removal with a join or a resume of the same id


@pytest.fixture
def server_app(make_app):
    return make_app(server_api_keys=(KEY, OLD_KEY), stream_heartbeat=0.1)  # a quiet stream says so every 0.1 s


@pytest.fixture
def api(server_app) -> Api:
    return Api.over_flask(server_app.test_client())


def server(api: Api, method: str, path: str, body=None, key: str | None = KEY, **kwargs):
    """A server API call with `key` (None: no Authorization at all)."""
    if body is not None:
        kwargs["json_body"] = body
    return api.request(method, "/server" + path, token=key, **kwargs)


def join_with(api: Api, room: str, peer: str, **body):
    return api.request("POST", f"/rooms/{room}/peers", {"peer_id": peer, **body})


def members_of(api: Api, room: str = "r1") -> list[str]:
    return [m["peer_id"] for m in server(api, "GET", f"/rooms/{room}").body["members"]]


def kinds(messages):
    return [(m["type"], m["from"], m["data"]) for m in messages]


def ticket(room: str = "r1", **more) -> str:
    now = int(time.time())
    return jwt.encode({"room": room, "iat": now, "exp": now + 60, **more}, SECRET, algorithm="HS256")


# -- meta


def test_meta_reaches_the_join_answer_peer_joined_and_member_lists(api):
    alice = join_with(api, "r1", "alice", meta={"name": "Alice", "role": "host"}).body
    assert alice["meta"] == {"name": "Alice", "role": "host"} and alice["members"] == []
    bob = join_with(api, "r1", "bob", meta={"name": "Bøb ☃"}).body
    carol = join_with(api, "r1", "carol").body  # no meta: null, as before
    assert bob["members"] == [{"peer_id": "alice", "meta": {"name": "Alice", "role": "host"}}]
    assert carol["meta"] is None and carol["peers"] == ["alice", "bob"]
    assert carol["members"] == [{"peer_id": "alice", "meta": {"name": "Alice", "role": "host"}},
                                {"peer_id": "bob", "meta": {"name": "Bøb ☃"}}]
    poll = api.request("GET", "/rooms/r1/peers/alice/messages", token=alice["token"]).body["messages"]
    assert kinds(poll) == [("peer-joined", "bob", {"meta": {"name": "Bøb ☃"}}), ("peer-joined", "carol", None)]
    listed = api.request("GET", "/rooms/r1/peers", token=carol["token"]).body
    assert listed["peers"] == ["alice", "bob", "carol"]
    assert listed["members"][2] == {"peer_id": "carol", "meta": None}


def test_a_resume_keeps_the_meta_of_the_first_join(api):
    alice = join_with(api, "r1", "alice", meta={"name": "Alice"}).body
    again = api.request("POST", "/rooms/r1/peers", {"peer_id": "alice", "meta": {"name": "Mallory"}},
                        token=alice["token"])
    assert again.status == 200 and again.body["meta"] == {"name": "Alice"}
    assert server(api, "GET", "/rooms/r1").body["members"][0]["meta"] == {"name": "Alice"}


@pytest.mark.parametrize("meta", [["a"], "Alice", 7, True, {"name": "x" * 2040}],
                         ids=["list", "string", "number", "bool", "2049-bytes"])
def test_a_bad_meta_is_400_bad_meta_and_nothing_changes(api, meta):
    alice = api.peer("r1", "alice")
    reply = join_with(api, "r1", "bob", meta=meta)
    assert reply.status == 400 and reply.code == "bad_meta", reply.raw
    assert members_of(api) == ["alice"] and alice.receive() == []


def test_a_meta_of_exactly_2048_bytes_is_taken(api):
    meta = {"name": "x" * (2048 - len('{"name":""}'))}
    assert len(json.dumps(meta, separators=(",", ":"))) == 2048
    assert join_with(api, "r1", "alice", meta=meta).body["meta"] == meta


def test_with_tickets_meta_comes_from_the_ticket_only(make_app):
    api = Api.over_flask(make_app(join_secret=(SECRET,)).test_client())
    alice = api.request("POST", "/rooms/r1/peers", {"ticket": ticket(sub="alice", meta={"name": "Alice"}),
                                                    "meta": {"name": "The Queen"}}).body
    assert alice["meta"] == {"name": "Alice"}
    bob = api.request("POST", "/rooms/r1/peers", {"ticket": ticket(sub="bob"), "meta": {"name": "Admin"}}).body
    assert bob["meta"] is None  # the body's meta is ignored: only the application names a peer
    assert bob["members"] == [{"peer_id": "alice", "meta": {"name": "Alice"}}]


@pytest.mark.parametrize("meta", ["Alice", {"name": "x" * 2040}], ids=["not-an-object", "too-large"])
def test_a_bad_meta_in_a_ticket_is_401_bad_ticket_saying_so(make_app, meta):
    api = Api.over_flask(make_app(join_secret=(SECRET,)).test_client())
    alice = api.request("POST", "/rooms/r1/peers", {"ticket": ticket(sub="alice")}).body
    reply = api.request("POST", "/rooms/r1/peers", {"ticket": ticket(sub="bob", meta=meta)})
    assert reply.status == 401 and reply.code == "bad_ticket" and "meta" in reply.body["error"]["message"]
    listed = api.request("GET", "/rooms/r1/peers", token=alice["token"]).body
    assert listed["peers"] == ["alice"]


# -- the server key


@pytest.mark.parametrize("key", [None, "", "x" * 40, KEY + "x", KEY[:-1], "alice.not-a-key-but-a-token-shape"],
                         ids=["missing", "empty", "wrong", "longer", "shorter", "token-shaped"])
def test_a_missing_or_wrong_key_is_401_json_and_nothing_changes(api, key):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    alice.receive()
    for method, path, body in [("GET", "/rooms/r1", None), ("DELETE", "/rooms/r1/peers/bob", {"ban": 60}),
                               ("DELETE", "/rooms/r1", None), ("POST", "/rooms/r1/messages", {"type": "x"}),
                               ("POST", "/rooms/r1/peers/bob/messages", {"type": "x"})]:
        reply = server(api, method, path, body, key=key)
        assert reply.status == 401 and reply.code == "unauthorized", (method, path, reply.raw)
        assert reply.headers["content-type"] == "application/json"
    assert members_of(api) == ["alice", "bob"] and alice.receive() == [] and bob.receive() == []
    assert api.join("r1", "carol").status == 201


def test_every_listed_key_is_accepted(api):
    api.peer("r1", "alice")
    assert server(api, "GET", "/rooms/r1", key=KEY).status == 200
    assert server(api, "GET", "/rooms/r1", key=OLD_KEY).status == 200


def test_without_keys_the_server_api_is_off(make_app):
    api = Api.over_flask(make_app().test_client())
    api.peer("r1", "alice")
    reply = server(api, "DELETE", "/rooms/r1")
    assert reply.status == 401 and "server API is off" in reply.body["error"]["message"]
    assert server(api, "GET", "/rooms/r1", key="").status == 401


def test_a_key_is_no_token_and_a_token_no_key(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    for method, path, body in [("GET", "/rooms/r1/peers/alice/messages", None), ("GET", "/rooms/r1/peers", None),
                               ("POST", "/rooms/r1/peers/bob/messages", {"type": "x"}),
                               ("POST", "/rooms/r1/messages", {"type": "x"}),
                               ("DELETE", "/rooms/r1/peers/alice", None)]:
        reply = api.request(method, path, body, token=KEY) if body else api.request(method, path, token=KEY)
        assert reply.status == 401, (method, path, reply.raw)
    assert server(api, "GET", "/rooms/r1", key=alice.token).status == 401
    assert server(api, "DELETE", "/rooms/r1/peers/bob", key=bob.token).status == 401
    assert members_of(api) == ["alice", "bob"] and bob.receive() == []


# -- looking, sending


def test_the_room_lists_members_with_meta_and_joined_at(api):
    assert server(api, "GET", "/rooms/empty").body == {"room": "empty", "members": []}
    before = time.time()
    join_with(api, "r1", "bob", meta={"name": "Bob"})
    api.peer("r1", "alice")
    body = server(api, "GET", "/rooms/r1").body
    assert [(m["peer_id"], m["meta"]) for m in body["members"]] == [("alice", None), ("bob", {"name": "Bob"})]
    assert all(before - 1 <= m["joined_at"] <= time.time() + 1 for m in body["members"])


def test_the_server_sends_and_broadcasts_from_at_server(make_app):
    api = Api.over_flask(make_app(server_api_keys=(KEY,), sends_per_peer_per_second=1).test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    alice.receive()
    assert server(api, "POST", "/rooms/r1/peers/alice/messages", {"type": "note", "data": 1}).body == {"seq": 2}
    batch = server(api, "POST", "/rooms/r1/peers/alice/messages", {"messages": [{"type": "a"}, {"type": "b"}]})
    assert batch.status == 202 and batch.body == {"seqs": [3, 4]}  # past a peer's rate of 1 a second: no rate
    everyone = server(api, "POST", "/rooms/r1/messages", {"type": "hello", "data": {"x": 1}})
    assert everyone.status == 202 and everyone.body == {"delivered_to": ["alice", "bob"], "mailbox_full": []}
    assert kinds(alice.receive()) == [("note", "@server", 1), ("a", "@server", None), ("b", "@server", None),
                                      ("hello", "@server", {"x": 1})]
    assert kinds(bob.receive()) == [("hello", "@server", {"x": 1})]


def test_server_sends_are_idempotent_and_refused_as_peer_sends(make_app):
    api = Api.over_flask(make_app(server_api_keys=(KEY,), mailbox_limit=3).test_client())
    alice = api.peer("r1", "alice")
    once = {"headers": {"Idempotency-Key": "k1"}}
    first = server(api, "POST", "/rooms/r1/peers/alice/messages", {"type": "x"}, **once)
    again = server(api, "POST", "/rooms/r1/peers/alice/messages", {"type": "x"}, **once)
    assert first.status == again.status == 202 and first.body == again.body
    assert server(api, "POST", "/rooms/r1/peers/alice/messages", {"type": "y"}, **once).code == "idempotency_key_reused"
    b1 = server(api, "POST", "/rooms/r1/messages", {"type": "z"}, headers={"Idempotency-Key": "k2"})
    assert server(api, "POST", "/rooms/r1/messages", {"type": "z"}, headers={"Idempotency-Key": "k2"}).body == b1.body
    assert server(api, "POST", "/rooms/r1/peers/bob/messages", {"type": "x"}).code == "peer_not_found"
    assert server(api, "POST", "/rooms/r1/peers/alice/messages", {"type": "peer-left"}).code == "reserved_type"
    assert server(api, "POST", "/rooms/r1/peers/alice/messages", {"messages": []}).code == "bad_field"
    assert server(api, "POST", "/rooms/r1/peers/alice/messages", {"type": "x"}).body == {"seq": 3}
    full = server(api, "POST", "/rooms/r1/peers/alice/messages", {"type": "x"})
    assert full.status == 429 and full.code == "mailbox_full"
    assert [m["type"] for m in alice.receive()] == ["x", "z", "x"]


# -- removing


def test_a_removed_peer_is_gone_for_the_others_and_hears_why(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    api.peer("r1", "carol")
    alice.drain()
    bob.drain()
    held = held_poll(bob, wait=20)
    time.sleep(0.2)
    reply = server(api, "DELETE", "/rooms/r1/peers/bob", {"reason": "shouting at everyone"})
    assert reply.status == 200 and reply.body == {"removed": True}
    held["thread"].join(10)
    assert held["took"] < 5 and held["reply"].status == 403 and held["reply"].code == "removed"
    assert "shouting at everyone" in held["reply"].body["error"]["message"]
    assert kinds(alice.receive()) == [("peer-left", "bob", {"reason": "removed"})]
    assert members_of(api) == ["alice", "carol"]
    for reply in (bob.poll(), bob.send("alice"), bob.broadcast(), bob.members(), bob.leave(),
                  api.join("r1", "bob", token=bob.token)):
        assert reply.status == 403 and reply.code == "removed", reply.raw
        assert "shouting at everyone" in reply.body["error"]["message"]
    assert alice.receive() == []  # nothing reached her from him
    assert server(api, "DELETE", "/rooms/r1/peers/bob").body == {"removed": False}
    assert api.join("r1", "bob").status == 201  # no ban: the id is free for a fresh join


def test_a_removed_peers_stream_ends_at_once(api):
    api.peer("r1", "alice")
    bob = api.peer("r1", "bob")
    stream = bob.stream()
    try:
        stream.until_quiet(timeout=0.3)
        assert server(api, "DELETE", "/rooms/r1/peers/bob").body == {"removed": True}
        stream.until_end(timeout=5)
        assert stream.ended
    finally:
        stream.close()
    assert bob.stream().status == 403


def test_a_removed_token_is_told_for_peer_ttl_then_is_no_member(make_app):
    api = Api.over_flask(make_app(server_api_keys=(KEY,), peer_ttl=0.6, poll_wait=0.2).test_client())
    bob = api.peer("r1", "bob")
    server(api, "DELETE", "/rooms/r1/peers/bob")
    assert bob.poll().code == "removed"
    time.sleep(0.7)
    assert bob.poll().code == "not_joined"


def test_a_ban_refuses_joins_with_that_id_ticket_or_not_until_it_ends(make_app):
    api = Api.over_flask(make_app(server_api_keys=(KEY,), join_secret=(SECRET,)).test_client())
    alice = api.peer("r1", "alice", ticket=ticket(sub="alice"))
    assert server(api, "DELETE", "/rooms/r1/peers/bob", {"ban": 0.8}).body == {"removed": False}  # a ban all the same
    for given in (ticket(sub="bob"), None, "garbage"):
        reply = api.join("r1", "bob", ticket=given)
        assert reply.status == 403 and reply.code == "banned", reply.raw
    assert api.join("r2", "bob", ticket=ticket("r2", sub="bob")).status == 201  # another room: no ban
    assert members_of(api) == ["alice"] and alice.receive() == []
    time.sleep(0.9)
    assert api.join("r1", "bob", ticket=ticket(sub="bob")).status == 201


@pytest.mark.parametrize("body", [{"reason": "x" * 201}, {"reason": ""}, {"reason": 7}, {"ban": -1}, {"ban": 86401},
                                  {"ban": "60"}, {"ban": True}, {"ban": None, "reason": ["x"]}, [1]],
                         ids=["reason-201", "reason-empty", "reason-number", "ban-negative", "ban-over-a-day",
                              "ban-string", "ban-bool", "reason-list", "not-an-object"])
def test_a_bad_removal_is_400_and_nobody_is_removed(api, body):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    alice.drain()
    reply = server(api, "DELETE", "/rooms/r1/peers/bob", body)
    assert reply.status == 400, reply.raw
    assert members_of(api) == ["alice", "bob"] and alice.receive() == [] and bob.receive() == []
    assert api.join("r2", "bob").status == 201  # and no ban anywhere
    assert server(api, "DELETE", "/rooms/r1/peers/alice", {"reason": "x" * 200, "ban": 86400}).body["removed"]


def test_closing_a_room_removes_every_member(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    other = api.peer("r2", "alice")
    alice.drain()
    held = held_poll(alice, wait=20)
    time.sleep(0.2)
    reply = server(api, "DELETE", "/rooms/r1")
    assert reply.status == 200 and reply.body == {"removed": ["alice", "bob"]}
    held["thread"].join(10)
    assert held["reply"].code == "removed" and "room_closed" in held["reply"].body["error"]["message"]
    assert bob.poll().code == "removed"
    assert members_of(api) == [] and members_of(api, "r2") == ["alice"] and other.receive() == []
    assert server(api, "DELETE", "/rooms/r1").body == {"removed": []}
    assert api.join("r1", "bob").status == 201  # no ban


def test_closing_a_room_tells_each_member_of_the_others_before_it_goes(api):
    """Each member gets peer-left room_closed for those removed before it (then is removed itself)."""
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    stream = bob.stream()
    try:
        stream.until_quiet(timeout=0.3)
        server(api, "DELETE", "/rooms/r1")
        seen = stream.until_end(timeout=5)
    finally:
        stream.close()
    assert all(m["type"] == "peer-left" and m["data"] == {"reason": "room_closed"} for m in seen)
    assert alice.poll().code == "removed"


# -- races


def _race(first, second):
    """Run two calls at once (as near as a barrier gets them); their replies."""
    barrier, replies = threading.Barrier(2), [None, None]

    def run(i, call):
        barrier.wait()
        replies[i] = call()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return replies


def _two_instances(make_app, backend_name):
    """Two app instances on one store (Redis); on memory one process, so the same app from two threads."""
    first = make_app(server_api_keys=(KEY,))
    second = first if backend_name == "memory" else make_app(server_api_keys=(KEY,))
    return Api.over_flask(first.test_client()), Api.over_flask(second.test_client())


def test_a_removal_racing_a_resume_never_leaves_the_peer_a_member(make_app, backend_name):
    here, there = _two_instances(make_app, backend_name)
    for round_ in range(ROUNDS):
        room = f"race{round_}"
        bob = here.peer(room, "bob")
        removed, resumed = _race(lambda: server(here, "DELETE", f"/rooms/{room}/peers/bob"),  # noqa: B023
                                 lambda: there.join(room, "bob", token=bob.token))  # noqa: B023
        assert removed.body == {"removed": True}
        assert resumed.status in (200, 403), resumed.raw
        assert members_of(here, room) == [] and members_of(there, room) == []
        assert bob.on(there).poll().code == "removed"


def test_a_removal_with_a_ban_racing_a_join_never_leaves_the_peer_a_member(make_app, backend_name):
    here, there = _two_instances(make_app, backend_name)
    for round_ in range(ROUNDS):
        room = f"race{round_}"
        here.peer(room, "alice")
        removed, joined = _race(lambda: server(here, "DELETE", f"/rooms/{room}/peers/bob", {"ban": 60}),  # noqa: B023
                                lambda: there.join(room, "bob"))  # noqa: B023
        assert removed.status == 200
        assert (joined.status, removed.body["removed"]) in ((201, True), (403, False)), (joined.raw, removed.body)
        assert members_of(here, room) == ["alice"] and members_of(there, room) == ["alice"]
        assert there.join(room, "bob").code == "banned"
