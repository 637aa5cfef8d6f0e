"""Abuse limits: on by default, kept in the backend, each a 429 with Retry-After and its own code."""

from __future__ import annotations

import threading
import time

import pytest

from signaling.config import Settings

from ..support.helpers import Api


def from_ip(app, ip: str) -> Api:
    return Api.over_flask(app.test_client(), remote_addr=ip)


#: the longest a lease may still run (Retry-After) with the default PEER_TTL: Redis renews one every
#: PEER_TTL / 2, for 1.5 * PEER_TTL + 2 s (the memory backend: PEER_TTL from the peer's last heartbeat)
PLACE_HELD = 1.5 * 60 + 2


def assert_limited(reply, code: str, most: float) -> None:
    assert reply.status == 429 and reply.code == code, reply.raw
    assert 1 <= int(reply.headers["retry-after"]) <= most


def test_limits_are_on_by_default():
    settings = Settings.from_env({})
    assert settings.joins_per_ip_per_minute == 60 and settings.sends_per_peer_per_second == 50
    assert settings.peers_per_ip == 100 and settings.rooms_per_ip == 20
    assert settings.trusted_proxies == 0


def test_joins_per_ip_per_minute(make_app):
    app = make_app(joins_per_ip_per_minute=3)
    api = from_ip(app, "10.0.0.1")
    host = api.peer("r1", "host")
    api.peer("r1", "b")
    api.peer("r2", "c")
    refused = api.join("r1", "d")
    assert_limited(refused, "join_rate_limited", 60)
    assert refused.body["error"]["message"] == "more than 3 joins a minute from 10.0.0.1"  # every backend
    assert host.members().body["peers"] == ["b", "host"]  # nothing changed
    assert from_ip(app, "10.0.0.2").join("r1", "d").status == 201  # another address is not affected


def test_x_forwarded_for_counts_only_behind_a_trusted_proxy(make_app):
    for proxies, second_status in ((0, 429), (1, 201)):
        app = make_app(joins_per_ip_per_minute=1, trusted_proxies=proxies)
        api = from_ip(app, "10.9.9.9")
        first = api.request("POST", f"/rooms/p{proxies}/peers", {}, headers={"X-Forwarded-For": "1.1.1.1"})
        second = api.request("POST", f"/rooms/p{proxies}/peers", {}, headers={"X-Forwarded-For": "2.2.2.2"})
        assert first.status == 201 and second.status == second_status


def test_sends_per_peer_per_second(make_app):
    api = Api.over_flask(make_app(sends_per_peer_per_second=5).test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    started = time.monotonic()
    statuses = [alice.send("bob", "n", i).status for i in range(5)]
    reply = alice.send("bob", "n", 5)
    assert time.monotonic() - started < 0.9, "the sends must fall in one window for this test"
    assert statuses == [202] * 5
    assert_limited(reply, "send_rate_limited", 1)
    assert_limited(alice.broadcast("n"), "send_rate_limited", 1)
    assert bob.send("alice").status == 202  # per peer: bob is not limited by alice
    time.sleep(1.05)
    assert alice.send("bob", "n", 6).status == 202
    assert [m["data"] for m in bob.receive() if m["type"] == "n"] == [0, 1, 2, 3, 4, 6]


def test_peers_per_ip(make_app):
    app = make_app(peers_per_ip=2)
    api = from_ip(app, "10.0.0.1")
    first = api.peer("r1", "a")
    api.peer("r2", "b")
    assert_limited(api.join("r3", "c"), "too_many_peers", PLACE_HELD)
    assert from_ip(app, "10.0.0.2").join("r3", "c").status == 201
    assert api.join("r1", "a", token=first.token).status == 200  # a resume holds its place already
    first.leave()  # gives its place back
    assert api.join("r3", "d").status == 201


def test_rooms_per_ip(make_app):
    app = make_app(rooms_per_ip=2)
    api = from_ip(app, "10.0.0.1")
    api.peer("r1", "a")
    api.peer("r2", "b")
    assert_limited(api.join("r3", "c"), "too_many_rooms", PLACE_HELD)
    assert api.join("r1", "c").status == 201  # a room it is in already


def test_a_refused_join_gives_its_place_back(make_app):
    app = make_app(peers_per_ip=2, room_capacity=1)
    api = from_ip(app, "10.0.0.1")
    api.peer("r1", "a")
    for _ in range(3):
        assert api.join("r1", "b").code == "room_full"
    assert api.join("r2", "b").status == 201


def test_one_held_poll_per_peer(app):
    api = Api.over_flask(app.test_client())
    bob = api.peer("r1", "bob")
    replies = []
    polls = [threading.Thread(target=lambda: replies.append(bob.poll(wait=1))) for _ in range(3)]
    for poll in polls:
        poll.start()
        time.sleep(0.15)
    assert api.request("GET", "/healthz").body["held_polls"] == 1
    assert len(replies) == 2  # the two older ones ended at once
    for poll in polls:
        poll.join(5)


@pytest.mark.parametrize("backend_name", ["redis"])
def test_limits_hold_across_instances(make_app, backend_name):
    one, two = make_app(joins_per_ip_per_minute=3), make_app(joins_per_ip_per_minute=3)
    a, b = from_ip(one, "10.0.0.1"), from_ip(two, "10.0.0.1")
    assert [a.join("r1").status, b.join("r1").status, a.join("r1").status] == [201] * 3
    assert_limited(b.join("r1"), "join_rate_limited", 60)


@pytest.mark.live
def test_a_default_server_limits_joins(start_server):
    api = Api.over_http(start_server(limits=True).url)
    statuses = [api.join(f"room{i % 10}").status for i in range(61)]
    assert statuses[:60] == [201] * 60
    assert statuses[60] == 429


def test_a_place_is_held_while_its_peer_lives_whatever_keeps_it_alive(make_app):
    """Members, ice-servers, send and broadcast calls are heartbeats: they keep the peer's place leased too."""
    ttl = 1.5
    app = make_app(peers_per_ip=5, rooms_per_ip=2, peer_ttl=ttl, poll_wait=0.5, reap_interval=0.2)
    mine = from_ip(app, "10.0.0.1")
    friend = from_ip(app, "10.0.0.2").peer("r2", "friend")  # someone to send to, alive by its polls
    heartbeats = [
        (mine.peer("r1", "by-members"), lambda peer: peer.members()),
        (mine.peer("r1", "by-ice"), lambda peer: peer.request("GET", f"/rooms/r1/peers/{peer.id}/ice-servers")),
        (mine.peer("r2", "by-send"), lambda peer: peer.send("friend")),
        (mine.peer("r2", "by-broadcast"), lambda peer: peer.broadcast()),
    ]
    deadline = time.monotonic() + 2 * ttl  # well past the lease each join took
    while time.monotonic() < deadline:
        for peer, heartbeat in heartbeats:
            assert heartbeat(peer).status in (200, 202)
        friend.receive()
        time.sleep(0.1)
    assert_limited(mine.join("r3", "more"), "too_many_rooms", 1.5 * ttl + 2)
    mine.peer("r1", "fifth")  # a room it is in: the fifth place
    assert_limited(mine.join("r2", "sixth"), "too_many_peers", 1.5 * ttl + 2)
    time.sleep(1.5 * ttl + 2.5)  # no more heartbeats: the peers time out, and their places go with them
    assert mine.join("r3", "more").status == 201
