"""Webhooks (protocol 1.2) on every store: each event type, signed as Standard Webhooks says (checked by the
`standardwebhooks` package in the receiver), in order per room, retried with the same id, given up in time."""

from __future__ import annotations

import re
import time

import jsonschema

from signaling.service import Service

from ..support.helpers import Api
from ..support.openapi import DOC_URI, REGISTRY
from ..support.receiver import SECRETS

#: the whole retry schedule scaled down; the protocol's default is the settings' (tests/unit/test_webhooks.py)
FAST = dict(webhook_retry_schedule=("0.05",), webhook_timeout=2.0)


def hooked(make_app, receiver, **settings) -> Api:
    app = make_app(webhook_url=receiver.url, webhook_secret=SECRETS, **{**FAST, **settings})
    api = Api.over_flask(app.test_client())
    api.service = Service.of(app)
    return api


def test_every_event_type_is_delivered_signed_in_order(make_app, receiver):
    api = hooked(make_app, receiver, peer_ttl=1.0, poll_wait=0.5, reap_interval=0.1)
    alice = api.peer("r1", "alice")
    bob = api.peer("r1", "bob")
    assert api.join("r1", "alice", token=alice.token).status == 200  # a resume: no event
    assert bob.leave().status == 204
    delivered = receiver.wait_for(6)  # alice says nothing more: she times out, and the room ends
    assert receiver.events() == [
        ("room.started", {"room": "r1"}),
        ("peer.joined", {"room": "r1", "peer_id": "alice", "meta": None}),
        ("peer.joined", {"room": "r1", "peer_id": "bob", "meta": None}),
        ("peer.left", {"room": "r1", "peer_id": "bob", "reason": "left"}),
        ("peer.left", {"room": "r1", "peer_id": "alice", "reason": "timeout"}),
        ("room.ended", {"room": "r1"}),
    ]
    assert len({d.id for d in delivered}) == 6 and all(d.id.startswith("msg_") for d in delivered)
    documented = jsonschema.Draft202012Validator({"$ref": f"{DOC_URI}#/components/schemas/WebhookEvent"},
                                                 registry=REGISTRY, format_checker=jsonschema.FormatChecker())
    for d in delivered:
        documented.validate(d.event)  # the OpenAPI document's `webhooks` describe it
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", d.event["timestamp"])
        assert d.headers["content-type"] == "application/json"
        assert d.headers["user-agent"] == "signaling-webhooks/1.2"  # the service, in the receiver's logs
        assert abs(int(d.headers["webhook-timestamp"]) - d.at) < 5
        assert len(d.headers["webhook-signature"].split(" ")) == len(SECRETS)  # each secret signs
    time.sleep(0.3)
    assert len(receiver.deliveries) == 6, "an event was delivered twice while the receiver answered 2xx"


def test_a_failed_attempt_is_retried_with_the_same_id_and_the_rooms_next_event_waits(make_app, receiver):
    failures = {"left": 3}

    def answer(event):
        if event["data"]["room"] == "r1" and failures["left"]:
            failures["left"] -= 1
            return 503
        return 200

    receiver.answer = answer
    api = hooked(make_app, receiver)
    api.peer("r1", "alice")
    api.peer("r2", "carol")
    receiver.wait_for(4)
    r1 = [d for d in receiver.deliveries if d.room == "r1"]
    assert [d.status for d in r1] == [503, 503, 503, 200, 200]
    assert len({d.id for d in r1[:4]}) == 1  # one event, one id on every attempt
    assert [d.event["type"] for d in r1] == ["room.started"] * 4 + ["peer.joined"]  # in order, after it
    assert receiver.events("r2") == [("room.started", {"room": "r2"}),
                                     ("peer.joined", {"room": "r2", "peer_id": "carol", "meta": None})]


def test_a_longer_retry_after_is_honoured(make_app, receiver):
    receiver.retry_after = "1"
    statuses = iter([429, 200, 200])
    receiver.answer = lambda event: next(statuses)
    hooked(make_app, receiver).peer("r1", "alice")
    receiver.wait_for(2)
    first, second = receiver.deliveries[:2]
    assert first.id == second.id and second.at - first.at >= 0.9  # not the schedule's 0.05 s


def test_an_event_is_given_up_after_webhook_retry_for_and_the_next_one_follows(make_app, receiver):
    receiver.answer = lambda event: 500 if event["type"] == "room.started" else 200
    api = hooked(make_app, receiver, webhook_retry_for=0.5)
    joined_at = time.time()
    api.peer("r1", "alice")
    receiver.wait_for(1)
    assert receiver.events() == [("peer.joined", {"room": "r1", "peer_id": "alice", "meta": None})]
    started = [d for d in receiver.deliveries if d.event["type"] == "room.started"]
    assert started and {d.status for d in started} == {500}
    # never tried again past the event's time + WEBHOOK_RETRY_FOR (give or take a tick of the loop); the first
    # attempt may come later (a cluster's first sweep of every slot), and is the only one then
    assert all(d.at < joined_at + 0.5 + 0.5 for d in started[1:])


def test_410_stops_delivery_to_the_url_until_restart(make_app, receiver, backend_name):
    receiver.answer = lambda event: 410
    api = hooked(make_app, receiver)
    api.peer("r1", "alice")
    deadline = time.monotonic() + 10
    while not receiver.deliveries and time.monotonic() < deadline:
        time.sleep(0.02)
    api.peer("r2", "bob")
    time.sleep(1)  # twenty retry steps
    assert len(receiver.deliveries) == 1
    if backend_name == "memory":  # its queue lives and dies with the process
        assert api.service.backend.event_backlog(time.time())[0] == 4
        return
    receiver.answer = lambda event: 200
    hooked(make_app, receiver)  # an instance started since, on the same store, delivers them all
    receiver.wait_for(4)
    assert [kind for kind, _ in receiver.events("r1")] == ["room.started", "peer.joined"]
    assert [kind for kind, _ in receiver.events("r2")] == ["room.started", "peer.joined"]


def test_without_webhook_url_nothing_is_recorded(make_app):
    app = make_app()
    api = Api.over_flask(app.test_client())
    api.peer("r1", "alice").leave()
    assert Service.of(app).webhooks is None
    assert Service.of(app).backend.event_backlog(time.time()) == (0, None)


def test_attempts_keep_their_connection_to_the_receiver(make_app, receiver):
    """Each attempt's thread keeps its one connection alive: a room's events go over one, not one each."""
    api = hooked(make_app, receiver)
    alice = api.peer("r1", "alice")
    for n in range(10):
        api.peer("r1", f"p{n}").leave()
    receiver.wait_for(2 + 20)  # room.started, alice's join; each peer's join and leave
    assert alice.leave().status == 204
    receiver.wait_for(2 + 20 + 2)
    assert receiver.connections <= 3, f"{receiver.connections} connections for 24 events of one room"


def test_delivery_yields_to_requests_while_the_worker_is_busy(make_app, receiver):
    """A worker busy with requests has at most FLOOR attempts out, whatever is waiting; idle again, it has
    one for each waiting room."""
    from signaling.webhooks import FLOOR, TICK

    receiver.hang = lambda event: True  # every attempt stays out until release, so the count is what went out
    api = hooked(make_app, receiver, webhook_timeout=30.0)
    pace, load = api.service.webhooks.pace, {"busy": 1.0}
    pace.busy = lambda: load["busy"]  # the worker's reading of its own load, as if every tick were spent busy
    time.sleep(3 * TICK)
    rooms = 3 * FLOOR + 4
    for r in range(rooms):
        api.peer(f"r{r}", "alice")
    deadline = time.monotonic() + 10
    while receiver.hanging < FLOOR and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(10 * TICK)  # ten more ticks to start more, had they been let
    assert receiver.most_hanging == FLOOR
    load["busy"] = 0.0
    deadline = time.monotonic() + 10
    while receiver.hanging < rooms and time.monotonic() < deadline:
        time.sleep(0.02)
    assert receiver.most_hanging == rooms


def test_a_room_handed_back_after_its_turn_is_delivered_on_in_order(make_app, receiver):
    """More than CHAIN events wait in one room: after CHAIN the thread hands the room back and claims the one
    waiting longest, here the same room, at once (on a cluster too, without waiting for a sweep)."""
    from signaling.webhooks import CHAIN

    failures = {"left": 1}

    def answer(event):  # the first attempt fails: every event below is recorded before its retry
        if failures["left"]:
            failures["left"] -= 1
            return 503
        return 200

    receiver.answer = answer
    api = hooked(make_app, receiver, webhook_retry_schedule=("2",))
    api.peer("r1", "host")
    pairs = CHAIN // 2 + 2
    for n in range(pairs):
        api.peer("r1", f"p{n}").leave()
    receiver.wait_for(2 + 2 * pairs, timeout=20)
    assert [(kind, data.get("peer_id")) for kind, data in receiver.events("r1")] == (
        [("room.started", None), ("peer.joined", "host")]
        + [(kind, f"p{n}") for n in range(pairs) for kind in ("peer.joined", "peer.left")])
