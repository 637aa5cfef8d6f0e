"""Webhooks on real gunicorn servers: a receiver that is down, an instance killed with events to deliver, a receiver
that hangs. The receiver is a real HTTP server verifying each event with the `standardwebhooks` package."""

from __future__ import annotations

import time

from ..support.helpers import Api
from ..support.receiver import SECRETS, Receiver

#: retries scaled down (the default schedule is the protocol's: tests/unit/test_webhooks.py)
FAST = {"WEBHOOK_SECRET": ",".join(SECRETS), "WEBHOOK_RETRY_SCHEDULE": "0.2,0.5,1", "REAP_INTERVAL": "0.2"}


def expected_order(script: list[tuple[str, str, str]]) -> dict[str, list[tuple]]:
    """What each room's events must be, from (room, peer, "join" | "leave") in the order they were done."""
    rooms: dict[str, list[tuple]] = {}
    members: dict[str, set[str]] = {}
    for room, peer, action in script:
        events, inside = rooms.setdefault(room, []), members.setdefault(room, set())
        if action == "join":
            if not inside:
                events.append(("room.started", None))
            events.append(("peer.joined", peer))
            inside.add(peer)
        else:
            inside.discard(peer)
            events.append(("peer.left", peer))
            if not inside:
                events.append(("room.ended", None))
    return rooms


def seen_order(receiver: Receiver, room: str) -> list[tuple]:
    return [(kind, data.get("peer_id")) for kind, data in receiver.events(room)]


def seen_once(receiver: Receiver, room: str) -> list[tuple]:
    """The room's events as a receiver keeps them: each webhook-id once (at least once allows repeats)."""
    ids: set[str] = set()
    kept = [d for d in receiver.delivered() if d.room == room and d.id not in ids and not ids.add(d.id)]
    return [(d.event["type"], d.event["data"].get("peer_id")) for d in kept]


def test_a_receiver_down_during_joins_and_leaves_gets_everything_after_in_order_once(
        start_server, redis_url, receiver):
    """503s, then refused connections, while two instances take 100 joins and leaves in 10 rooms."""
    env = {"REDIS_URL": redis_url, "WEBHOOK_URL": receiver.url, **FAST}
    instances = [Api.over_http(start_server(env=env).url) for _ in range(2)]
    receiver.answer = lambda event: 503
    script, peers = [], {}
    for step in range(5):
        for r in range(10):
            room, name = f"room{r}", f"p{step}"
            peers[(room, name)] = instances[(r + step) % 2].peer(room, name)
            script.append((room, name, "join"))
    for step in range(5):
        for r in range(10):
            room, name = f"room{r}", f"p{step}"
            assert peers[(room, name)].on(instances[(r + step + 1) % 2]).leave().status == 204
            script.append((room, name, "leave"))
            if step == 2 and r == 0:
                deadline = time.monotonic() + 10  # a busy machine may not have tried one yet
                while not receiver.deliveries and time.monotonic() < deadline:
                    time.sleep(0.05)
                receiver.stop()  # from here on connections are refused
    assert receiver.deliveries and not receiver.delivered()
    time.sleep(1)
    receiver.answer = lambda event: 200
    receiver.start()
    expected = expected_order(script)
    delivered = receiver.wait_for(sum(map(len, expected.values())), timeout=60)
    for room, events in expected.items():
        assert seen_order(receiver, room) == events, room
    ids = [d.id for d in delivered]
    assert len(set(ids)) == len(ids) == 120, "an event was delivered twice while the receiver answered 2xx"
    attempted = {d.id for d in receiver.deliveries}
    assert attempted == set(ids)  # every event that was tried, and failed, was delivered in the end
    time.sleep(0.5)
    assert len(receiver.delivered()) == 120


def test_events_of_an_instance_killed_with_them_undelivered_are_delivered_by_another(
        start_server, redis_url, receiver):
    env = {"REDIS_URL": redis_url, "WEBHOOK_URL": receiver.url, "WEBHOOK_TIMEOUT": "1", **FAST}
    first = start_server(env=env)
    api = Api.over_http(first.url)
    receiver.answer = lambda event: 503
    for r in range(3):
        api.peer(f"room{r}", "alice")
        api.peer(f"room{r}", "bob").leave()
    deadline = time.monotonic() + 10
    while not receiver.deliveries and time.monotonic() < deadline:
        time.sleep(0.02)
    first.kill()  # SIGKILL: its attempts never settle, its leases are left to run out
    receiver.answer = lambda event: 200
    start_server(env=env)
    # An attempt the killed instance had out may still reach the receiver after it answers 2xx, and be
    # delivered again by the other (at least once): the receiver keeps each id once, and so does this check.
    expected = [("room.started", None), ("peer.joined", "alice"), ("peer.joined", "bob"), ("peer.left", "bob")]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(len(seen_once(receiver, f"room{r}")) < 4 for r in range(3)):
        time.sleep(0.05)
    for r in range(3):
        assert seen_once(receiver, f"room{r}") == expected


def test_a_receiver_that_hangs_holds_one_attempt_for_webhook_timeout_and_other_rooms_flow(
        start_server, receiver):
    receiver.hang = lambda event: event["data"]["room"] == "stuck"
    server = start_server(env={"WEBHOOK_URL": receiver.url, "WEBHOOK_TIMEOUT": "1", **FAST})
    api = Api.over_http(server.url)
    api.peer("stuck", "alice")
    for r in range(5):
        api.peer(f"room{r}", "bob")
    receiver.wait_for(10)  # every other room's events, while the stuck room's first hangs
    assert not receiver.events("stuck")
    assert receiver.hung_closed.wait(10), "the hung attempt was not ended by WEBHOOK_TIMEOUT"
    receiver.hang = lambda event: False
    receiver.wait_for(12)
    assert seen_order(receiver, "stuck") == [("room.started", None), ("peer.joined", "alice")]


def test_receivers_that_hang_hold_at_most_concurrency_attempts_and_each_ends(start_server, receiver):
    """Every room's receiver hangs: a worker has at most CONCURRENCY attempts out, and they keep being let go."""
    from signaling.webhooks import CONCURRENCY

    receiver.hang = lambda event: True
    server = start_server(env={"WEBHOOK_URL": receiver.url, "WEBHOOK_TIMEOUT": "3", **FAST})
    api = Api.over_http(server.url)
    for r in range(CONCURRENCY + 20):
        api.peer(f"room{r}", "alice")
    deadline = time.monotonic() + 10
    while receiver.most_hanging < CONCURRENCY and time.monotonic() < deadline:
        time.sleep(0.05)
    assert receiver.most_hanging == CONCURRENCY
    assert receiver.hung_closed.wait(10)
    time.sleep(3.5)  # past a WEBHOOK_TIMEOUT: the next attempts (other rooms, or retries) took their places
    assert receiver.most_hanging == CONCURRENCY
