"""Redis behind Sentinel, on real processes: the service follows a failover without a restart, and with
REDIS_WAIT_REPLICAS=1 nothing it answered 202 is lost or doubled when the primary dies.

A primary, two replicas and three sentinels (tests/support/servers.py `SentinelGroup`). The replicas
are cut off for a moment (a partition), the primary is SIGKILLed in that moment, one replica is promoted and the
other then confirms writes, so sends go on. Without WAIT what the primary accepted while they lagged is
gone; with it, those sends answered 503 and their retries stored them.
Senders retry a 503 (or a lost connection) with the same Idempotency-Key, as docs/protocol.md says.
"""

from __future__ import annotations

import collections
import threading
import time

import pytest

from ..support.helpers import Api, Peer
from ..support.servers import SentinelGroup

SENDS = 1000
SENDERS = 4
KILL_AFTER = 300  # sends accepted before the primary dies
DEADLINE = 45  # seconds for all the sends, failover included


@pytest.fixture
def sentinels(tmp_path):
    group = SentinelGroup(tmp_path / "sentinel").start()
    yield group
    group.stop()


class Receiver:
    """Bob, polling (held polls of 1 s) from his cursor until told to stop; every envelope's `i` in order."""

    def __init__(self, bob: Peer):
        self.bob, self.delivered, self.stopped = bob, [], threading.Event()
        self.after_failover = 0  # held polls answered with envelopes once the primary was gone
        self.killed = threading.Event()
        self.refusals: collections.Counter = collections.Counter()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                reply = self.bob.poll(wait=1)
            except OSError:
                self.refusals["connection"] += 1
                continue
            if reply.status == 200:
                self.delivered += [message["data"]["i"] for message in reply.body["messages"]]
                self.bob.cursor = reply.body["cursor"]
                self.after_failover += bool(self.killed.is_set() and reply.body["messages"])
            else:  # 503 while no primary answers; at REDIS_WAIT_REPLICAS=0 perhaps a cursor past a lost seq
                self.refusals[reply.code] += 1
                if reply.code == "bad_cursor":
                    self.bob.cursor = 0
                time.sleep(0.05)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)


def send_until_accepted(alice: Peer, i: int, accepted: dict, retries: collections.Counter, until: float) -> None:
    """One send, retried with its key on 503 or a lost connection until 202 (or the deadline);
    `accepted[i]` is when the request answered 202 was made."""
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            reply = alice.send("bob", data={"i": i}, key=f"send-{i}")
        except OSError:
            retries["connection"] += 1
            continue
        if reply.status == 202:
            accepted[i] = started
            return
        assert reply.status == 503 and reply.code == "backend_unavailable", (reply.status, reply.raw)
        retries["503"] += 1
        time.sleep(0.02)


@pytest.mark.parametrize("replicas", [1, 0], ids=["wait-1", "wait-0"])
def test_a_failover_keeps_every_accepted_send_when_writes_wait_for_a_replica(sentinels, start_server, replicas):
    server = start_server(env={"REDIS_URL": sentinels.url, "REDIS_WAIT_REPLICAS": str(replicas),
                               "REDIS_WAIT_TIMEOUT": "0.5", "POLL_WAIT": "2"})
    api = Api.over_http(server.url, timeout=10)
    alice, bob = api.peer("failover", "alice"), api.peer("failover", "bob")
    receiver = Receiver(bob)
    accepted: dict[int, float] = {}
    retries: collections.Counter = collections.Counter()
    until = time.monotonic() + DEADLINE

    def sender(share: range) -> None:
        for i in share:
            send_until_accepted(alice, i, accepted, retries, until)

    threads = [threading.Thread(target=sender, args=(range(n, SENDS, SENDERS),), daemon=True) for n in range(SENDERS)]
    for thread in threads:
        thread.start()
    while len(accepted) < KILL_AFTER and time.monotonic() < until:
        time.sleep(0.01)
    # The replicas are cut off for a moment: what the primary accepts then reaches none of them before it dies.
    cut_off = sentinels.cut_off_replicas()
    cut_at = time.monotonic()
    time.sleep(0.4)
    old = sentinels.kill_primary()
    killed_at = time.monotonic()
    sentinels.resume(cut_off)
    receiver.killed.set()
    new = sentinels.wait_for_new_primary(old)
    promoted_in = time.monotonic() - killed_at
    for thread in threads:
        thread.join(max(0.0, until - time.monotonic()) + 5)
    assert len(accepted) == SENDS, f"only {len(accepted)} of {SENDS} sends accepted within {DEADLINE} s ({retries})"

    settle = time.monotonic() + 15
    while set(accepted) - set(receiver.delivered) and time.monotonic() < settle:
        time.sleep(0.05)
    time.sleep(1.5)  # one more held poll: anything delivered twice would show now
    receiver.stop()

    # sent after no replica could get it, answered 202 by the primary that then died: gone from Redis
    unreplicated = sorted(i for i, started in accepted.items() if cut_at <= started < killed_at)
    counts = collections.Counter(receiver.delivered)
    lost = sorted(set(accepted) - set(counts))
    doubled = sorted(i for i, n in counts.items() if n > 1)
    print(f"\nREDIS_WAIT_REPLICAS={replicas}: {SENDS} sends accepted, primary {old.port} killed after "
          f"{KILL_AFTER}, replica {new.port} promoted in {promoted_in:.1f} s; retried: {dict(retries)}; "
          f"accepted while no replica could have them (lost from Redis): {len(unreplicated)}; "
          f"poll refusals: {dict(receiver.refusals)}; lost: {len(lost)} {lost[:10]}; "
          f"delivered twice: {len(doubled)} {doubled[:10]}; held polls answered after the failover: "
          f"{receiver.after_failover}")
    assert receiver.after_failover > 0, "held polls did not resume after the failover"
    if replicas:
        assert unreplicated == [], f"{len(unreplicated)} sends answered 202 that no replica had"
        assert lost == [], f"{len(lost)} accepted sends lost at the failover"
        assert doubled == [], f"{len(doubled)} sends delivered twice"
        assert retries["503"] + retries["connection"] > 0, "the failover was not felt: the test proves nothing"
