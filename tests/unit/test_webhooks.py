"""Webhook signing and the retry schedule: the protocol's defaults, and signatures as `standardwebhooks` makes them."""

from __future__ import annotations

import datetime

from standardwebhooks import Webhook

from signaling.backends.base import Event
from signaling.config import Settings
from signaling.webhooks import BUSY, CONCURRENCY, FLOOR, Pace, Schedule, body, retry_after, signature

from ..support.receiver import SECRETS

EVENT = Event("r1", "msg_1.1", "peer.left", 1763900000.123, '{"room":"r1","peer_id":"bob","reason":"left"}', 0, "l")


def test_each_secret_signs_as_the_standard_webhooks_library_does():
    content = body(EVENT)
    assert content == (b'{"type":"peer.left","timestamp":"2025-11-23T12:13:20.123Z",'
                       b'"data":{"room":"r1","peer_id":"bob","reason":"left"}}')
    when = datetime.datetime.fromtimestamp(1763900100, datetime.UTC)
    assert signature(SECRETS, EVENT.id, 1763900100, content) == " ".join(
        Webhook(secret).sign(EVENT.id, when, content.decode()) for secret in SECRETS)


def test_the_default_schedule_is_the_protocols_5s_30s_2min_10min_30min_then_hourly_for_24h():
    schedule, at, waits = Schedule(Settings()), EVENT.ts, []
    for attempts in range(40):
        again = schedule.retry_at(Event(**{**EVENT.__dict__, "attempts": attempts}), at)
        if again is None:
            break
        waits.append(again - at)
        at = again
    assert waits[:6] == [5, 30, 120, 600, 1800, 3600]
    assert set(waits[5:]) == {3600} and at <= EVENT.ts + 86400 < at + 3600


def test_a_longer_retry_after_is_honoured_and_a_shorter_one_is_not():
    schedule = Schedule(Settings())
    assert schedule.retry_at(EVENT, EVENT.ts, asked=60) == EVENT.ts + 60
    assert schedule.retry_at(EVENT, EVENT.ts, asked=1) == EVENT.ts + 5
    assert schedule.retry_at(EVENT, EVENT.ts, asked=2 * 86400) is None  # past the 24 h: given up
    assert retry_after("120", 0) == 120 and retry_after(None, 0) is None and retry_after("soon", 0) is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470) == 10


def test_the_pace_drops_to_the_floor_after_a_busy_tick_and_doubles_after_each_idle_one():
    pace = Pace()
    assert pace.allowed == CONCURRENCY
    assert pace.update(BUSY) == FLOOR
    assert pace.update(1.5) == FLOOR  # a worker starved by other processes waited: busy too
    allowed = [pace.update(BUSY / 2) for _ in range(6)]
    assert allowed == [min(CONCURRENCY, FLOOR * 2 ** n) for n in range(1, 7)]
    assert allowed[-1] == CONCURRENCY
