"""The measurements: the floor, held polls and streams, ping-pong round trips, one-way throughput, call set-ups.

Each runs against a server that was just started (see `__main__`), with its
own rooms, and stops by itself: every wait has a deadline, every loop a count
or a clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable

from .client import (
    BenchError,
    Conn,
    Outbox,
    Peer,
    Receiver,
    Reply,
    backoff,
    build,
    call,
    connect,
    connect_many,
    drain_all,
    envelope,
    join_all,
    within,
)
from .procs import CpuMeter, PinnedRedis, PinnedServer, demand_seconds, settle_cpu

#: a held poll waits this long (POLL_WAIT of the held-polls server), far beyond one step
HELD_POLL_WAIT = 120
#: connections the held-polls step opens before it joins them
OPEN_AT_ONCE = 500
#: every client must have its message this long after the first one is sent
ANSWER_WITHIN = 90
#: most sends of one sender in `sends_only`: below MAILBOX_LIMIT (1,000), so none is refused
SENDS_CAP = 900


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile of unsorted samples."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def meter(server: PinnedServer, redis_server: PinnedRedis | None) -> CpuMeter:
    """CPU of the server's workers, of redis-server (and its replicas, when it has some) and of this load process."""
    import os

    pids = {"server": server.worker_pids(), "load": [os.getpid()]}
    if redis_server is not None:
        pids["redis"] = [redis_server.process.pid]
        if redis_server.replicas:
            pids["replica"] = [replica.process.pid for replica in redis_server.replicas]
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


# -- held polls and streams


@dataclasses.dataclass
class Idle:
    """What clients holding polls or streams cost while nothing is sent: CPU over a window."""

    seconds: float
    cpu: dict[str, float]  # shares of one core
    heartbeats: int | None = None  # stream heartbeats the clients read in the window


async def idle(server: PinnedServer, redis_server: PinnedRedis | None, seconds: float,
               receivers: list[Receiver] | None = None) -> Idle:
    """CPU of the server (and Redis) over `seconds` with nothing sent; with `receivers`, their heartbeats."""
    beats = sum(r.heartbeats for r in receivers) if receivers else 0
    cpu = meter(server, redis_server).start()
    await asyncio.sleep(seconds)
    shares = cpu.stop()
    return Idle(seconds, shares, sum(r.heartbeats for r in receivers) - beats if receivers else None)


async def join_clients(server: PinnedServer, peers: list[Peer]) -> list[Conn]:
    """A connection each for `peers`, each joined and past its `peer-joined` events."""
    conns: list[Conn] = []
    # A connection must send its first request within REQUEST_READ_TIMEOUT of opening (the server
    # closes a silent one), so each chunk joins as soon as it is open, as real clients do.
    for first in range(0, len(peers), OPEN_AT_ONCE):
        chunk = peers[first:first + OPEN_AT_ONCE]
        chunk_conns = await connect_many(server.port, len(chunk))
        await join_all(chunk_conns, chunk)
        conns += chunk_conns
    await drain_all(conns, peers)
    return conns


def wake_requests(peers: list[Peer], step: int, room_size: int, body: bytes) -> list[bytes]:
    """A message for each of the first `step` clients: each room's first member broadcasts (every other
    member gets it) and its second sends to the first."""
    sends = []
    for first in range(0, step, room_size):
        a, b = peers[first], peers[first + 1]
        sends += [a.broadcast_request(body, f"b{step}"), b.send_request(a.id, body, f"s{step}")]
    return sends


async def at_rest(server: PinnedServer, redis_server: PinnedRedis | None, what: str, started: float, held: str,
                  baseline: int, log) -> tuple[int, int, int | None]:
    """What a step of held requests reads once the server is idle, logged: RSS, /healthz's count, Redis clients."""
    rss = server.rss_kib()
    healthz = await healthz_held(server)
    redis_clients = redis_server.signaling_clients() if redis_server is not None else None
    log(f"  {what} in {time.monotonic() - started:.1f} s: {held}, healthz {healthz}, "
        f"RSS +{(rss - baseline) / 1024:.1f} MiB")
    return rss, healthz, redis_clients


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
    idle: Idle | None = None  # the CPU they cost while nothing happens, when measured at this step

    @property
    def rss_per_poll_kib(self) -> float:
        return (self.rss_kib - self.baseline_kib) / self.clients


async def held_polls(server: PinnedServer, redis_server: PinnedRedis | None, steps: list[int],
                     room_size: int, log, idle_at: int = 0, idle_seconds: float = 0) -> list[HeldStep]:
    """Step up the number of clients each holding a poll; at each step wake them all and count answers.

    Clients fill rooms of `room_size` in order. To wake a room, its first member
    broadcasts (every other member's poll answers) and its second member sends to
    the first. A client is one connection: join, drain, then hold. At the step of
    `idle_at` clients, before the wake-up, the server's CPU is measured for
    `idle_seconds` with nothing sent.
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
            conns += await join_clients(server, new_peers)
            peers += new_peers
            polls = await hold_paced(server, conns, peers)
            if not await settle(server, step, limit=120):
                log(f"  held polls {step}: the server did not go idle within 120 s")
            held = sum(1 for poll in polls if not poll.done())
            rss, healthz, redis_clients = await at_rest(
                server, redis_server, f"{step} clients joined and polling", started, f"{held} held", baseline, log)
            quiet = None
            if step == idle_at:
                quiet = await idle(server, redis_server, idle_seconds)
                log(f"  {step} held polls idle for {idle_seconds:g} s: {cpu_text(quiet.cpu)}")

            # A message for every client, sent and awaited as real clients would: a 503 is retried
            # (a send with its Idempotency-Key, a poll by polling again); every 503 is counted.
            failed: collections.Counter = collections.Counter()
            sends = wake_requests(peers, step, room_size, body)
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
                                    dict(failed), quiet))
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


def cpu_text(shares: dict[str, float]) -> str:
    return "CPU " + ", ".join(f"{name} {share:.0%}" for name, share in shares.items())


async def held_streams(server: PinnedServer, redis_server: PinnedRedis | None, steps: list[int],
                       room_size: int, log, idle_at: int = 0, idle_seconds: float = 0) -> list[HeldStep]:
    """As `held_polls`, with each client holding a stream (a `Receiver`) instead of a poll.

    Streams are opened in batches, each once every stream of the last has its
    first line; RSS is read once the worker is idle. At the step of `idle_at`
    clients the server's CPU is measured for `idle_seconds` with nothing sent
    but the streams' heartbeats. Then every client gets one envelope, as in
    `held_polls`, and the clients whose stream brings it are counted.
    """
    if any(step % room_size for step in steps):
        raise ValueError(f"every step must be a multiple of the room size {room_size}")
    baseline = server.rss_kib()
    conns: list[Conn] = []
    peers: list[Peer] = []
    receivers: list[Receiver] = []
    tasks: list[asyncio.Task] = []
    failed: collections.Counter = collections.Counter()
    arrived: list[float | None] = []
    wanted = [""]  # the type of this step's envelope
    everyone = asyncio.Event()
    results = []

    def receiving(i: int):
        def got(messages: list[dict], at: float) -> None:
            if arrived[i] is None and any(m["type"] == wanted[0] for m in messages):
                arrived[i] = at
                if all(a is not None for a in arrived):
                    everyone.set()
        return got

    def broken() -> None:
        for task in tasks:
            if task.done():
                raise task.exception() or BenchError("a stream receiver stopped")

    try:
        for step in steps:
            started = time.monotonic()
            new_peers = [Peer(f"h{i // room_size}", f"p{i}") for i in range(len(peers), step)]
            new_conns = await join_clients(server, new_peers)
            deadline = time.monotonic() + 300
            for first in range(0, len(new_peers), 250):
                batch = [Receiver(conn, peer, receiving(len(receivers) + k), failed) for k, (conn, peer)
                         in enumerate(zip(new_conns[first:first + 250], new_peers[first:first + 250], strict=True))]
                receivers += batch
                arrived += [None] * len(batch)
                tasks += [asyncio.create_task(r.run()) for r in batch]
                while not all(r.open for r in batch):
                    broken()
                    if time.monotonic() > deadline:
                        raise BenchError(f"{sum(not r.open for r in batch)} streams had no first line in 300 s")
                    await asyncio.sleep(0.05)
            conns += new_conns
            peers += new_peers
            if not await settle(server, step, limit=120):
                log(f"  held streams {step}: the server did not go idle within 120 s")
            broken()
            held = sum(1 for r in receivers if r.open)
            rss, healthz, redis_clients = await at_rest(
                server, redis_server, f"{step} clients joined and streaming", started, f"{held} open", baseline, log)
            quiet = None
            if step == idle_at:
                quiet = await idle(server, redis_server, idle_seconds, receivers)
                log(f"  {step} open streams idle for {idle_seconds:g} s: {cpu_text(quiet.cpu)},"
                    f" {quiet.heartbeats:,} heartbeats read")
                broken()

            wanted[0] = f"bench{step}"
            arrived[:] = [None] * len(arrived)
            everyone.clear()
            before = collections.Counter(failed)
            sent_at = time.perf_counter()
            side = await connect_many(server.port, 64)  # fresh: gunicorn closes connections idle for 75 s
            try:
                await send_retrying(side, wake_requests(peers, step, room_size, envelope(wanted[0], 200)), failed,
                                    time.monotonic() + ANSWER_WITHIN)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(everyone.wait(), ANSWER_WITHIN)
            finally:
                for conn in side:
                    conn.close()
            broken()
            answered = [at for at in arrived if at is not None]
            last = max(answered, default=sent_at)
            step_failed = dict(failed - before)
            results.append(HeldStep(step, held, len(answered), last - sent_at, rss, baseline, healthz, redis_clients,
                                    step_failed, quiet))
            log(f"  {len(answered)} of {step} answered in {last - sent_at:.2f} s; 503s and other failures:"
                f" {step_failed or 'none'}")
            if len(answered) < step:
                log(f"  stopping the held-streams run: {step - len(answered)} clients got no envelope"
                    f" within {ANSWER_WITHIN} s")
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in conns:
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
async def joined_pairs(server: PinnedServer, pairs: int, rooms: str, names: tuple[str, str],
                       cursor_header: bool = False):
    """`pairs` rooms (`<rooms>-<i>`) of two joined peers named `names`, their events read: the two Sides.

    With `cursor_header` the peers poll with `Last-Event-ID` (see `Peer`)."""
    # The send connections open last, once every peer has joined: a connection must send its first
    # request within REQUEST_READ_TIMEOUT of opening (the server closes a silent one).
    conns = await connect_many(server.port, 2 * pairs)
    peers = [[Peer(f"{rooms}-{i}", name, cursor_header) for i in range(pairs)] for name in names]
    try:
        for n in range(2):
            await join_all(conns[n * pairs:(n + 1) * pairs], peers[n])
        for n in range(2):
            await drain_all(conns[n * pairs:(n + 1) * pairs], peers[n])
        conns += await connect_many(server.port, 2 * pairs)
        lines = [conns[k * pairs:(k + 1) * pairs] for k in range(4)]
        yield [Side(peers[n], lines[n], lines[2 + n]) for n in range(2)]
    finally:
        for conn in conns:
            conn.close()


async def watch(tasks: list[asyncio.Task], ending: list[asyncio.Task], deadline: float, what: str) -> bool:
    """Wait until every task of `ending` has ended, or perf_counter() reaches `deadline`: True if they ended.

    The first of `tasks` to fail fails this at once; so does one outside `ending`
    that ends (a listener runs until it is cancelled).
    """
    waiting = set(ending)
    while waiting and (remaining := deadline - time.perf_counter()) > 0:
        done, _ = await asyncio.wait([t for t in tasks if not t.done()], timeout=remaining,
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
            if task not in waiting:
                raise BenchError(f"{what}: a listener stopped")
            waiting.discard(task)
    return not waiting


async def measured(server: PinnedServer, redis_server: PinnedRedis | None, pairs: int,
                   listen: Callable[[int], Awaitable] | None, drive: Callable[[int], Awaitable],
                   window_start: float, limit: float, what: str, linger: float = 0.0) -> dict[str, float]:
    """Run listen(i) for every pair in the background (if given), then drive(i) for every pair to their end.

    Returns the CPU shares from `window_start` until the drivers ended; waits
    `linger` more for answers still on their way. A listener or driver that
    fails fails the run at once; the listeners are cancelled at the end.
    """
    listeners = [asyncio.create_task(listen(i)) for i in range(pairs)] if listen is not None else []
    drivers: list[asyncio.Task] = []
    try:
        await asyncio.sleep(0.2)  # every listener holds its poll before the first send
        cpu = meter(server, redis_server)
        drivers = [asyncio.create_task(drive(i)) for i in range(pairs)]
        everything = listeners + drivers
        await watch(everything, drivers, window_start, what)
        cpu.start()
        if not await watch(everything, drivers, time.perf_counter() + limit, what):
            raise BenchError(f"no {what} within {limit:g}s")
        shares = cpu.stop()
        await watch(listeners, listeners, time.perf_counter() + linger, what)
        return shares
    finally:
        await cancelled(listeners + drivers)


async def cancelled(tasks: list[asyncio.Task], tries: int = 10) -> None:
    """Cancel the tasks and wait until they have ended, cancelling again a task that went on regardless."""
    for _ in range(tries):
        for task in tasks:
            task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=1) if tasks else ((), ())
        if not pending:
            return
    raise BenchError(f"{len(pending)} tasks went on after {tries} cancellations")


class Inbox:
    """A peer's streaming receive as a queue of (envelope, arrival time), in order; a failure of its
    `Receiver` is raised by `get`."""

    def __init__(self, conn: Conn, peer: Peer, failed: collections.Counter):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.receiver = Receiver(conn, peer, self._got, failed)
        self.task = asyncio.ensure_future(self.receiver.run())

    def _got(self, messages: list[dict], at: float) -> None:
        for message in messages:
            self.queue.put_nowait((message, at))

    async def get(self, timeout: float) -> tuple[dict, float]:
        if not self.queue.empty():
            return self.queue.get_nowait()
        getter = asyncio.ensure_future(self.queue.get())
        done, _ = await asyncio.wait([getter, self.task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        if self.task in done:
            raise self.task.exception() or BenchError("a stream receiver stopped")
        raise BenchError(f"no envelope on the stream within {timeout:g} s")

    def close(self) -> None:
        self.task.cancel()


@dataclasses.dataclass
class PingPong:
    pairs: int
    samples: int
    p50_ms: float
    p99_ms: float
    cpu: dict[str, float]
    failed: dict[str, int]
    receive: str = "poll"  # or "stream"


async def ping_pong(server: PinnedServer, redis_server: PinnedRedis | None, pairs: int, seconds: float,
                    warmup: float, size: int, poll_wait: float, tag: str, receive: str = "poll") -> PingPong:
    """`pairs` pairs bounce a `size`-byte envelope: A sends, B's held poll returns, B sends back, A's returns.

    A round trip is timed from A starting its send to the last byte of A's poll
    answer that holds B's reply. Each peer has a connection for its polls and
    one for its sends; a poll is held again as soon as its answer is read.
    With `receive="stream"` each peer keeps a stream open on that connection
    instead (a `Receiver`), and the round trip ends with the last byte of the
    piece of A's stream that completes B's reply.
    """
    failed: collections.Counter = collections.Counter()
    async with joined_pairs(server, pairs, f"pp{tag}{receive[0]}", ("a", "b")) as (a, b):
        ping, pong = envelope("ping", size), envelope("pong", size)
        samples: list[float] = []
        start = time.perf_counter()
        measure_from, end = start + warmup, start + warmup + seconds
        within_s = poll_wait + 30

        async def echo_streaming(i: int) -> None:
            inbox = Inbox(b.polls[i], b.peers[i], failed)
            request = b.peers[i].send_request("a", pong)
            try:
                while True:
                    message, _ = await inbox.get(within_s)
                    if message["type"] == "ping":
                        await send_until_accepted(b.sends[i], request, failed)
            finally:
                inbox.close()

        async def pinger_streaming(i: int) -> None:
            inbox = Inbox(a.polls[i], a.peers[i], failed)
            request = a.peers[i].send_request("b", ping)
            try:
                for _ in range(10_000_000):
                    sent = time.perf_counter()
                    if sent >= end:
                        return
                    await send_until_accepted(a.sends[i], request, failed)
                    for _ in range(100):
                        message, at = await inbox.get(within_s)
                        if message["type"] == "pong":
                            break
                    else:
                        raise BenchError("no pong in 100 envelopes")
                    if sent >= measure_from:
                        samples.append(at - sent)
            finally:
                inbox.close()

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

        streaming = receive == "stream"
        shares = await measured(server, redis_server, pairs, echo_streaming if streaming else echo,
                                pinger_streaming if streaming else pinger, measure_from, warmup + seconds + 60,
                                "end of the ping-pong run")
    if not samples:
        raise BenchError(f"no round trip completed with {pairs} pairs in {seconds:g} s")
    return PingPong(pairs, len(samples), percentile(samples, 0.5) * 1e3, percentile(samples, 0.99) * 1e3,
                    shares, dict(failed), receive)



@dataclasses.dataclass
class Throughput:
    pairs: int
    seconds: float
    delivered: int  # distinct seqs that arrived within the window
    sent: int  # envelopes accepted (202) within the window
    sends: int  # send requests answered 202 within the window (= sent, but for the batching client)
    refused: int  # 429 mailbox_full within the window
    polls: int  # poll answers within the window; streaming: streams opened within it
    cpu: dict[str, float]
    failed: dict[str, int]
    window: int | None = None  # the batching client's envelopes in flight per sender; None: one per request
    receive: str = "poll"  # or "stream"

    @property
    def per_second(self) -> float:
        return self.delivered / self.seconds

    @property
    def requests(self) -> int:
        return self.sends + self.refused + self.polls

    @property
    def server_us_per_request(self) -> float:
        """Server CPU time per request answered in the window (sends and polls), microseconds."""
        return self.cpu.get("server", 0.0) * self.seconds / self.requests * 1e6 if self.requests else 0.0

    @property
    def server_us_per_envelope(self) -> float:
        """Server CPU time per envelope delivered in the window (its send and its delivery), microseconds."""
        return self.cpu.get("server", 0.0) * self.seconds / self.delivered * 1e6 if self.delivered else 0.0

    def server_us_per_delivery(self, send_us: float) -> float:
        """Server CPU per envelope delivered, less its sends at `send_us` each (from `sends_only`):
        what a delivery costs, its stream's (re)opening included. One envelope per request only."""
        if not self.delivered:
            return 0.0
        server_us = self.cpu.get("server", 0.0) * self.seconds * 1e6
        return (server_us - (self.sends + self.refused) * send_us) / self.delivered

    @property
    def envelopes_per_send(self) -> float:
        return self.sent / self.sends if self.sends else 0.0

    @property
    def envelopes_per_poll(self) -> float:
        return self.delivered / self.polls if self.polls else 0.0


async def throughput(server: PinnedServer, redis_server: PinnedRedis | None, pairs: int, seconds: float,
                     warmup: float, size: int, poll_wait: float, tag: str, window: int | None = None,
                     receive: str = "poll") -> Throughput:
    """`pairs` senders each send to their own receiver as fast as answers come; receivers long-poll with acks.

    Counted: distinct seqs that arrive at the receivers in a window of `seconds`
    after `warmup`, each when the last byte of its poll answer arrived.

    Without `window`, one envelope per request: each sender sends again as soon
    as its last send is answered. With `window`, the client of protocol 1.1 that
    static/signaling.js is: each sender keeps `window` envelopes sent and not yet
    received (as peer-bench's throughput scenario does) and sends them through an
    `Outbox` (one request in flight, the rest batched); receivers poll with
    `Last-Event-ID`.

    With `receive="stream"` each receiver keeps a stream open instead (a
    `Receiver`: reopened at once with `Last-Event-ID` when the server ends it);
    an envelope counts when the piece of the stream that completes it arrived,
    and `polls` counts the streams opened within the window.
    """
    failed: collections.Counter = collections.Counter()
    streaming = receive == "stream"
    async with joined_pairs(server, pairs, f"tp{tag}{receive[0]}", ("r", "s"), cursor_header=window is not None) as (
            receivers, senders):
        body = envelope("candidate", size)
        seen: list[set[int]] = [set() for _ in range(pairs)]
        counts = {"sent": 0, "sends": 0, "refused": 0, "polls": 0}
        credits = [asyncio.Semaphore(window) for _ in range(pairs)] if window else []
        start = time.perf_counter()
        window_start, window_end = start + warmup, start + warmup + seconds

        async def receive(i: int) -> None:
            peer, conn = receivers.peers[i], receivers.polls[i]
            held = conn.request(peer.poll_request(poll_wait))
            while True:
                reply, messages, held = await next_answer(conn, peer, held, poll_wait, failed)
                if window is not None:
                    for _ in messages:
                        credits[i].release()
                if window_start <= reply.at < window_end:
                    seen[i].update(m["seq"] for m in messages)
                    counts["polls"] += 1

        streams: list[Receiver] = []

        async def stream(i: int) -> None:
            credit = credits[i] if window is not None else None

            def got(messages: list[dict], at: float) -> None:
                if credit is not None:
                    for _ in messages:
                        credit.release()
                if window_start <= at < window_end:
                    seen[i].update(m["seq"] for m in messages)

            receiver = Receiver(receivers.polls[i], receivers.peers[i], got, failed)
            streams.append(receiver)
            await receiver.run()

        async def count_opens() -> None:
            """Streams opened within the window: the receivers' opens at its start and at its end."""
            await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
            before = sum(r.opens for r in streams)
            await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
            counts["polls"] = sum(r.opens for r in streams) - before

        async def send_one_per_request(i: int) -> None:
            request = senders.peers[i].send_request("r", body)
            conn = senders.sends[i]
            for _ in range(100_000_000):
                if time.perf_counter() >= window_end:
                    return
                reply = await send_until_accepted(conn, request, failed, (202, 429))
                if window_start <= reply.at < window_end:
                    if reply.status == 202:
                        counts["sent"] += 1
                        counts["sends"] += 1
                    else:
                        counts["refused"] += 1
                if reply.status == 429:
                    await asyncio.sleep(0.01)

        def answered(reply: Reply, envelopes: int) -> None:
            if window_start <= reply.at < window_end:
                counts["sends"] += 1
                counts["sent"] += envelopes

        async def send_batching(i: int) -> None:
            credit = credits[i]
            outbox = Outbox(senders.sends[i], senders.peers[i], "r", failed, answered,
                            on_error=lambda exc: credit.release())  # wakes the sender, whose next send raises
            try:
                for _ in range(100_000_000):
                    if time.perf_counter() >= window_end:
                        return
                    await credit.acquire()
                    outbox.send(body)
            finally:
                outbox.close()

        counting = asyncio.ensure_future(count_opens()) if streaming else None
        try:
            shares = await measured(server, redis_server, pairs, stream if streaming else receive,
                                    send_one_per_request if window is None else send_batching,
                                    window_start, warmup + seconds + 60,
                                    "end of the throughput run", linger=0.5)  # answers of the window's last moments
        finally:
            if counting is not None:
                counting.cancel()
    delivered = sum(len(s) for s in seen)
    return Throughput(pairs, seconds, delivered, counts["sent"], counts["sends"], counts["refused"], counts["polls"],
                      shares, dict(failed), window, receive)


@dataclasses.dataclass
class Sends:
    """Sends alone: what a send costs the server, to tell a stream's delivery apart from its send."""

    pairs: int
    seconds: float  # the window, shorter when every sender reached its cap first
    sends: int  # sends answered 202 within the window
    cpu: dict[str, float]
    failed: dict[str, int]
    latencies_ms: list[float] = dataclasses.field(default_factory=list, repr=False)  # of those sends, each

    @property
    def per_second(self) -> float:
        return self.sends / self.seconds if self.seconds else 0.0

    @property
    def server_us_per_send(self) -> float:
        return self.cpu.get("server", 0.0) * self.seconds / self.sends * 1e6 if self.sends else 0.0

    def latency_ms(self, fraction: float) -> float:
        """A percentile of the send latencies, ms."""
        return percentile(self.latencies_ms, fraction) if self.latencies_ms else 0.0


async def sends_only(server: PinnedServer, redis_server: PinnedRedis | None, pairs: int, seconds: float,
                     warmup: float, size: int, tag: str) -> Sends:
    """`pairs` senders send `size`-byte bodies back to back, one per request, as the throughput's first
    client does, to receivers that do not read: each sender stops at SENDS_CAP (below MAILBOX_LIMIT, so
    none is refused), and the window ends with the last sender, or after `seconds`."""
    failed: collections.Counter = collections.Counter()
    async with joined_pairs(server, pairs, f"so{tag}", ("r", "s")) as (_, senders):
        body = envelope("candidate", size)
        sent = [0]
        start = time.perf_counter()
        window_start, window_end = start + warmup, start + warmup + seconds

        latencies: list[float] = []

        async def send(i: int) -> None:
            request = senders.peers[i].send_request("r", body)
            for _ in range(SENDS_CAP):
                if (asked := time.perf_counter()) >= window_end:
                    return
                reply = await send_until_accepted(senders.sends[i], request, failed)
                if window_start <= reply.at < window_end:
                    sent[0] += 1
                    latencies.append((reply.at - asked) * 1000)  # retries after a 503 included

        shares = await measured(server, redis_server, pairs, None, send, window_start, warmup + seconds + 60,
                                "end of the sends-only run")
        ended = min(time.perf_counter(), window_end)
    return Sends(pairs, max(0.0, ended - window_start), sent[0], shares, dict(failed), latencies)


# -- the cost of REDIS_WAIT_REPLICAS: sends alone with and without WAIT, in the same run


@dataclasses.dataclass
class Wait:
    """Sends alone on two servers side by side on one Redis with a replica in sync, one with
    REDIS_WAIT_REPLICAS=0 and one with 1, in rounds that alternate between them: {replicas waited for:
    its rounds}. Each figure pools a setting's rounds."""

    rounds: dict[int, list[Sends]]

    def per_second(self, replicas: int) -> float:
        runs = self.rounds.get(replicas, [])
        seconds = sum(run.seconds for run in runs)
        return sum(run.sends for run in runs) / seconds if seconds else 0.0

    def server_us_per_send(self, replicas: int) -> float:
        runs = self.rounds.get(replicas, [])
        sends = sum(run.sends for run in runs)
        return sum(run.cpu.get("server", 0.0) * run.seconds for run in runs) / sends * 1e6 if sends else 0.0

    def latency_ms(self, replicas: int, fraction: float) -> float:
        samples = [ms for run in self.rounds.get(replicas, []) for ms in run.latencies_ms]
        return percentile(samples, fraction) if samples else 0.0

    def failed(self, replicas: int) -> dict[str, int]:
        return dict(sum((collections.Counter(run.failed) for run in self.rounds.get(replicas, [])),
                        collections.Counter()))


# -- the floor: what the stack alone costs per request


@dataclasses.dataclass
class Floor:
    connections: int
    seconds: float
    requests: int  # answered within the window
    cpu: dict[str, float]
    held: int = 0  # requests held at once on the bare app, as polls
    rss_per_held_kib: float = 0.0  # the worker's RSS growth per held request

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def server_us_per_request(self) -> float:
        return self.cpu.get("server", 0.0) * self.seconds / self.requests * 1e6 if self.requests else 0.0


async def floor(server: PinnedServer, connections: int, seconds: float, warmup: float, size: int) -> Floor:
    """`connections` clients send requests back to back to the bare app (bench/floor.py), each
    alternating one shaped as the throughput's send (POST, token, a `size`-byte JSON body) and one
    shaped as its poll (GET with token and query); CPU per request measured as in throughput."""
    conns = await connect_many(server.port, connections)
    token = "t" * 43  # as long as the service's tokens
    shapes = [build("POST", "/rooms/tp-0/peers/r/messages", token, envelope("candidate", size)),
              build("GET", "/rooms/tp-0/peers/r/messages?after=7&wait=25&limit=100", token)]
    answered = [0]
    start = time.perf_counter()
    window_start, window_end = start + warmup, start + warmup + seconds

    async def drive(i: int) -> None:
        for n in range(100_000_000):
            if time.perf_counter() >= window_end:
                return
            reply = await call(conns[i], shapes[n % 2], 30)
            if window_start <= reply.at < window_end:
                answered[0] += 1

    try:
        shares = await measured(server, None, connections, None, drive, window_start, warmup + seconds + 60,
                                "end of the floor run")
    finally:
        for conn in conns:
            conn.close()
    return Floor(connections, seconds, answered[0], shares)


async def held_floor(server: PinnedServer, count: int) -> tuple[int, float]:
    """`count` connections each send a request shaped as a poll that the bare app holds (bench/floor.py's
    /hold/); (requests held, worker RSS growth per held request in KiB), measured once the worker is idle."""
    baseline = server.rss_kib()
    conns = await connect_many(server.port, count)
    token = "t" * 43
    try:
        waits = [conn.request(build("GET", f"/hold/rooms/f{i // 50}/peers/p{i}/messages?after=0&wait=120", token))
                 for i, conn in enumerate(conns)]
        await asyncio.sleep(1)
        await asyncio.to_thread(settle_cpu, server.worker_pids())
        held = sum(1 for wait in waits if not wait.done())
        return held, (server.rss_kib() - baseline) / held if held else 0.0
    finally:
        for conn in conns:
            conn.close()


# -- call set-ups: two peers join, trade an offer, an answer and ICE candidates, and leave

#: ICE candidates each side sends (each a separate send() call, as a browser trickles them)
CANDIDATES = 10
#: a call set-up (join to leave) must end within this
CALL_WITHIN = 60


@dataclasses.dataclass
class CallSetups:
    calls: int  # concurrent calls
    seconds: float
    completed: int  # set-ups whose last envelope arrived within the window
    p50_ms: float  # set-up time of the calls started within the window
    p99_ms: float
    requests_per_setup: float  # every request of a call, join to leave, over the calls completed in the window
    requests: int  # requests made within the window (all calls)
    cpu: dict[str, float]
    failed: dict[str, int]

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds

    @property
    def server_us_per_request(self) -> float:
        return self.cpu.get("server", 0.0) * self.seconds / self.requests * 1e6 if self.requests else 0.0


async def call_setups(server: PinnedServer, redis_server: PinnedRedis | None, calls: int, seconds: float,
                      warmup: float, sdp_bytes: int, candidate_bytes: int, poll_wait: float,
                      tag: str) -> CallSetups:
    """`calls` calls at a time, each in its own room, one after another, as two pages with
    static/signaling.js would make them (protocol 1.1: sends through an `Outbox`, polls with
    `Last-Event-ID`, each poll held again as soon as it is answered):

    the caller joins and polls; the callee joins and polls; on `peer-joined` the
    caller sends an offer and CANDIDATES candidates (the offer goes alone, the
    candidates queued behind it as one batch); on the offer the callee does the
    same with its answer. The set-up is done when each side has all the other
    sent; its time runs from the caller's join to then. Then each side aborts
    its held poll (closes that connection, as fetch's abort does) and leaves
    (DELETE). Each peer sends over one keep-alive connection and polls over
    another, a new one for each call.

    The window is `seconds` after `warmup`, or longer when fewer calls than
    `calls` completed in it (see below); set-ups/s count the calls completed in
    it, set-up times are those of the calls started in it.
    """
    failed: collections.Counter = collections.Counter()
    sdp = {"offer": envelope("offer", sdp_bytes), "answer": envelope("answer", sdp_bytes)}
    candidate = envelope("candidate", candidate_bytes)
    records: list[tuple[float, float, int]] = []  # (started, ready, requests) per call
    in_window = [0]  # requests made within the window
    window_start = time.perf_counter() + warmup
    window_end = math.inf  # set when the window closes

    def counted(n: int = 1) -> None:
        if window_start <= time.perf_counter() < window_end:
            in_window[0] += n

    async def one_call(room: str, sends: tuple[Conn, Conn]) -> tuple[float, float, int]:
        peers = (Peer(room, "caller", cursor_header=True), Peer(room, "callee", cursor_header=True))
        polls = await asyncio.gather(connect(server.port), connect(server.port))
        requests = [0]
        broken: asyncio.Future = asyncio.get_running_loop().create_future()

        def request(conn: Conn, data: bytes) -> asyncio.Future:
            requests[0] += 1
            counted()
            return conn.request(data)

        def answered(reply: Reply, envelopes: int) -> None:
            requests[0] += 1
            counted()

        def fail(exc: BaseException) -> None:
            if not broken.done():
                broken.set_exception(exc)

        outboxes = [Outbox(sends[k], peers[k], peers[1 - k].id, failed, answered, fail) for k in (0, 1)]
        try:
            started = time.perf_counter()
            held = []
            for k in (0, 1):
                peers[k].joined(await call(sends[k], peers[k].join_request(), 30, (201,)))
                requests[0] += 1
                counted()
                held.append(request(polls[k], peers[k].poll_request(poll_wait)))

            async def side(k: int) -> float:
                """One page: poll until all the other's envelopes are in, sending on cue; when they were."""
                peer, outbox, poll = peers[k], outboxes[k], held[k]
                cue, reply_kind = ("peer-joined", "answer") if k == 0 else ("offer", "offer")
                wanted = {reply_kind: 1, "candidate": CANDIDATES}
                got: collections.Counter = collections.Counter()
                for _ in range(1000):
                    reply, messages, poll = await next_answer(polls[k], peer, poll, poll_wait, failed)
                    held[k] = poll
                    requests[0] += 1
                    counted()
                    for message in messages:
                        got[message["type"]] += 1
                        if message["type"] == cue:
                            outbox.send(sdp["offer" if k == 0 else "answer"])
                            for _ in range(CANDIDATES):
                                outbox.send(candidate)
                    if all(got[kind] >= n for kind, n in wanted.items()):
                        return reply.at
                raise BenchError(f"{peer.id} of {room}: not all envelopes in 1,000 polls")

            sides = asyncio.gather(side(0), side(1))
            done, _ = await asyncio.wait([sides, broken], timeout=CALL_WITHIN, return_when=asyncio.FIRST_COMPLETED)
            if broken in done:
                sides.cancel()
                raise broken.exception()
            if not done:
                sides.cancel()
                raise BenchError(f"no call set-up within {CALL_WITHIN} s")
            ready = max(sides.result())
            await within(asyncio.gather(*(outbox.idle() for outbox in outboxes)), 30, "the last send's 202")
            for conn in polls:  # the page's leave() aborts its held poll
                conn.close()
            await asyncio.gather(*(call(sends[k], build("DELETE", f"/rooms/{room}/peers/{peers[k].id}",
                                                        peers[k].token), 30, (204,)) for k in (0, 1)))
            requests[0] += 2
            counted(2)
            return started, ready, requests[0]
        finally:
            for outbox in outboxes:
                outbox.close()
            for conn in polls:
                conn.close()
            if broken.done():
                broken.exception()

    async def slot(i: int) -> None:
        sends = tuple(await asyncio.gather(connect(server.port), connect(server.port)))
        try:
            for n in range(100_000):
                if time.perf_counter() >= window_end:
                    return
                records.append(await one_call(f"cs{tag}-{i}-{n}", sends))
        finally:
            for conn in sends:
                conn.close()

    slots = [asyncio.create_task(slot(i)) for i in range(calls)]
    try:
        cpu = meter(server, redis_server)
        await watch(slots, slots, window_start, "call set-ups")
        cpu.start()
        await watch(slots, slots, window_start + seconds, "call set-ups")
        # On a slow (or busy) machine a call can outlast the window: it stays open, up to
        # CALL_WITHIN more, until as many calls have completed within it as run at a time.
        while sum(1 for r in records if r[1] >= window_start) < calls:
            if await watch(slots, slots, min(time.perf_counter() + 0.05, window_start + seconds + CALL_WITHIN),
                           "call set-ups") or time.perf_counter() >= window_start + seconds + CALL_WITHIN:
                break
        window_end = time.perf_counter()
        shares = cpu.stop()
        if not await watch(slots, slots, time.perf_counter() + CALL_WITHIN + 30, "call set-ups"):
            raise BenchError("the call set-ups did not end")
    finally:
        for task in slots:
            task.cancel()
        await asyncio.gather(*slots, return_exceptions=True)
    completed = [r for r in records if window_start <= r[1] < window_end]
    times = [ready - started for started, ready, _ in records if window_start <= started < window_end]
    if not completed or not times:
        raise BenchError(f"no call set-up completed with {calls} at a time in {window_end - window_start:.1f} s")
    return CallSetups(calls, window_end - window_start, len(completed),
                      percentile(times, 0.5) * 1e3, percentile(times, 0.99) * 1e3,
                      sum(r[2] for r in completed) / len(completed), in_window[0], shares, dict(failed))
