"""What only the Redis backend promises: key layout, TTLs, hashed tokens, several instances."""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
import redis

from signaling import create_app
from signaling.backends.base import Listener
from signaling.backends.redis import RedisBackend, scripts
from signaling.backends.redis.backend import KEEP_ALIVE_BATCH
from signaling.config import Settings
from signaling.hub import Hub
from signaling.protocol import Fetch, Join, envelope_tail, with_seq
from signaling.service import Service
from signaling.tickets import LEEWAY
from signaling.tokens import hash_token

from ..support.helpers import Api, held_poll
from ..support.servers import RedisServer, free_port


@pytest.fixture(params=["redis", "cluster"])
def store(request) -> str:
    """The URL of an emptied real store: one Redis, or a three-master Redis Cluster."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def db(store):
    """A plain client of the store, to look at what the service wrote."""
    if store.startswith("redis+cluster://"):
        client = redis.RedisCluster.from_url(store.replace("+cluster", ""), decode_responses=True)
    else:
        client = redis.Redis.from_url(store, decode_responses=True)
    yield client
    client.close()


def all_keys(db) -> list[str]:
    if isinstance(db, redis.RedisCluster):
        return db.keys("*", target_nodes=redis.RedisCluster.PRIMARIES)
    return db.keys("*")


@pytest.fixture
def instances(store):
    """Make independent app instances (own hub, own wake-up channel) on one store."""
    apps = []

    def make(**overrides):
        app = create_app(dataclasses.replace(Settings(), redis_url=store, **overrides))
        apps.append(app)
        return Api.over_flask(app.test_client())

    yield make
    for app in apps:
        Service.of(app).close()


def test_every_key_of_a_room_shares_its_hash_tag_and_has_a_ttl(instances, db):
    api = instances()
    alice, bob = api.peer("room-1", "alice"), api.peer("room-1", "bob")
    alice.send("bob", "offer", key="once")
    keys = [k for k in all_keys(db) if k != "sig:reap"]  # the one global key: rooms to look at
    room_keys = [k for k in keys if not k.startswith("sig:ip:")]
    assert {k.split(":")[1] for k in room_keys} == {"{room-1}"}
    assert {k.split(":")[2] for k in room_keys} == {"members", "peer", "mbox", "idem", "rate"}
    assert sorted(set(keys) - set(room_keys)) == ["sig:ip:{127.0.0.1}:joins", "sig:ip:{127.0.0.1}:peers"]
    for key in keys:  # peer keys: 2 * PEER_TTL + 10 s; idempotency keys: 10 minutes
        assert 0 < db.pttl(key) <= (600 if ":idem:" in key else 2 * 60 + 10) * 1000, key
    assert bob.leave().status == 204
    assert not [k for k in all_keys(db) if k.endswith(":bob")]


def test_a_used_ticket_is_kept_with_its_room_until_the_ticket_would_expire(instances, db):
    secret = "a-join-secret-of-at-least-32-bytes-0001"
    api = instances(join_secret=(secret,), room_capacity=1, joins_per_ip_per_minute=0, peers_per_ip=0, rooms_per_ip=0)
    exp = int(time.time()) + 120
    api.peer("room-1", "alice", ticket=jwt.encode({"room": "room-1", "exp": exp, "jti": "once"}, secret))
    key = "sig:{room-1}:jti:once"  # the room's hash tag: the join script checks and sets it in one step
    assert db.get(key) == "alice"
    assert abs(db.pexpiretime(key) - (exp + LEEWAY) * 1000) <= 1000
    refused = api.join("room-1", "bob", ticket=jwt.encode({"room": "room-1", "exp": exp, "jti": "later"}, secret))
    assert refused.code == "room_full" and db.exists("sig:{room-1}:jti:later") == 0  # a failed join keeps no jti


def test_tokens_are_stored_only_hashed(instances, db):
    api = instances()
    alice = api.peer("r1", "alice")
    secret = alice.token.split(".", 1)[1]
    dump = repr([(k, db.dump(k)) for k in all_keys(db)])
    assert secret not in dump
    assert db.hget("sig:{r1}:peer:alice", "token") != alice.token


def test_two_instances_exchange_envelopes_and_wake_each_others_polls(instances):
    one, two = instances(), instances()
    alice = one.peer("r1", "alice")
    bob = two.peer("r1", "bob")
    poll = held_poll(bob, wait=10)  # held by instance two
    time.sleep(0.3)
    started = time.monotonic()
    assert alice.send("bob", "offer", "sdp").status == 202  # sent through instance one
    poll["thread"].join(5)
    assert time.monotonic() - started < 1
    assert [m["type"] for m in poll["reply"].body["messages"]] == ["offer"]


def calls(db, *commands: str) -> int:
    """How often Redis has run these commands so far (on a cluster: on every master)."""
    nodes = db.get_primaries() if isinstance(db, redis.RedisCluster) else [None]
    total = 0
    for node in nodes:
        stats = db.info("commandstats", target_nodes=node) if node else db.info("commandstats")
        total += sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in commands)
    return total


def scripts_run(db) -> int:
    return calls(db, "evalsha")


def published(db) -> int:
    """Wake-ups: PUBLISH from scripts on one Redis, SPUBLISH by the instances on a cluster."""
    return calls(db, "publish", "spublish")


def test_a_woken_poll_answers_with_the_envelopes_its_wake_ups_carried(instances, db, store):
    api = instances()
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    alice.send("bob", "warm-up")  # the send script is loaded now, not during the count below
    bob.receive()
    poll = held_poll(bob, wait=10)
    time.sleep(0.3)
    before = scripts_run(db)
    assert alice.send("bob", "offer", "sdp").status == 202
    poll["thread"].join(5)
    assert [(m["seq"], m["type"]) for m in poll["reply"].body["messages"]] == [(2, "offer")]
    assert poll["reply"].body["cursor"] == 2
    # one Redis: the send's script only; a cluster publishes out of order, so there the poll fetches
    assert scripts_run(db) - before == (2 if store.startswith("redis+cluster://") else 1)
    bob.cursor = 2
    assert bob.receive() == []  # and the envelope is acknowledged by the next poll as usual


@pytest.mark.parametrize("holder", ["same", "other"])
def test_a_batch_is_one_script_call_and_one_wake_up(instances, db, store, holder):
    """One wake-up for a batch: in the script's reply for a poll this instance holds, published for another's."""
    sending = instances()
    receiving = sending if holder == "same" else instances()
    alice, bob = sending.peer("r1", "alice"), sending.peer("r1", "bob")
    alice.send_batch("bob", [{"type": "warm-up"}])  # the send script is loaded now
    bob.receive()
    bob = dataclasses.replace(bob, api=receiving)
    poll = held_poll(bob, wait=10)
    time.sleep(0.3)
    scripts, wake_ups = scripts_run(db), published(db)
    reply = alice.send_batch("bob", [{"type": "candidate", "data": i} for i in range(10)])
    assert reply.body == {"seqs": list(range(2, 12))}
    poll["thread"].join(5)
    assert [m["data"] for m in poll["reply"].body["messages"]] == list(range(10))
    assert published(db) - wake_ups == (0 if holder == "same" else 1)
    # one Redis: the send's script only, its wake-up carrying all ten; a cluster's poll fetches them
    assert scripts_run(db) - scripts == (2 if store.startswith("redis+cluster://") else 1)


def test_a_newer_poll_on_another_instance_ends_the_older(instances):
    one, two = instances(), instances()
    bob = one.peer("r1", "bob")
    older = held_poll(bob, wait=10)
    time.sleep(0.3)
    newer = held_poll(dataclasses.replace(bob, api=two), wait=1)
    older["thread"].join(5)
    assert older["reply"].status == 200 and older["reply"].body["messages"] == []
    assert older["took"] < 1.3
    newer["thread"].join(5)


def test_an_expired_peer_leaves_once_though_every_instance_reaps(instances):
    settings = dict(peer_ttl=1.0, poll_wait=0.5, reap_interval=0.05)
    apis = [instances(**settings) for _ in range(3)]
    alice = apis[0].peer("r1", "alice")
    apis[1].peer("r1", "bob")
    seen = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        seen += alice.receive(wait=0.2)
    assert [(m["type"], m["from"]) for m in seen] == [("peer-joined", "bob"), ("peer-left", "bob")]
    assert seen[-1]["data"] == {"reason": "timeout"}


def test_a_round_trip_cut_short_makes_every_held_poll_look_now_and_again_later(redis_url):
    """Its replies carried this instance's own wake-ups, and its scripts may run after it was given up.

    One Redis: a cluster client retries a round trip whose connection was killed."""
    app = create_app(dataclasses.replace(Settings(), redis_url=redis_url))
    api, backend = Api.over_flask(app.test_client()), Service.of(app).backend
    alice = api.peer("cut", "alice")
    api.peer("cut", "bob")
    alice.send("bob", "warm-up")
    waiter = backend.hub.hold("cut", "bob")
    try:
        with redis.Redis.from_url(redis_url) as db:  # the lanes' connections: the next round trip fails
            db.client_kill_filter(_type="normal", skipme=True)
        assert alice.send("bob", "offer").status == 503
        assert waiter.wait(0)  # woken at once
        started = time.monotonic()
        assert waiter.wait(5)  # and once more, TIMEOUT later
        assert time.monotonic() - started > 1
        assert alice.send("bob", "offer").status == 202  # the lanes connect again
    finally:
        backend.hub.release(waiter)
        Service.of(app).close()


def test_scripts_come_back_after_redis_forgets_them(instances, db):
    api = instances()
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    db.script_flush()
    assert alice.send("bob").status == 202
    assert len(bob.receive()) == 1


def test_many_requests_that_find_the_scripts_gone_load_them_once(instances, db):
    api = instances()
    peers = [api.peer("r1", f"p{i}") for i in range(20)]
    db.script_flush()
    loads = db.info("commandstats").get("cmdstat_script|load", {}).get("calls", 0)
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda peer: peer.send("p0"), peers))
    assert {reply.status for reply in replies} == {202}
    loaded = db.info("commandstats")["cmdstat_script|load"]["calls"] - loads
    assert loaded == len(scripts.load(sharded=False))  # each once, not once per request that found them gone


def test_requests_keep_within_redis_max_connections(redis_url, redis_server):
    app = create_app(Settings(redis_url=redis_url, redis_max_connections=3, poll_wait=1))
    backend = Service.of(app).backend
    try:
        api = Api.over_flask(app.test_client())
        peers = [api.peer("r1", f"p{i}") for i in range(30)]
        with ThreadPoolExecutor(30) as pool:
            replies = list(pool.map(lambda i: api.request("GET", "/healthz") if i % 3 == 0 else peers[i].send("p0"),
                                    range(30)))
        assert {reply.status for reply in replies} <= {200, 202}
        with redis_server.client() as db:
            names = [c["name"] for c in db.client_list()]
        assert names.count(f"signaling:{backend.instance}") <= 3, names
        assert names.count(f"signaling:{backend.instance}:wake") == 1, names
    finally:
        Service.of(app).close()


def test_unreachable_redis_is_503_and_recovers(tmp_path):
    server = RedisServer(tmp_path, free_port()).start()
    app = create_app(Settings(redis_url=server.url))
    api = Api.over_flask(app.test_client())
    try:
        alice = api.peer("r1", "alice")
        held = held_poll(alice, wait=20)
        time.sleep(0.3)
        stopped = time.monotonic()
        server.stop()
        held["thread"].join(5)
        assert held["reply"].code == "backend_unavailable"  # a held poll does not wait it out
        assert time.monotonic() - stopped < 2
        for reply in (api.request("GET", "/healthz"), alice.send("alice"), api.join("r1", "bob"),
                      alice.poll(wait=1)):
            assert reply.status == 503 and reply.code == "backend_unavailable", reply.raw
            assert reply.headers["retry-after"] == "1"
        server.start()  # an empty Redis on the same port: alice is gone, the service is back
        deadline = time.monotonic() + 5
        while api.request("GET", "/healthz").status != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert api.request("GET", "/healthz").status == 200
        assert alice.send("alice").code == "not_joined"
        assert api.join("r1", "alice").status == 201
    finally:
        Service.of(app).close()
        server.stop()


def test_requests_that_fail_their_token_check_write_nothing(private_redis):
    """Tokenless and wrong-token polls, sends and leaves of random rooms leave the store as it was, sig:reap too."""
    app = create_app(Settings(redis_url=private_redis.url, reap_interval=3600))  # default limits: leases on
    api = Api.over_flask(app.test_client())
    try:
        alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
        wrong = dataclasses.replace(alice, token="alice.not-her-secret")
        with private_redis.client() as db:
            writes = {name for name, info in db.command().items() if "write" in info["flags"]}
            before = {key: db.dump(key) for key in db.keys("*")}
            calls_before = db.info("commandstats")
            statuses = set()
            for i in range(250):
                room = secrets.token_hex(6)
                statuses |= {
                    api.request("GET", f"/rooms/{room}/peers/p{i}/messages?wait=0").status,
                    wrong.poll().status,
                    api.request("POST", f"/rooms/{room}/peers/p{i}/messages", {"type": "x"},
                                token=f"p{i}.secret").status,
                    wrong.send("bob").status,
                    api.request("DELETE", f"/rooms/{room}/peers/p{i}").status,  # not a member: nothing to do
                    wrong.leave().status,
                }
            calls_after = db.info("commandstats")
            after = {key: db.dump(key) for key in db.keys("*")}
        assert statuses == {204, 401, 404}
        ran = {name.removeprefix("cmdstat_"): stats["calls"] - calls_before.get(name, {}).get("calls", 0)
               for name, stats in calls_after.items()}
        assert {name: n for name, n in ran.items() if n and name in writes} == {}
        assert after == before
        assert alice.send("bob").status == 202 and bob.receive()[-1]["from"] == "alice"
    finally:
        Service.of(app).close()


class RacedReaper(RedisBackend):
    """A reaper that, once, lets `meanwhile` run between its look at the due rooms and what it does about them."""

    meanwhile = None

    def _pipeline(self, commands, *args, **kwargs):
        replies = super()._pipeline(commands, *args, **kwargs)
        if commands and commands[0][1] == self.scripts["reap"].sha and self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        return replies


def test_a_room_joined_while_a_reaper_finds_it_empty_stays_scheduled(store, db):
    settings = dataclasses.replace(Settings(), redis_url=store, peer_ttl=10.0)
    reaper, other = RacedReaper(settings, Hub()), RedisBackend(settings, Hub())
    try:
        now = time.time()
        other.join(Join("r1", "alice", "alice.one", None, now))
        later = now + 11  # alice said nothing since: r1 is due and she expired

        def join_and_reap():  # bob joins, and another instance's reaper looks at r1 and reschedules it
            other.join(Join("r1", "bob", "bob.two", None, later))
            assert other.reap(later) == []

        reaper.meanwhile = join_and_reap
        assert reaper.reap(later) == [("r1", "alice")]  # it found r1 empty, and bob joined before it acted
        assert db.zscore("sig:reap", "r1") is not None  # bob is live: r1 must stay scheduled
        assert reaper.reap(later + 11) == [("r1", "bob")]  # so bob's silence is noticed
    finally:
        reaper.close()
        other.close()


def test_a_keep_alive_of_more_streams_in_one_room_than_lua_unpacks_at_once_renews_them(store):
    """Lua unpacks at most about 8,000 ARGV: a room's listeners go to its `keep_alive` script in batches."""
    backend = RedisBackend(dataclasses.replace(Settings(), redis_url=store, peer_ttl=10.0), Hub())
    try:
        now = 1_700_000_000.0
        backend.join(Join("r1", "alice", "alice.one", None, now))
        backend.join(Join("r1", "bob", "bob.two", None, now))
        others = [Listener("r1", f"gone{i}", hash_token(f"gone{i}.x")) for i in range(5 * KEEP_ALIVE_BATCH)]
        backend.keep_alive([*others, Listener("r1", "alice", hash_token("alice.one"))], now + 9)  # the last batch
        assert backend.reap(now + 11) == [("r1", "bob")]  # alice was heard from at now + 9
    finally:
        backend.close()


def test_server_events_written_by_the_scripts_are_the_tails_python_writes(store):
    """join, leave and reap build peer-joined and peer-left in Lua: byte for byte protocol.envelope_tail's."""
    backend = RedisBackend(dataclasses.replace(Settings(), redis_url=store, peer_ttl=10.0), Hub())
    try:
        now = 1_700_000_000.1234
        backend.join(Join("r1", "alice", "alice.one", None, now))
        backend.join(Join("r1", "bob", "bob.two", None, now + 1))
        backend.join(Join("r1", "carol", "carol.three", None, now + 2))
        backend.leave("r1", "carol", "carol.three", now + 3)
        backend.acknowledge_and_read(Fetch("r1", "alice", "alice.one", 0, 10), now + 9)  # alice stays live
        assert backend.reap(now + 11.5) == [("r1", "bob")]
        envelopes, _ = backend.acknowledge_and_read(Fetch("r1", "alice", "alice.one", 0, 10), now + 12)
        assert envelopes == [
            with_seq(1, envelope_tail("bob", "peer-joined", None, now + 1)),
            with_seq(2, envelope_tail("carol", "peer-joined", None, now + 2)),
            with_seq(3, envelope_tail("carol", "peer-left", {"reason": "left"}, now + 3)),
            with_seq(4, envelope_tail("bob", "peer-left", {"reason": "timeout"}, now + 11.5)),
        ]
    finally:
        backend.close()


def test_an_idempotency_receipt_is_a_json_value(instances, db):
    api = instances()
    alice, bob, carol = api.peer("r1", "alice"), api.peer("r1", "bob"), api.peer("r1", "carol")
    alice.send("bob", "offer", key="once")
    alice.broadcast("hello", key="all")
    idem = [key for key in all_keys(db) if ":idem:" in key]
    receipts = {key.rsplit(":", 1)[1]: json.loads(db.get(key)) for key in idem if db.type(key) == "string"}
    (index,) = [key for key in idem if db.type(key) == "zset"]  # alice's receipts, listed by when they expire
    assert sorted(db.zrange(index, 0, -1)) == sorted(key[len(index) + 1:] for key in idem if key != index)
    assert receipts["once"]["answer"] == [2]  # bob's first envelope was carol's peer-joined
    broadcast = receipts["all"]["answer"]
    assert sorted(broadcast["delivered"]) == ["bob", "carol"]
    assert broadcast["full"] in ([], {})  # Lua's cjson writes an empty table as {}
    assert {len(receipt["digest"]) for receipt in receipts.values()} == {32}
    assert [m["type"] for m in bob.receive()][-2:] == ["offer", "hello"]
    assert carol.receive()[-1]["type"] == "hello"
