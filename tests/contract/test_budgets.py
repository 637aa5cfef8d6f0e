"""Memory budgets: what one mailbox, room and client address can make the service hold.

A mailbox holds at most MAILBOX_BYTES of envelopes (as stored: compact UTF-8)
and MAILBOX_LIMIT of them; server events count against neither, and a member
that leaves UNREAD_EVENTS of them unacknowledged is taken for gone. The
contract tests run on every store; the attack tests measure a real worker's
RSS and a real Redis's used_memory for a fixed attack; the last ones fill a
real Redis to its maxmemory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import pytest
import redis

from signaling import errors, protocol
from signaling.backends.base import UNREAD_EVENTS, Broadcast
from signaling.config import Settings
from signaling.service import Service, create_app

from ..conftest import NO_LIMITS
from ..support.helpers import Api, held_poll

#: the README's worst case for one mailbox with the defaults ("Security"), on either backend
WORST_PER_MAILBOX = 1.5 * 2**20

#: the issue's probe: 16,375 four-byte characters, a 65,523-byte body, under MAX_MESSAGE_BYTES
EMOJI_BODY = json.dumps({"type": "x", "data": "😀" * 16375}, ensure_ascii=False).encode()


def stored(seq: int, sender: str, kind: str, data: str, ts: str) -> bytes:
    """An envelope as the protocol writes it, built here by hand: what MAILBOX_BYTES counts."""
    return f'{{"seq":{seq},"from":"{sender}","type":"{kind}","data":"{data}","ts":{ts}}}'.encode()


def send_at(app, peer, to: str | None, data: str, now: float):
    """A send (or broadcast) of one `{"type":"n","data":data}` straight to the backend, at a fixed time."""
    body = json.dumps({"type": "n", "data": data}, ensure_ascii=False).encode()
    out = protocol.Outgoing.read(body, peer.room, peer.id, peer.token, to, None, now)
    backend = Service.of(app).backend
    return backend.send(out) if to else backend.broadcast(out)


def envelopes_of(reply) -> list[bytes]:
    """The stored envelopes of a poll answer, as the bytes it carried them in."""
    assert reply.status == 200, reply.raw
    count = len(reply.body["messages"])
    inner = reply.raw[len(b'{"messages":['):reply.raw.rindex(b'],"cursor":')]
    parts = [inner] if count == 1 else [b"{" + p + b"}" for p in inner[1:-1].split(b"},{")]
    assert len(parts) == count and [json.loads(p) for p in parts] == reply.body["messages"]
    return parts


def fill_text(size: int, seq: int, ts: str) -> str:
    """The data that makes alice's envelope `seq` take exactly `size` bytes as stored."""
    return "a" * (size - len(stored(seq, "alice", "n", "", ts)))


# -- the budget, on every store


def test_a_mailbox_holds_at_most_mailbox_bytes_exactly(make_app):
    app = make_app(mailbox_bytes=4096)
    api = Api.over_flask(app.test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    now = math.floor(time.time()) + 0.125  # a ts of three decimals: every envelope's size known in advance
    ts = repr(now)
    assert send_at(app, alice, "bob", fill_text(1000, 1, ts), now) == [1]
    assert send_at(app, alice, "bob", fill_text(4096 - 1000, 2, ts), now) == [2]  # exactly the budget: stored
    refused = alice.send("bob", "n")  # one more, the smallest there is
    assert refused.status == 429 and refused.code == "mailbox_full"
    assert int(refused.headers["retry-after"]) >= 1
    assert "MAILBOX_BYTES 4096" in refused.body["error"]["message"]
    with pytest.raises(errors.MailboxFull):
        send_at(app, alice, "bob", "", now)
    seen = envelopes_of(bob.poll(after=0))
    assert seen == [stored(1, "alice", "n", fill_text(1000, 1, ts), ts),
                    stored(2, "alice", "n", fill_text(3096, 2, ts), ts)]
    assert sum(map(len, seen)) == 4096
    assert bob.poll(after=1).status == 200  # acknowledges the first: 1000 bytes free again
    assert send_at(app, alice, "bob", fill_text(1000, 3, ts), now) == [3]
    assert alice.send("bob", "n").code == "mailbox_full"
    assert [m["seq"] for m in bob.poll(after=1).body["messages"]] == [2, 3]


def test_a_batch_past_the_bytes_is_refused_whole(make_app):
    api = Api.over_flask(make_app(mailbox_bytes=2048).test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    assert alice.send_batch("bob", [{"type": "n", "data": "a" * 500}] * 3).status == 202  # 3 x 563 bytes
    refused = alice.send_batch("bob", [{"type": "n", "data": "b" * 200}] * 2)  # 2 x 263 more: past 2,048
    assert refused.status == 429 and refused.code == "mailbox_full"
    assert alice.send_batch("bob", [{"type": "n", "data": "c" * 200}]).status == 202  # one of them fits
    assert [m["data"][0] for m in bob.receive()] == ["a", "a", "a", "c"]


def test_a_broadcast_skips_a_member_whose_bytes_are_full(make_app):
    api = Api.over_flask(make_app(mailbox_bytes=2048).test_client())
    alice, bob, carol = api.peer("r1", "alice"), api.peer("r1", "bob"), api.peer("r1", "carol")
    assert alice.send("bob", "n", "a" * 1800).status == 202
    reply = alice.broadcast("n", "b" * 500)
    assert reply.status == 202 and reply.body == {"delivered_to": ["carol"], "mailbox_full": ["bob"]}
    assert [m["type"] for m in bob.receive()] == ["peer-joined", "n"]
    assert [m["data"] for m in carol.receive()] == ["b" * 500]


def test_what_no_mailbox_could_hold_is_413_not_429(make_app):
    api = Api.over_flask(make_app(mailbox_bytes=1024).test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    for reply in (alice.send("bob", "n", "a" * 1100), alice.send_batch("bob", [{"type": "n", "data": "a" * 600}] * 2),
                  alice.broadcast("n", "a" * 1100)):
        assert reply.status == 413 and reply.code == "payload_too_large", reply.raw
        assert "MAILBOX_BYTES 1024" in reply.body["error"]["message"]
    assert alice.send("bob", "n", "a" * 900).status == 202  # what fits the whole budget is let through
    assert [m["type"] for m in bob.receive()] == ["n"]


# -- stored as compact UTF-8


def test_envelopes_are_stored_and_answered_in_no_more_bytes_than_sent(make_app):
    api = Api.over_flask(make_app().test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    data = "😀" * 1000 + "é" * 1000 + "中" * 1000 + "a"
    body = json.dumps({"type": "n", "data": data}, ensure_ascii=False, separators=(",", ":")).encode()
    waiting = held_poll(bob)  # the answer a wake-up carries (Redis), and the one a look finds
    assert alice.request("POST", "/rooms/r1/peers/bob/messages", data=body).status == 202
    waiting["thread"].join(10)
    for reply in (waiting["reply"], bob.poll(after=0)):
        (envelope,) = envelopes_of(reply)
        assert json.loads(envelope)["data"] == data
        assert len(envelope) <= len(body) + 45  # the seq, the sender and the ts added; nothing grew
        assert reply.headers["content-type"] == "application/json"


@pytest.mark.parametrize("raw", [b'"a\\ud800b\\udfff"', b'"\\udc00\\ud800"', b'"\xed\xa0\x80"'],
                         ids=["escaped", "reversed-pair", "raw-surrogate"])
def test_lone_surrogates_are_still_accepted_and_answered_as_json(make_app, raw):
    """JSON allows "\\ud800", which no UTF-8 holds: stored escaped as before, never a 500."""
    api = Api.over_flask(make_app().test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    sent = json.loads(raw)
    body = b'{"type":"n","data":[' + raw + b',"\xf0\x9f\x98\x80"]}'  # with a 4-byte character beside it
    waiting = held_poll(bob)
    assert alice.request("POST", "/rooms/r1/peers/bob/messages", data=body).status == 202
    assert alice.request("POST", "/rooms/r1/messages", data=body).status == 202
    waiting["thread"].join(10)
    for reply in (waiting["reply"], bob.poll(after=0)):
        assert reply.status == 200
        reply.raw.decode("utf-8")  # strict: valid UTF-8
        assert [m["data"] for m in reply.body["messages"]][-1] == [sent, "😀"]
        assert "😀".encode() in reply.raw  # not escaped
    assert len(bob.poll(after=0).body["messages"]) == 2


@pytest.mark.parametrize("data", [
    {"big": 2**70, "negative": -(2**64)},  # past 64 bits: orjson refuses to encode them
    {"deep": json.loads("[" * 300 + "1" + "]" * 300)},  # past orjson's 254 levels
    {"floats": [1e-7, 1e16, 0.1, -0.0, 1.5e300, 5e-324]},
], ids=["integers-past-64-bits", "nested-300-deep", "floats"])
def test_every_value_json_allows_comes_back_as_it_was_sent(make_app, data):
    """Encoded by orjson, or by the standard library where orjson refuses the value: never lost or changed."""
    api = Api.over_flask(make_app().test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    body = json.dumps({"type": "n", "data": data}).encode()
    assert alice.request("POST", "/rooms/r1/peers/bob/messages", data=body).status == 202
    (message,) = bob.poll(after=0).body["messages"]
    assert message["data"] == data
    assert json.dumps(message["data"]) == json.dumps(data)  # the same numbers, ints still ints


# -- server events: never refused, bounded by UNREAD_EVENTS


def test_a_member_that_never_acknowledges_events_is_taken_for_gone(make_app):
    api = Api.over_flask(make_app().test_client())
    idle, keeper = api.peer("r1", "idle"), api.peer("r1", "keeper")
    keeper.drain()
    for i in range(UNREAD_EVENTS // 2 - 1):  # a peer-joined and a peer-left each
        api.peer("r1", "churn").leave()
        if i % 100 == 0:
            keeper.drain()
    assert idle.members().status == 200  # alive (a heartbeat), and not reading: 1 + 998 events unread
    assert idle.poll(after=0, limit=1).status == 200
    api.peer("r1", "churn").leave()  # its 1,000th unread event
    assert idle.poll(after=0).code == "not_joined"
    assert keeper.members().body["peers"] == ["keeper"]
    assert api.join("r1", "alice").status == 201  # a join reaps its room first
    seen = []
    while batch := keeper.receive():
        seen += batch
    left = [m for m in seen if m["type"] == "peer-left" and m["from"] == "idle"]
    assert [m["data"] for m in left] == [{"reason": "timeout"}]
    assert api.join("r1", "idle").status == 201  # and it may come back


# -- the attack, as a budget: 1 sender, 9 members that never acknowledge, broadcasts of 4-byte characters

ATTACK_BROADCASTS = 40  # past the 15 that fit one mailbox's MAILBOX_BYTES


def attack(api: Api) -> list[dict]:
    sender = api.peer("attack", "sender")
    members = [api.peer("attack", f"m{i}") for i in range(9)]
    answers = []
    for _ in range(ATTACK_BROADCASTS):
        reply = sender.request("POST", "/rooms/attack/messages", data=EMOJI_BODY)
        assert reply.status == 202, reply.raw
        answers.append(reply.body)
        for member in members[::3]:
            assert member.members().status == 200  # alive, never acknowledging
    return answers


def assert_budgeted(answers: list[dict]) -> None:
    """15 envelopes of 65,5xx bytes fit MAILBOX_BYTES (1 MiB); every later broadcast finds the 9 mailboxes full."""
    assert [len(answer["delivered_to"]) for answer in answers] == [9] * 15 + [0] * (ATTACK_BROADCASTS - 15)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        (line,) = [line for line in status if line.startswith("VmRSS:")]
    return int(line.split()[1]) * 1024


@pytest.mark.live
def test_the_attack_costs_a_memory_worker_at_most_the_stated_worst_case(start_server):
    server = start_server()  # the defaults (abuse limits off: they only set the pace)
    [worker] = server.worker_pids()
    api = Api.over_http(server.url)
    warm = api.peer("warm", "a"), api.peer("warm", "b")  # the worker's first requests of this size
    for _ in range(5):
        warm[0].request("POST", "/rooms/warm/messages", data=EMOJI_BODY)
    warm[1].drain()
    before = rss(worker)
    answers = attack(api)
    grown = rss(worker) - before
    assert grown < 9 * WORST_PER_MAILBOX, f"the worker grew {grown / 2**20:.1f} MiB"
    assert_budgeted(answers)


@pytest.fixture(params=["redis", "cluster"])
def store_clients(request):
    """(URL, a client of every master) of an emptied real store: one Redis, or the Redis Cluster."""
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        request.getfixturevalue("redis_url")
        yield server.url, [server.client()]
    else:
        cluster = request.getfixturevalue("redis_cluster")
        request.getfixturevalue("cluster_url")
        yield cluster.url, [node.client() for node in cluster.nodes]


def test_the_attack_costs_redis_at_most_the_stated_worst_case(store_clients):
    url, clients = store_clients
    app = create_app(dataclasses.replace(Settings(), redis_url=url, **NO_LIMITS))
    try:
        used = lambda: sum(int(c.info("memory")["used_memory"]) for c in clients)  # noqa: E731
        before = used()
        answers = attack(Api.over_flask(app.test_client()))
        grown = used() - before
    finally:
        Service.of(app).close()
    assert grown < 9 * WORST_PER_MAILBOX, f"Redis grew {grown / 2**20:.1f} MiB"
    assert_budgeted(answers)


# -- Idempotency-Key receipts: a sender (one life of a peer) keeps those of its newest IDEMPOTENCY_KEYS_PER_PEER keys

KEYS = protocol.IDEMPOTENCY_KEYS_PER_PEER


def keyed(app, peer, to: str | None, key: str, now: float):
    """A send (to None: a broadcast) of `{"type":"n"}` with an Idempotency-Key, straight to the backend."""
    out = protocol.Outgoing.read(b'{"type":"n"}', peer.room, peer.id, peer.token, to, key, now)
    backend = Service.of(app).backend
    return backend.send(out) if to else backend.broadcast(out)


def test_a_sender_keeps_the_receipts_of_its_newest_keys(make_app):
    app = make_app(mailbox_limit=3 * KEYS)
    api = Api.over_flask(app.test_client())
    alice, bob, carol = api.peer("r1", "alice"), api.peer("r1", "bob"), api.peer("r1", "carol")
    now = time.time()
    carols = keyed(app, carol, "bob", "c", now)  # another sender's: never counted against alice's
    firsts = [keyed(app, alice, "bob", f"k{i}", now) for i in range(KEYS)]
    assert keyed(app, alice, None, "b", now) == Broadcast(["bob", "carol"], [])  # sends and broadcasts count alike
    last = firsts[-1][0] + 1  # the broadcast's seq in bob's mailbox
    assert [keyed(app, alice, "bob", f"k{i}", now) for i in range(1, KEYS)] == firsts[1:]  # the newest answer
    assert keyed(app, alice, None, "b", now) == Broadcast(["bob", "carol"], [])
    assert keyed(app, carol, "bob", "c", now) == carols
    assert alice.send("bob", "n", key="k0").body == {"seq": last + 1}  # the oldest went: stored anew
    assert keyed(app, alice, "bob", "k1", now) == [last + 2]  # keeping k0 again dropped the oldest, k1
    assert keyed(app, alice, "bob", "k3", now) == firsts[3]  # (and keeping k1 again, k2)
    assert len(bob.receive(limit=100)) == 100  # bob's mailbox is all there


def test_a_senders_receipts_take_at_most_their_bound_of_keys_in_redis(store_clients):
    url, clients = store_clients
    app = create_app(dataclasses.replace(Settings(), redis_url=url, mailbox_limit=3 * KEYS, **NO_LIMITS))
    try:
        api = Api.over_flask(app.test_client())
        alice, _bob = api.peer("r1", "alice"), api.peer("r1", "bob")
        index = f"sig:{{r1}}:idem:alice@{Service.of(app).backend.client.hget('sig:{r1}:peer:alice', 'since')}"
        receipts = lambda: sorted(k for c in clients for k in c.scan_iter(match=index + "*", count=1000))  # noqa: E731
        now = time.time()
        for i in range(KEYS):
            keyed(app, alice, "bob", f"k{i}", now)
        assert len(receipts()) == KEYS + 1  # and the index
        for i in range(KEYS, KEYS + 50):
            keyed(app, alice, None if i % 2 else "bob", f"k{i}", now)
        kept = receipts()
        assert len(kept) == KEYS + 1 and kept[0] == index
        listed = Service.of(app).backend.client.zrange(index, 0, -1)
        assert sorted(f"{index}:{member}" for member in listed) == kept[1:]
        assert {member.rsplit(":", 1)[1] for member in listed} == {f"k{i}" for i in range(50, KEYS + 50)}  # newest
        assert alice.leave().status == 204
        assert receipts() == []  # no one can send as that alice again: her receipts went with her
    finally:
        Service.of(app).close()


# -- a full Redis: 503, nothing half-stored


def snapshot(url: str) -> dict[bytes, bytes]:
    """Every key's serialized value (not its TTL), the filler left out."""
    with redis.Redis.from_url(url) as db:
        return {key: db.dump(key) for key in db.keys("*") if key != b"filler"}


def test_a_full_redis_is_503_and_nothing_is_half_stored(private_redis):
    settings = dataclasses.replace(Settings(), redis_url=private_redis.url, peer_ttl=3.0, poll_wait=1.0,
                                   reap_interval=60, **NO_LIMITS)
    app = create_app(settings)
    db = private_redis.client()
    try:
        api = Api.over_flask(app.test_client())
        api.peer("r2", "ghost")  # it times out: a join of r2 would reap it first, a write before any other
        time.sleep(3.1)
        alice, bob, carol = api.peer("r1", "alice"), api.peer("r1", "bob"), api.peer("r1", "carol")
        assert alice.send("bob", "n", 1).status == 202
        db.set("filler", "x" * 2_000_000)
        db.config_set("maxmemory-policy", "noeviction")
        db.config_set("maxmemory", int(db.info("memory")["used_memory"]) // 2)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            db.set("probe", "1")  # full
        before = snapshot(private_redis.url)
        refused = [alice.send("bob", "n", 2), alice.send_batch("bob", [{"type": "n"}] * 3),
                   alice.broadcast("n", 3), alice.send("bob", "n", 4, key="k1"),
                   api.join("r1", "dave"), api.join("r2", "dave"), api.join("r1", "alice", token=alice.token)]
        for reply in refused:
            assert reply.status == 503 and reply.code == "backend_unavailable", reply.raw
            assert int(reply.headers["retry-after"]) >= 1
        assert snapshot(private_redis.url) == before
        db.config_set("maxmemory", 0)  # room again: it all works
        assert alice.send("bob", "n", 5).status == 202
        assert [m["data"] for m in bob.receive() if m["type"] == "n"] == [1, 5]
        assert carol.members().body["peers"] == ["alice", "bob", "carol"]
        assert api.join("r2", "dave").status == 201
    finally:
        db.close()
        Service.of(app).close()
