"""The three measurements: held polls, ping-pong round trips, one-way throughput.

Each runs against a server that was just started (see `__main__`), with its
own rooms, and stops by itself: every wait has a deadline, every loop a count
or a clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable

from .client import BenchError, Conn, Peer, Reply, call, connect, connect_many, drain_all, envelope, join_all, within
from .procs import CpuMeter, PinnedRedis, PinnedServer, demand_seconds

#: a held poll waits this long (POLL_WAIT of the held-polls server), far beyond one step
HELD_POLL_WAIT = 120
#: every client must have its message this long after the first one is sent
ANSWER_WITHIN = 90


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile of unsorted samples."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def meter(server: PinnedServer, redis_server: PinnedRedis | None) -> CpuMeter:
    """CPU of the server's workers, of redis-server and of this load process."""
    import os

    pids = {"server": server.worker_pids(), "load": [os.getpid()]}
    if redis_server is not None:
        pids["redis"] = [redis_server.process.pid]
    return CpuMeter(pids)


async def settle(server: PinnedServer, held: int, limit: float) -> bool:
    """Wait until the server has taken in every poll: /healthz says so (one worker), and the workers
    neither run nor wait to run for two half-seconds in a row. At most `limit` s; True if settled."""
    deadline = time.monotonic() + limit
    quiet = 0
    while time.monotonic() < deadline and quiet < 2:
        pids = server.worker_pids()
        before = sum(demand_seconds(pid) for pid in pids)
        await asyncio.sleep(0.5)
        busy = (sum(demand_seconds(pid) for pid in pids) - before) / 0.5
        counted = server.workers > 1 or await healthz_held(server) >= held
        quiet = quiet + 1 if busy < 0.05 and counted else 0
    return quiet >= 2


async def hold_paced(server: PinnedServer, conns: list[Conn], peers: list[Peer],
                     batch: int = 250, limit: float = 300) -> list[asyncio.Future]:
    """Start a held poll for every peer, `batch` at a time, each batch once the server has taken in the last."""
    deadline = time.monotonic() + limit
    polls: list[asyncio.Future] = []
    for start in range(0, len(peers), batch):
        polls += [conn.request(peer.poll_request(HELD_POLL_WAIT))
                  for conn, peer in zip(conns[start:start + batch], peers[start:start + batch], strict=True)]
        while time.monotonic() < deadline:
            if server.workers == 1:
                if await healthz_held(server) >= len(polls):
                    break
                await asyncio.sleep(0.05)
            else:
                pids = server.worker_pids()
                before = sum(demand_seconds(pid) for pid in pids)
                await asyncio.sleep(0.2)
                if (sum(demand_seconds(pid) for pid in pids) - before) / 0.2 < 0.1:
                    break
        else:
            raise BenchError(f"the server did not take in {len(polls)} polls within {limit:g} s")
    return polls


async def healthz_held(server: PinnedServer) -> int:
    """Held polls of the worker that answers /healthz (on a new connection); -1 when it answers 503."""
    conn = await connect(server.port)
    try:
        reply = await call(conn, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 30, (200, 503))
    finally:
        conn.close()
    return reply.json()["held_polls"] if reply.status == 200 else -1


def backoff(failures: int, reply: Reply) -> float:
    """Seconds to wait after the `failures`-th failure in a row (0, 1, ...), as static/signaling.js does:
    the server's Retry-After plus up to half again (at most 10 s), else 0.5 s doubling up to 10 s,
    with equal jitter."""
    if reply.retry_after is not None:
        return min(reply.retry_after * (1 + random.random() / 2), 10.0)
    step = min(10.0, 0.5 * 2 ** failures)
    return step / 2 + random.random() * step / 2


# -- held polls


@dataclasses.dataclass
class HeldStep:
    clients: int
    held: int  # polls still open when the messages went out
    answered: int  # polls answered with the message
    answer_seconds: float  # from the first message sent to the last poll answered
    rss_kib: int  # workers' RSS with every poll held
    baseline_kib: int  # workers' RSS before the first client
    healthz_held: int  # held polls that /healthz reports (one worker's view)
    redis_clients: int | None  # signaling* connections in CLIENT LIST
    failed: dict[str, int]  # polls answered with an error status (or a closed connection), by status

    @property
    def rss_per_poll_kib(self) -> float:
        return (self.rss_kib - self.baseline_kib) / self.clients


async def held_polls(server: PinnedServer, redis_server: PinnedRedis | None, steps: list[int],
                     room_size: int, log) -> list[HeldStep]:
    """Step up the number of clients each holding a poll; at each step wake them all and count answers.

    Clients fill rooms of `room_size` in order. To wake a room, its first member
    broadcasts (every other member's poll answers) and its second member sends to
    the first. A client is one connection: join, drain, then hold.
    """
    if any(step % room_size for step in steps):
        raise ValueError(f"every step must be a multiple of the room size {room_size}")
    baseline = server.rss_kib()
    side: list[Conn] = []
    conns: list[Conn] = []
    peers: list[Peer] = []
    results = []
    body = envelope("bench", 200)
    try:
        for step in steps:
            started = time.monotonic()
            new_peers = [Peer(f"h{i // room_size}", f"p{i}") for i in range(len(peers), step)]
            new_conns = await connect_many(server.port, len(new_peers))
            conns += new_conns
            await join_all(new_conns, new_peers)
            await drain_all(new_conns, new_peers)
            peers += new_peers
            polls = await hold_paced(server, conns, peers)
            if not await settle(server, step, limit=120):
                log(f"  held polls {step}: the server did not go idle within 120 s")
            held = sum(1 for poll in polls if not poll.done())
            rss = server.rss_kib()
            healthz = await healthz_held(server)
            redis_clients = redis_server.signaling_clients() if redis_server is not None else None
            log(f"  {step} clients joined and polling in {time.monotonic() - started:.1f} s: "
                f"{held} held, healthz {healthz}, RSS +{(rss - baseline) / 1024:.1f} MiB")

            # A message for every client, sent and awaited as real clients would: a 503 is retried
            # (a send with its Idempotency-Key, a poll by polling again); every 503 is counted.
            failed: collections.Counter = collections.Counter()
            sends = []
            for first in range(0, step, room_size):
                a, b = peers[first], peers[first + 1]
                sends += [a.broadcast_request(body, f"b{step}"), b.send_request(a.id, body, f"s{step}")]
            sent_at = time.perf_counter()
            deadline = time.monotonic() + ANSWER_WITHIN
            side = await connect_many(server.port, 64)  # fresh: gunicorn closes connections idle for 75 s
            sending = asyncio.ensure_future(send_retrying(side, sends, failed, deadline))
            arrivals = await asyncio.gather(*(
                answer(conn, peer, poll, failed, deadline) for conn, peer, poll in zip(conns, peers, polls, strict=True)
            ))
            await sending
            for conn in side:
                conn.close()
            answered = [at for at in arrivals if at is not None]
            last = max(answered, default=sent_at)
            results.append(HeldStep(step, held, len(answered), last - sent_at, rss, baseline, healthz, redis_clients,
                                    dict(failed)))
            log(f"  {len(answered)} of {step} answered in {last - sent_at:.2f} s; 503s and other failures:"
                f" {dict(failed) or 'none'}")
            if len(answered) < step:
                log(f"  stopping the held-polls run: {step - len(answered)} clients got no answer"
                    f" within {ANSWER_WITHIN} s")
                break
    finally:
        for conn in conns + side:
            conn.close()
    return results


async def send_retrying(conns: list[Conn], requests: list[bytes], failed: collections.Counter,
                        deadline: float) -> None:
    """Send `requests` over `conns`; a 503 is counted and the same request (same key) sent again,
    until `deadline`: then that send is given up (and counted)."""
    queue = list(reversed(requests))

    async def worker(conn: Conn) -> None:
        while queue:
            request = queue.pop()
            for attempt in range(1000):
                reply = await call(conn, request, 30, (202, 503))
                if reply.status == 202:
                    break
                failed["send 503"] += 1
                if time.monotonic() > deadline:
                    failed["send given up"] += 1
                    break
                await asyncio.sleep(backoff(attempt, reply))

    await within(asyncio.gather(*(worker(c) for c in conns)), deadline - time.monotonic() + 30, "sends")


async def answer(conn: Conn, peer: Peer, poll: asyncio.Future, failed: collections.Counter,
                 deadline: float) -> float | None:
    """When the bench message reached `peer` (perf_counter), polling again after a 503; None by `deadline`."""
    errors = 0
    for _ in range(1000):
        done, _ = await asyncio.wait([poll], timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            return None
        if poll.exception():
            failed["poll closed"] += 1
            return None
        reply: Reply = poll.result()
        if reply.status == 200 and any(m["type"] == "bench" for m in peer.polled(reply)):
            return reply.at
        if reply.status != 200:
            failed[f"poll {reply.status}"] += 1
            await asyncio.sleep(backoff(errors, reply))
            errors += 1
        poll = conn.request(peer.poll_request(HELD_POLL_WAIT))
    return None


# -- ping-pong and throughput: clients that retry a 503 after a back-off, and count it


async def send_until_accepted(conn: Conn, request: bytes, failed: collections.Counter,
                              accept: tuple[int, ...] = (202,)) -> Reply:
    """Send; a 503 is counted and the send repeated after a back-off."""
    for attempt in range(50):
        reply = await call(conn, request, 30, accept + (503,))
        if reply.status != 503:
            return reply
        failed["send 503"] += 1
        await asyncio.sleep(backoff(attempt, reply))
    raise BenchError("a send was refused with 503 fifty times in a row")


async def next_answer(conn: Conn, peer: Peer, held: asyncio.Future, poll_wait: float,
                      failed: collections.Counter) -> tuple[Reply, list[dict], asyncio.Future]:
    """The next 200 answer of `peer`'s held poll: (reply, its envelopes, the poll held again at once).

    A 503 is counted and the poll repeated after a back-off.
    """
    for attempt in range(50):
        reply = await within(held, poll_wait + 30, "a poll answer")
        if reply.status == 200:
            messages = peer.polled(reply)
            return reply, messages, conn.request(peer.poll_request(poll_wait))
        if reply.status != 503:
            raise BenchError(f"poll answered HTTP {reply.status}: {reply.body[:300]!r}")
        failed["poll 503"] += 1
        await asyncio.sleep(backoff(attempt, reply))
        held = conn.request(peer.poll_request(poll_wait))
    raise BenchError("a poll was answered 503 fifty times in a row")


@dataclasses.dataclass
class Side:
    """One peer of each pair, each with a connection for its polls and one for its sends."""

    peers: list[Peer]
    polls: list[Conn]
    sends: list[Conn]


@contextlib.asynccontextmanager
async def joined_pairs(server: PinnedServer, pairs: int, rooms: str, names: tuple[str, str]):
    """`pairs` rooms (`<rooms>-<i>`) of two joined peers named `names`, their events read: the two Sides."""
    conns = await connect_many(server.port, 4 * pairs)
    lines = [conns[k * pairs:(k + 1) * pairs] for k in range(4)]
    sides = [Side([Peer(f"{rooms}-{i}", name) for i in range(pairs)], lines[2 * n], lines[2 * n + 1])
             for n, name in enumerate(names)]
    try:
        for side in sides:
            await join_all(side.polls, side.peers)
        for side in sides:
            await drain_all(side.polls, side.peers)
        yield sides
    finally:
        for conn in conns:
            conn.close()


async def measured(server: PinnedServer, redis_server: PinnedRedis | None, pairs: int,
                   listen: Callable[[int], Awaitable], drive: Callable[[int], Awaitable],
                   window_start: float, limit: float, what: str, linger: float = 0.0) -> dict[str, float]:
    """Run listen(i) for every pair in the background, then drive(i) for every pair to their end.

    Returns the CPU shares from `window_start` until the drivers ended; waits
    `linger` more for answers still on their way. A listener that failed fails
    the run; the listeners are cancelled at the end.
    """
    listeners = [asyncio.create_task(listen(i)) for i in range(pairs)]
    try:
        await asyncio.sleep(0.2)  # every listener holds its poll before the first send
        cpu = meter(server, redis_server)
        driving = asyncio.gather(*(drive(i) for i in range(pairs)))
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        cpu.start()
        await within(driving, limit, what)
        shares = cpu.stop()
        await asyncio.sleep(linger)
        for task in listeners:
            if task.done() and task.exception():
                raise task.exception()
        return shares
    finally:
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)


@dataclasses.dataclass
class PingPong:
    pairs: int
    samples: int
    p50_ms: float
    p99_ms: float
    cpu: dict[str, float]
    failed: dict[str, int]


async def ping_pong(server: PinnedServer, redis_server: PinnedRedis | None, pairs: int, seconds: float,
                    warmup: float, size: int, poll_wait: float, tag: str) -> PingPong:
    """`pairs` pairs bounce a `size`-byte envelope: A sends, B's held poll returns, B sends back, A's returns.

    A round trip is timed from A starting its send to the last byte of A's poll
    answer that holds B's reply. Each peer has a connection for its polls and
    one for its sends; a poll is held again as soon as its answer is read.
    """
    failed: collections.Counter = collections.Counter()
    async with joined_pairs(server, pairs, f"pp{tag}", ("a", "b")) as (a, b):
        ping, pong = envelope("ping", size), envelope("pong", size)
        samples: list[float] = []
        start = time.perf_counter()
        measure_from, end = start + warmup, start + warmup + seconds

        async def echo(i: int) -> None:
            peer, conn = b.peers[i], b.polls[i]
            request = peer.send_request("a", pong)
            held = conn.request(peer.poll_request(poll_wait))
            while True:
                _, messages, held = await next_answer(conn, peer, held, poll_wait, failed)
                for message in messages:
                    if message["type"] == "ping":
                        await send_until_accepted(b.sends[i], request, failed)

        async def pinger(i: int) -> None:
            peer, conn = a.peers[i], a.polls[i]
            request = peer.send_request("b", ping)
            held = conn.request(peer.poll_request(poll_wait))
            for _ in range(10_000_000):
                sent = time.perf_counter()
                if sent >= end:
                    return
                await send_until_accepted(a.sends[i], request, failed)
                for _ in range(100):
                    reply, messages, held = await next_answer(conn, peer, held, poll_wait, failed)
                    if any(m["type"] == "pong" for m in messages):
                        break
                else:
                    raise BenchError("no pong in 100 polls")
                if sent >= measure_from:
                    samples.append(reply.at - sent)

        shares = await measured(server, redis_server, pairs, echo, pinger, measure_from, warmup + seconds + 60,
                                "end of the ping-pong run")
    if not samples:
        raise BenchError(f"no round trip completed with {pairs} pairs in {seconds:g} s")
    return PingPong(pairs, len(samples), percentile(samples, 0.5) * 1e3, percentile(samples, 0.99) * 1e3,
                    shares, dict(failed))



@dataclasses.dataclass
class Throughput:
    pairs: int
    seconds: float
    delivered: int  # distinct seqs that arrived within the window
    sent: int  # 202s within the window
    refused: int  # 429 mailbox_full within the window
    polls: int  # poll answers within the window
    cpu: dict[str, float]
    failed: dict[str, int]

    @property
    def per_second(self) -> float:
        return self.delivered / self.seconds

    @property
    def server_us_per_request(self) -> float:
        """Server CPU time per request answered in the window (sends and polls), microseconds."""
        requests = self.sent + self.refused + self.polls
        return self.cpu.get("server", 0.0) * self.seconds / requests * 1e6 if requests else 0.0


async def throughput(server: PinnedServer, redis_server: PinnedRedis | None, pairs: int, seconds: float,
                     warmup: float, size: int, poll_wait: float, tag: str) -> Throughput:
    """`pairs` senders each send to their own receiver as fast as answers come; receivers long-poll with acks.

    Counted: distinct seqs that arrive at the receivers in a window of `seconds`
    after `warmup`, each when the last byte of its poll answer arrived.
    """
    failed: collections.Counter = collections.Counter()
    async with joined_pairs(server, pairs, f"tp{tag}", ("r", "s")) as (receivers, senders):
        body = envelope("candidate", size)
        seen: list[set[int]] = [set() for _ in range(pairs)]
        counts = {"sent": 0, "refused": 0, "polls": 0}
        start = time.perf_counter()
        window_start, window_end = start + warmup, start + warmup + seconds

        async def receive(i: int) -> None:
            peer, conn = receivers.peers[i], receivers.polls[i]
            held = conn.request(peer.poll_request(poll_wait))
            while True:
                reply, messages, held = await next_answer(conn, peer, held, poll_wait, failed)
                if window_start <= reply.at < window_end:
                    seen[i].update(m["seq"] for m in messages)
                    counts["polls"] += 1

        async def send(i: int) -> None:
            request = senders.peers[i].send_request("r", body)
            conn = senders.sends[i]
            for _ in range(100_000_000):
                if time.perf_counter() >= window_end:
                    return
                reply = await send_until_accepted(conn, request, failed, (202, 429))
                if window_start <= reply.at < window_end:
                    counts["sent" if reply.status == 202 else "refused"] += 1
                if reply.status == 429:
                    await asyncio.sleep(0.01)

        shares = await measured(server, redis_server, pairs, receive, send, window_start, warmup + seconds + 60,
                                "end of the throughput run", linger=0.5)  # answers of the window's last moments
    delivered = sum(len(s) for s in seen)
    return Throughput(pairs, seconds, delivered, counts["sent"], counts["refused"], counts["polls"], shares,
                      dict(failed))
