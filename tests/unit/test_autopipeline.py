"""Concurrent requests share Redis round trips: what the queue promises, on a real Redis."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from signaling.backends.redis.autopipeline import Autopipeline


@pytest.fixture
def client(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def in_threads(count: int, work) -> tuple[list[threading.Thread], list]:
    """Run work(0) ... work(count - 1) in threads: the started threads, and the list each fills its result in."""
    results: list = [None] * count

    def run(i):
        try:
            results[i] = work(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


def occupy(lanes: Autopipeline, seconds: float) -> threading.Thread:
    """Keep one lane busy for `seconds`; returns once that round trip is under way."""
    thread = threading.Thread(target=lanes.execute, args=([("BLPOP", "never-filled", seconds)],))
    thread.start()
    time.sleep(0.1)
    return thread


def test_requests_queued_behind_a_busy_lane_travel_together_in_one_round_trip(client):
    lanes = Autopipeline(client, lanes=1, queue_wait=5)
    busy = occupy(lanes, 0.5)
    threads, results = in_threads(50, lambda i: lanes.execute([("INCR", "n"), ("GET", "n")]))
    for thread in [busy, *threads]:
        thread.join(10)
    assert sorted(count for count, _ in results) == list(range(1, 51))
    assert lanes.round_trips == 2  # the busy one, then one carrying all 50


def test_a_request_queued_past_its_wait_is_withdrawn_and_never_runs(client):
    lanes = Autopipeline(client, lanes=1, queue_wait=0.2)
    busy = occupy(lanes, 0.6)
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        lanes.execute([("SET", "x", "1")])
    assert 0.15 < time.monotonic() - started < 0.4
    busy.join(10)
    assert lanes.execute([("GET", "x")]) == [None]  # and the lane is free again


def test_an_error_reply_stays_with_its_own_request(client):
    lanes = Autopipeline(client, lanes=1, queue_wait=5)
    busy = occupy(lanes, 0.3)
    calls = [[("SET", "s", "abc"), ("INCR", "s")], [("INCR", "n")]]
    threads, results = in_threads(2, lambda i: lanes.execute(calls[i]))
    for thread in [busy, *threads]:
        thread.join(10)
    stored, failed = results[0]
    assert stored == "OK" and isinstance(failed, redis.ResponseError)
    assert results[1] == [1]
    assert lanes.round_trips == 2


def test_a_round_trip_cut_short_closes_its_connection_and_the_next_one_reads_only_its_own_replies(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=0.2)
    lanes = Autopipeline(client, lanes=1, queue_wait=5)
    with pytest.raises(redis.TimeoutError):
        lanes.execute([("BLPOP", "cut-short", 2)])  # its reply would come after the socket gave up
    assert lanes.execute([("LPUSH", "cut-short", "v"), ("LLEN", "cut-short")]) == [1, 1]  # the BLPOP took nothing
    assert lanes.execute([("PING",)]) == ["PONG"]
    lanes.close()
    client.close()
