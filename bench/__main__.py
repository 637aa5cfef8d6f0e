"""`python -m bench [--quick] [--write docs/benchmarks.md]`: run the benchmark, print one table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

from . import report, scenarios, webhooks
from .client import BenchError
from .procs import (
    ROOT,
    SETUPS,
    FloorServer,
    PinnedRedis,
    PinnedServer,
    Setup,
    checkout,
    pin_self,
    raise_open_files,
    versions,
    wait_for_quiet,
    working_tree,
)
from .scenarios import cpu_text


@dataclasses.dataclass(frozen=True)
class Plan:
    """How big each measurement is."""

    held_steps: tuple[int, ...]
    room_size: int
    pingpong_pairs: tuple[int, ...]
    pingpong_seconds: float
    throughput_pairs: tuple[int, ...]
    throughput_seconds: float
    setup_calls: tuple[int, ...]
    setup_seconds: float
    warmup: float
    floor_seconds: float
    idle_clients: int  # held polls and open streams whose idle CPU is measured (one of held_steps)
    idle_seconds: float
    floor_connections: int = 32
    pingpong_bytes: int = 2048
    throughput_bytes: int = 256
    batch_window: int = 4  # peer-bench's --window default
    candidate_bytes: int = 200
    webhook_connections: int = 20  # clients joining and leaving, each in a room of its own (bench/webhooks.py)
    webhook_seconds: float = 5.0
    wait_pairs: int = 32  # senders in each round of the REDIS_WAIT_REPLICAS part
    wait_rounds: int = 3  # rounds of each setting, alternating
    wait_seconds: float = 10.0
    webhook_steady_seconds: float = 20.0  # at webhooks.STEADY_RATE joins and leaves per second

    def describe(self) -> str:
        """The method, as Markdown list items."""
        steps = ", ".join(f"{n:,}" for n in self.held_steps)
        pingpong = ", ".join(f"{n:,}" for n in self.pingpong_pairs)
        throughput = ", ".join(f"{n:,}" for n in self.throughput_pairs)
        setups = ", ".join(f"{n:,}" for n in self.setup_calls)
        idle = f"{self.idle_clients:,}" + (" (a quick run; the full run has 10,000)" if self.idle_clients < 10_000
                                           else "")
        return f"""- Floor: `bench/floor.py`, a bare WSGI app answering 12 bytes, on gunicorn with the service's
  worker settings (one gevent worker, the same `worker_connections` and keep-alive, pinned to the
  same CPU; no access log, no hooks). {self.floor_connections} connections send requests back to back for
  {self.floor_seconds:g} s after a {self.warmup:g} s warm-up, alternately shaped as the throughput's send (POST, token,
  {self.throughput_bytes}-byte JSON body) and its poll (GET, token, query). Its server CPU per request is
  measured as the service's is, and every CPU-per-request figure below is also given as a
  multiple of it ("2.9× floor"): what the service adds to what the stack alone costs.
  Then {max(self.held_steps):,} connections each send it a request shaped as a poll that it holds
  (`/hold/...`, waiting on an Event as a held poll does): the worker's RSS growth per held
  request, once it is idle, is the floor for every "RSS per held poll" figure below.
- Held polls: clients step up through {steps}, in rooms of {self.room_size}. Each client is
  one connection: it joins, reads its `peer-joined` events, then holds a poll (polls are
  started in batches, each once the server has taken in the last). With every poll held
  and the worker idle, RSS is read; then each room's first member broadcasts and its
  second sends to the first, and the clients whose poll brings that envelope are counted.
  A client whose poll (or send) is answered 503 retries as `static/signaling.js` does:
  after the server's `Retry-After` plus up to half again (at most 10 s), else after a back-off of 0.5 s
  doubling to 10 s with equal jitter; every such 503 is counted (so in ping-pong and
  throughput).
- Held streams (protocol 1.2): the same steps and rooms on a fresh server (also with
  `STREAM_MAX=3600`, so no stream ends of age during the run; `STREAM_HEARTBEAT` stays 15 s),
  each client holding a stream (`Accept: text/event-stream`) instead of a poll: streams are
  opened in batches, each once every stream of the last has its first line (`retry:`); with
  the worker idle, RSS is read, and "RSS per held stream" is also given as a multiple of the
  held-request floor. Then one envelope for each client as above, counted when its stream
  brings it.
- Idle: at {idle} clients, before that step's envelopes go out, the server's CPU is measured
  for {self.idle_seconds:g} s with nothing sent, as a share of one core: once with every client holding a poll
  (held polls) and once with every client holding a stream, whose heartbeats (a comment line
  every 15 s) are the only thing written; the heartbeats the clients read meanwhile are counted.
- The bench's stream client (`bench/client.py`: `Chunked`, `SseReader`, `Receiver`) reads the
  stream as it arrives on its raw connection: it undoes the chunked transfer encoding, cuts the
  events (stamping each piece with its arrival time), checks every event's id comes after the
  last, and when the server ends the stream cleanly opens the next at once on the same
  connection with `Last-Event-ID` (the last id seen, which acknowledges everything up to it),
  as a 1.2 client does; a `503` is retried after the back-off above.
- Ping-pong: {pingpong} pairs, fresh pairs each time, {self.warmup:g} s warm-up then
  {self.pingpong_seconds:g} s measured. A sends a {self.pingpong_bytes:,}-byte body to B; B's held poll returns, B
  polls again and sends it back; the round trip is timed from A starting its send to the
  last byte of A's poll answer. Each peer uses one connection for polls, one for sends.
  At each pair count, on the same server right after, the same with streaming receive: each
  peer keeps a stream open on its receive connection, B sends the pong as soon as the ping's
  event is read, and the round trip ends with the piece of A's stream that completes the pong.
- Throughput: {throughput} sender/receiver pairs, fresh each time; each sender sends
  {self.throughput_bytes}-byte bodies to its receiver back to back, each receiver long-polls with `after`
  (acks) and `limit=100`. Counted: distinct seqs in the poll answers that arrived within
  {self.throughput_seconds:g} s after a {self.warmup:g} s warm-up. The best pair count is the result. Two clients:
  one envelope per request, each sender sending again as soon as its send is answered; and
  batching as `static/signaling.js` does under protocol 1.1 (and peer-bench's project adapter):
  each sender keeps {self.batch_window} envelopes sent and not yet received (peer-bench's window), with one send
  request in flight, what is sent meanwhile going as one batch `{{"messages": [...]}}` (up to 100;
  a lone envelope as a plain send) when it ends, each request with an `Idempotency-Key`; the
  receivers poll with the cursor in `Last-Event-ID`. Then, on the same server, both clients
  again with streaming receive (each receiver keeps a stream open, reopened at once when the
  server ends it, e.g. at half a mailbox unacknowledged; an envelope counts when the piece of
  the stream that completes it arrives), so each "streaming / polling" ratio is within one run.
  Then sends alone, to tell a stream's delivery from its send: the same senders, one envelope
  per request, to receivers that do not read, each sender stopping at 900 sends (below
  `MAILBOX_LIMIT`, so none is refused), for the same window or until every sender stopped;
  server CPU per send. Server CPU per delivered envelope is the server's CPU in the window
  over the envelopes delivered in it (a send and a delivery each); a stream's delivery alone
  is that, with one envelope per request, less its run's sends (and 429s) at the sends-alone
  CPU per send, over the envelopes delivered: a subtraction of two measurements, so noisy,
  and it includes the streams' reopening. Both as multiples of the floor.
- Call set-ups: {setups} calls at a time for {self.setup_seconds:g} s after a {self.warmup:g} s warm-up (longer, up to
  60 s more, until at least as many calls have completed in the window as run at a time), each call in a
  fresh room, as two pages with `static/signaling.js` (1.1, batching as above) make it: the caller
  joins and polls, the callee joins and polls; on `peer-joined` the caller sends an offer
  ({self.pingpong_bytes:,} bytes) and 10 ICE candidates ({self.candidate_bytes} bytes each, each its own `send()`:
  the offer goes alone, the candidates behind it as one batch); on the offer the callee sends its answer
  and 10 candidates the same way. Set-up time: from the caller's join to the last envelope
  arriving on either side. Then both abort their held poll and leave (`DELETE`). Requests per
  set-up counts every request of a call, join to leave.
- The cost of `REDIS_WAIT_REPLICAS=1` (Redis, 1 worker): a replica of the bench's Redis starts
  (the same binary, `--replicaof`, pinned to Redis's CPU; its CPU is metered as "replica") and the
  part waits until it is in sync (`INFO replication` on both sides). Two servers run side by side,
  one with `REDIS_WAIT_REPLICAS=0` and one with `1` (each round trip to Redis ends with `WAIT 1`;
  Redis's `INFO commandstats` must count some), and sends alone as above ({self.wait_pairs} senders,
  {self.wait_seconds:g} s after a {self.warmup:g} s warm-up) run on each in turn, {self.wait_rounds} rounds each,
  the order swapping every round (0 then 1, then 1 then 0, ...). Each setting's sends/s, server CPU per send
  and send latency p50 / p99 (a send's start to its answer, a 503's retries included) pool its
  rounds; the last row is 1 over 0."""


FULL = Plan(
    held_steps=(1_000, 5_000, 10_000, 15_000), room_size=50,
    pingpong_pairs=(1, 10, 100, 1_000), pingpong_seconds=5,
    throughput_pairs=(16, 64, 256), throughput_seconds=10,
    setup_calls=(1, 10, 100), setup_seconds=5, warmup=1, floor_seconds=5,
    idle_clients=10_000, idle_seconds=30,
)
QUICK = Plan(
    held_steps=(200, 1_000), room_size=50,
    pingpong_pairs=(1, 10), pingpong_seconds=1,
    throughput_pairs=(32,), throughput_seconds=1.5,
    setup_calls=(1, 10), setup_seconds=1, warmup=0.3, floor_seconds=1.5,
    idle_clients=1_000, idle_seconds=15, wait_rounds=2, wait_seconds=1.5, webhook_steady_seconds=8,
)
#: "floor" runs once, before the setups; the others once per setup ("pingpong", "throughput": every
#: client, polling and streaming)
PARTS = ("floor", "held", "streams", "pingpong", "throughput", "setups", "webhooks", "wait")

#: room for every held poll in one worker; the per-IP abuse limits off, as every client here is 127.0.0.1
SERVER_ENV = {
    "WORKER_CONNECTIONS": "20000",
    "JOINS_PER_IP_PER_MINUTE": "0", "SENDS_PER_PEER_PER_SECOND": "0", "PEERS_PER_IP": "0", "ROOMS_PER_IP": "0",
}
HELD_ENV = {"POLL_WAIT": str(scenarios.HELD_POLL_WAIT), "PEER_TTL": "300"}
#: streams live through the whole held-streams run; heartbeats stay at the default 15 s
STREAMS_ENV = dict(HELD_ENV, STREAM_MAX="3600", STREAM_HEARTBEAT="15")
POLL_WAIT = 25  # the server default, used by ping-pong and throughput


class Client(NamedTuple):
    """One way of loading the server in a series: a label for the log, a run, and its log line."""

    label: str
    run_one: Callable[[PinnedServer, int], Awaitable]
    describe: Callable[[object], str]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Bench:
    """Runs the plan over the setups: servers come and go, results stay."""

    def __init__(self, plan: Plan, args: argparse.Namespace, workdir: Path, code: Path):
        self.plan, self.args, self.workdir, self.code = plan, args, workdir, code
        self.redis: PinnedRedis | None = None
        self.floor_run: scenarios.Floor | None = None
        self.waited = 0.0  # seconds spent waiting for other processes to go quiet

    @contextlib.contextmanager
    def server(self, setup: Setup, env: dict[str, str] | None = None):
        """A fresh pinned gunicorn for one measurement (and an empty Redis)."""
        self.quiet()
        full_env = dict(SERVER_ENV, **(env or {}))
        if setup.backend == "redis":
            self.redis.flush()
            full_env["REDIS_URL"] = self.redis.url
        server = PinnedServer(self.workdir, full_env, setup.workers, self.args.server_cpu, self.code).start()
        try:
            yield server
        finally:
            server.stop(timeout=20)

    def quiet(self) -> None:
        """With --quiet-wait, wait for other processes to go quiet; warn when they are not."""
        started = time.monotonic()
        other = wait_for_quiet(self.args.quiet_wait)
        self.waited += time.monotonic() - started
        if other > 0.15:
            log(f"  warning: other processes use {other:.0%} of a core: figures will suffer")

    @contextlib.contextmanager
    def profiled(self, server: PinnedServer, name: str):
        """With --profile: py-spy records every worker (raw collapsed stacks) while the block runs."""
        if not self.args.profile:
            yield
            return
        spies = []
        for pid in server.worker_pids():
            out = Path(self.args.profile) / f"{name}-{pid}.txt"
            spies.append(subprocess.Popen(
                ["taskset", "-c", str(self.args.load_cpu), self.args.py_spy, "record", "--pid", str(pid),
                 "--format", "raw", "--rate", "200", "--nonblocking", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        time.sleep(1)
        try:
            yield
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
            for spy in spies:
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()

    def run(self, setup: Setup) -> dict[str, list]:
        plan, redis = self.plan, self.redis if setup.backend == "redis" else None
        slug = f"{setup.backend}-{setup.workers}w"
        result: dict[str, list] = {"errors": []}

        def held() -> dict[str, list]:
            log(f"== {setup.name}: held polls")
            with self.server(setup, HELD_ENV) as server:
                return {"held": asyncio.run(scenarios.held_polls(
                    server, redis, list(plan.held_steps), plan.room_size, log, plan.idle_clients, plan.idle_seconds))}

        def streams() -> dict[str, list]:
            log(f"== {setup.name}: held streams")
            with self.server(setup, STREAMS_ENV) as server:
                return {"streams": asyncio.run(scenarios.held_streams(
                    server, redis, list(plan.held_steps), plan.room_size, log, plan.idle_clients, plan.idle_seconds))}

        parts = {"held": held, "streams": streams,
                 "pingpong": lambda: self.ping_pong(setup, redis, slug, result["errors"]),
                 "throughput": lambda: self.throughput(setup, redis, slug, result["errors"]),
                 "setups": lambda: self.call_setups(setup, redis, slug, result["errors"]),
                 "webhooks": lambda: self.webhooks(setup),
                 "wait": lambda: self.wait(setup)}
        for part in self.args.parts:
            if part == "floor":
                continue
            try:
                result.update(parts[part]())
            except (BenchError, RuntimeError, OSError) as exc:
                # One part failing (a server that would not start, a run that broke off) leaves the others.
                log(f"  {part} failed: {exc}")
                result["errors"].append(f"{part}: {str(exc).splitlines()[0]}")
        return result

    def series(self, setup: Setup, slug: str, part: str, counts: tuple[int, ...], clients: dict[str, Client],
               errors: list[str], noun: str = "pairs") -> dict[str, list]:
        """One server, then for each count each client's `run_one(server, count)`, logged by `describe(run)`:
        {client key: its runs}. A client whose run fails is dropped for the rest of the series and its
        error added to `errors`; the others go on."""
        runs: dict[str, list] = {key: [] for key in clients}
        failed: set[str] = set()
        log(f"== {setup.name}: {part}")
        with self.server(setup) as server:
            for count in counts:
                for key, client in clients.items():
                    if key in failed:
                        continue
                    self.quiet()
                    label = f"{count} {noun}" + (f", {client.label}" if client.label else "")
                    try:
                        with self.profiled(server, f"{slug}-{key}-{count}"):
                            run = asyncio.run(client.run_one(server, count))
                    except BenchError as exc:
                        log(f"  {label}: failed: {exc}")
                        errors.append(f"{key}, {label}: {str(exc).splitlines()[0]}")
                        failed.add(key)
                        continue
                    log(f"  {label}: {client.describe(run)}")
                    runs[key].append(run)
        return runs

    def ping_pong(self, setup: Setup, redis: PinnedRedis | None, slug: str, errors: list[str]) -> dict[str, list]:
        """Polling and streaming receive on one server, one after the other at each pair count."""
        plan = self.plan

        def client(label: str, receive: str) -> Client:
            return Client(
                label,
                lambda server, pairs: scenarios.ping_pong(
                    server, redis, pairs, plan.pingpong_seconds, plan.warmup, plan.pingpong_bytes, POLL_WAIT,
                    tag=str(pairs), receive=receive,
                ),
                lambda run: f"p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, {run.samples} round trips,"
                            f" {cpu_text(run.cpu)}, retried: {run.failed or 'none'}",
            )

        return self.series(setup, slug, "ping-pong", plan.pingpong_pairs, {
            "pingpong": client("polling", "poll"),
            "pingpong_stream": client("streaming", "stream"),
        }, errors)

    def throughput(self, setup: Setup, redis: PinnedRedis | None, slug: str, errors: list[str]) -> dict[str, list]:
        """Both clients on one server, one after the other at each pair count."""
        plan = self.plan

        def client(label: str, window: int | None, receive: str = "poll") -> Client:
            answers = "poll answers/s" if receive == "poll" else "streams opened/s"
            return Client(
                label,
                lambda server, pairs: scenarios.throughput(
                    server, redis, pairs, plan.throughput_seconds, plan.warmup, plan.throughput_bytes, POLL_WAIT,
                    tag=f"{pairs}{'b' if window else ''}", window=window, receive=receive,
                ),
                lambda run: f"{run.per_second:,.0f} delivered/s, {run.sent / run.seconds:,.0f} sent/s in"
                            f" {run.sends / run.seconds:,.0f} sends/s, {run.polls / run.seconds:,.0f} {answers},"
                            f" {run.server_us_per_request:,.0f} µs server CPU per request"
                            f"{self.floor_text(run.server_us_per_request)}, {run.server_us_per_envelope:,.0f} µs per"
                            f" envelope delivered{self.floor_text(run.server_us_per_envelope)},"
                            f" {run.refused} refused, {cpu_text(run.cpu)}, retried: {run.failed or 'none'}",
            )

        sends = Client(
            "sends alone",
            lambda server, pairs: scenarios.sends_only(server, redis, pairs, plan.throughput_seconds, plan.warmup,
                                                       plan.throughput_bytes, tag=str(pairs)),
            lambda run: f"{run.per_second:,.0f} sends/s in {run.seconds:.1f} s, {run.server_us_per_send:,.0f} µs"
                        f" server CPU per send{self.floor_text(run.server_us_per_send)}, {cpu_text(run.cpu)},"
                        f" retried: {run.failed or 'none'}",
        )
        return self.series(setup, slug, "throughput", plan.throughput_pairs, {
            "throughput": client("one envelope per request, polling", None),
            "batched": client("batching client, polling", plan.batch_window),
            "throughput_stream": client("one envelope per request, streaming", None, "stream"),
            "batched_stream": client("batching client, streaming", plan.batch_window, "stream"),
            "sends": sends,
        }, errors)

    def call_setups(self, setup: Setup, redis: PinnedRedis | None, slug: str, errors: list[str]) -> dict[str, list]:
        plan = self.plan
        return self.series(setup, slug, "call set-ups", plan.setup_calls, {"setups": Client(
            "",
            lambda server, calls: scenarios.call_setups(
                server, redis, calls, plan.setup_seconds, plan.warmup, plan.pingpong_bytes, plan.candidate_bytes,
                POLL_WAIT, tag=str(calls),
            ),
            lambda run: f"{run.per_second:,.1f} set-ups/s, p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms,"
                        f" {run.requests_per_setup:.1f} requests per set-up, {run.server_us_per_request:,.0f} µs"
                        f" server CPU per request{self.floor_text(run.server_us_per_request)}, {cpu_text(run.cpu)},"
                        f" retried: {run.failed or 'none'}",
        )}, errors, noun="calls")

    def webhooks(self, setup: Setup) -> dict[str, list]:
        """Joins and leaves per second with webhooks off and on, and deliveries per second (bench/webhooks.py)."""
        log(f"== {setup.name}: webhooks")
        self.quiet()
        run = asyncio.run(webhooks.measure(lambda env: self.server(setup, env), self.plan.webhook_connections,
                                           self.plan.webhook_seconds, self.plan.webhook_steady_seconds))
        steady = run.steady
        log(f"  joins+leaves/s: {run.off.per_second:,.0f} off, {run.on.per_second:,.0f} on"
            f" (webhooks cost {run.cost:.0%}); every event delivered {run.caught_up:.1f} s after the load's end;"
            f" {run.per_second:,.0f} deliveries/s draining a backlog of {run.backlog:,}; at {steady.rate:.0f}"
            f" joins+leaves/s for {steady.seconds:.0f} s the queue went {steady.depth_start} → {steady.depth_end}"
            f" (at most {steady.depth_most}): {'held' if steady.held else 'GREW'}")
        return {"webhooks": [run]}

    def wait(self, setup: Setup) -> dict[str, list]:
        """Sends alone with REDIS_WAIT_REPLICAS=0 and =1, rounds alternating, a replica in sync (Redis, 1 worker)."""
        if setup != Setup("redis", 1):
            log(f"== {setup.name}: REDIS_WAIT_REPLICAS: measured on redis, 1 worker only")
            return {}
        plan = self.plan
        log(f"== {setup.name}: REDIS_WAIT_REPLICAS 0 and 1, {plan.wait_pairs} senders, sends alone")
        rounds: dict[int, list[scenarios.Sends]] = {0: [], 1: []}
        with (self.redis.replica() as replica,
              self.server(setup, {"REDIS_WAIT_REPLICAS": "0"}) as plain,
              self.server(setup, {"REDIS_WAIT_REPLICAS": "1"}) as waiting):
            log(f"  a replica in sync on port {replica.port}")
            waits = self.redis.calls("WAIT")
            order = [(0, plain), (1, waiting)]
            for n in range(plan.wait_rounds):
                for replicas, server in order:
                    self.quiet()
                    run = asyncio.run(scenarios.sends_only(server, self.redis, plan.wait_pairs, plan.wait_seconds,
                                                           plan.warmup, plan.throughput_bytes, tag=f"w{replicas}-{n}"))
                    log(f"  round {n + 1}, REDIS_WAIT_REPLICAS={replicas}: {run.per_second:,.0f} sends/s,"
                        f" {run.server_us_per_send:,.0f} µs server CPU per send, p50 / p99"
                        f" {run.latency_ms(0.5):.2f} / {run.latency_ms(0.99):.2f} ms, {cpu_text(run.cpu)},"
                        f" retried: {run.failed or 'none'}")
                    rounds[replicas].append(run)
                order.reverse()  # whichever went second goes first: drift falls on both
            waits = self.redis.calls("WAIT") - waits
        if not waits:
            raise BenchError("the REDIS_WAIT_REPLICAS=1 server sent no WAIT: nothing of its cost was measured")
        log(f"  Redis ran WAIT {waits:,} times during the rounds (one per round trip of the REDIS_WAIT_REPLICAS=1"
            f" server), which answered {sum(run.sends for run in rounds[1]):,} sends in its windows")
        return {"wait": [scenarios.Wait(rounds)]}

    def floor(self) -> scenarios.Floor:
        """The bare WSGI app on the service's worker settings: what the stack costs per request."""
        plan = self.plan
        log("== floor: a bare WSGI app on one gevent worker")
        self.quiet()
        server = FloorServer(self.workdir, SERVER_ENV, 1, self.args.server_cpu).start()
        try:
            run = asyncio.run(scenarios.floor(server, plan.floor_connections, plan.floor_seconds, plan.warmup,
                                              plan.throughput_bytes))
            log(f"  {run.per_second:,.0f} requests/s, {run.server_us_per_request:,.0f} µs server CPU per request,"
                f" {cpu_text(run.cpu)}")
            run.held, run.rss_per_held_kib = asyncio.run(scenarios.held_floor(server, max(plan.held_steps)))
            log(f"  {run.held:,} requests held: {run.rss_per_held_kib:.1f} KiB RSS per held request")
        finally:
            server.stop(timeout=20)
        self.floor_run = run
        return run

    def floor_text(self, us: float) -> str:
        """" (2.9× floor)" for `us` µs of server CPU, when the floor was measured."""
        if self.floor_run is None or not self.floor_run.server_us_per_request:
            return ""
        return f" ({us / self.floor_run.server_us_per_request:.1f}× floor)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small run (a few minutes) for smoke tests")
    parser.add_argument("--write", metavar="PATH", help="write the results to this Markdown file")
    parser.add_argument("--setups", default=",".join(f"{s.backend}-{s.workers}" for s in SETUPS),
                        help="comma-separated BACKEND-WORKERS (default: %(default)s)")
    parser.add_argument("--only", default=",".join(PARTS),
                        help="comma-separated parts to run, of %(default)s")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU for gunicorn (default: %(default)s)")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU for this load process (default: %(default)s)")
    parser.add_argument("--redis-cpu", type=int, default=1, help="CPU for redis-server (default: %(default)s)")
    parser.add_argument("--quiet-wait", type=float, default=0, metavar="S",
                        help="before each measurement wait up to S seconds for other processes to go quiet")
    parser.add_argument("--commit", metavar="REV",
                        help="run the server code of this commit (git archive) instead of the working tree")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (printed: where)")
    parser.add_argument("--profile", metavar="DIR",
                        help="record the workers with py-spy during ping-pong, throughput and call set-ups"
                             " (needs py-spy)")
    args = parser.parse_args(argv)
    args.parts = [part.strip() for part in args.only.split(",")]
    if not set(args.parts) <= set(PARTS):
        parser.error(f"--only takes some of {', '.join(PARTS)}")
    args.py_spy = None
    if args.profile:
        args.py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(args.py_spy).exists():
            parser.error("--profile needs py-spy: `.venv/bin/pip install py-spy`")
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    setups = []
    for item in args.setups.split(","):
        backend, _, workers = item.strip().partition("-")
        setups.append(Setup(backend, int(workers or 1)))
    needed = max(plan.held_steps) + 4 * max(plan.pingpong_pairs) + 200
    soft, hard = raise_open_files(needed)
    pin_self(args.load_cpu)
    log(f"bench: open files {soft} (hard {hard}); load on CPU {args.load_cpu}, server on CPU {args.server_cpu},"
        f" redis on CPU {args.redis_cpu}{' (quick)' if args.quick else ''}")
    if args.profile:
        log(f"bench: profiling with py-spy into {args.profile}: figures are slowed by the profiler")

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="signaling-bench-"))
    if args.commit:
        code = workdir / "code"
        code_label = checkout(args.commit, code)
    else:
        code, code_label = ROOT, working_tree()
    log(f"bench: server code: {code_label}")
    bench = Bench(plan, args, workdir, code)
    results: report.Results = {}
    errors: list[str] = []
    try:
        if "floor" in args.parts:
            try:
                bench.floor()
            except (BenchError, RuntimeError, OSError) as exc:
                log(f"  floor failed: {exc}")
                errors.append(f"floor: {str(exc).splitlines()[0]}")
        if any(s.backend == "redis" for s in setups):
            bench.redis = PinnedRedis(workdir, args.redis_cpu).start()
        for setup in setups:
            results[setup] = bench.run(setup)
    except BaseException:
        log(f"bench: failed; server logs kept in {workdir}")
        raise
    finally:
        if bench.redis is not None:
            bench.redis.stop()
    if args.keep_logs:
        log(f"bench: server logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.monotonic() - started
    text = report.table(results, report.rows(plan.held_steps, plan.pingpong_pairs, plan.throughput_pairs,
                                             plan.setup_calls, bench.floor_run, plan.idle_clients, plan.wait_pairs),
                        bench.floor_run, errors)
    print(text)
    log(f"bench: done in {elapsed:.0f} s ({bench.waited:.0f} s of it waiting for other processes to go quiet)")
    if args.write:
        command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
        target = Path(args.write)
        doc = report.document(results, text, {"server code": code_label, **versions()}, plan.describe(), command,
                              args.quick, elapsed, bench.waited, target.read_text() if target.exists() else "")
        report.write(target, doc)
        log(f"bench: wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
