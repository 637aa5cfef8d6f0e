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
from pathlib import Path

from . import report, scenarios
from .client import BenchError
from .procs import (
    ROOT,
    SETUPS,
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


@dataclasses.dataclass(frozen=True)
class Plan:
    """How big each measurement is."""

    held_steps: tuple[int, ...]
    room_size: int
    pingpong_pairs: tuple[int, ...]
    pingpong_seconds: float
    throughput_pairs: tuple[int, ...]
    throughput_seconds: float
    warmup: float
    pingpong_bytes: int = 2048
    throughput_bytes: int = 256

    def describe(self) -> str:
        """The method, as Markdown list items."""
        steps = ", ".join(f"{n:,}" for n in self.held_steps)
        pingpong = ", ".join(f"{n:,}" for n in self.pingpong_pairs)
        throughput = ", ".join(f"{n:,}" for n in self.throughput_pairs)
        return f"""- Held polls: clients step up through {steps}, in rooms of {self.room_size}. Each client is
  one connection: it joins, reads its `peer-joined` events, then holds a poll (polls are
  started in batches, each once the server has taken in the last). With every poll held
  and the worker idle, RSS is read; then each room's first member broadcasts and its
  second sends to the first, and the clients whose poll brings that envelope are counted.
  A client whose poll (or send) is answered 503 retries as `static/signaling.js` does:
  after the server's `Retry-After` plus up to half again (at most 10 s), else after a back-off of 0.5 s
  doubling to 10 s with equal jitter; every such 503 is counted (so in ping-pong and
  throughput).
- Ping-pong: {pingpong} pairs, fresh pairs each time, {self.warmup:g} s warm-up then
  {self.pingpong_seconds:g} s measured. A sends a {self.pingpong_bytes:,}-byte body to B; B's held poll returns, B
  polls again and sends it back; the round trip is timed from A starting its send to the
  last byte of A's poll answer. Each peer uses one connection for polls, one for sends.
- Throughput: {throughput} sender/receiver pairs, fresh each time; each sender sends
  {self.throughput_bytes}-byte bodies to its receiver back to back, each receiver long-polls with `after`
  (acks) and `limit=100`. Counted: distinct seqs in the poll answers that arrived within
  {self.throughput_seconds:g} s after a {self.warmup:g} s warm-up. The best pair count is the result."""


FULL = Plan(
    held_steps=(1_000, 5_000, 10_000, 15_000), room_size=50,
    pingpong_pairs=(1, 10, 100, 1_000), pingpong_seconds=5,
    throughput_pairs=(16, 64, 256), throughput_seconds=10, warmup=1,
)
QUICK = Plan(
    held_steps=(200, 500), room_size=50,
    pingpong_pairs=(1, 10), pingpong_seconds=1,
    throughput_pairs=(32,), throughput_seconds=1.5, warmup=0.3,
)
PARTS = ("held", "pingpong", "throughput")

#: room for every held poll in one worker; the per-IP abuse limits off, as every client here is 127.0.0.1
SERVER_ENV = {
    "WORKER_CONNECTIONS": "20000",
    "JOINS_PER_IP_PER_MINUTE": "0", "SENDS_PER_PEER_PER_SECOND": "0", "PEERS_PER_IP": "0", "ROOMS_PER_IP": "0",
}
HELD_ENV = {"POLL_WAIT": str(scenarios.HELD_POLL_WAIT), "PEER_TTL": "300"}
POLL_WAIT = 25  # the server default, used by ping-pong and throughput


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cpu_text(shares: dict[str, float]) -> str:
    return "CPU " + ", ".join(f"{name} {share:.0%}" for name, share in shares.items())


class Bench:
    """Runs the plan over the setups: servers come and go, results stay."""

    def __init__(self, plan: Plan, args: argparse.Namespace, workdir: Path, code: Path):
        self.plan, self.args, self.workdir, self.code = plan, args, workdir, code
        self.redis: PinnedRedis | None = None
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

        def held() -> list:
            log(f"== {setup.name}: held polls")
            with self.server(setup, HELD_ENV) as server:
                return asyncio.run(scenarios.held_polls(server, redis, list(plan.held_steps), plan.room_size, log))

        parts = {"held": held, "pingpong": lambda: self.ping_pong(setup, redis, slug),
                 "throughput": lambda: self.throughput(setup, redis, slug)}
        for part in self.args.parts:
            try:
                result[part] = parts[part]()
            except (BenchError, RuntimeError, OSError) as exc:
                # One part failing (a server that would not start, a run that broke off) leaves the others.
                log(f"  {part} failed: {exc}")
                result["errors"].append(f"{part}: {str(exc).splitlines()[0]}")
        return result

    def series(self, setup: Setup, slug: str, part: str, pair_counts: tuple[int, ...], run_one, describe) -> list:
        """One server, then `run_one(server, pairs)` for each pair count, each logged by `describe(run)`."""
        runs = []
        log(f"== {setup.name}: {part}")
        with self.server(setup) as server:
            for pairs in pair_counts:
                self.quiet()
                with self.profiled(server, f"{slug}-{part}-{pairs}"):
                    run = asyncio.run(run_one(server, pairs))
                log(f"  {pairs} pairs: {describe(run)}")
                runs.append(run)
        return runs

    def ping_pong(self, setup: Setup, redis: PinnedRedis | None, slug: str) -> list[scenarios.PingPong]:
        plan = self.plan
        return self.series(
            setup, slug, "ping-pong", plan.pingpong_pairs,
            lambda server, pairs: scenarios.ping_pong(
                server, redis, pairs, plan.pingpong_seconds, plan.warmup, plan.pingpong_bytes, POLL_WAIT,
                tag=str(pairs),
            ),
            lambda run: f"p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, {run.samples} round trips,"
                        f" {cpu_text(run.cpu)}, retried: {run.failed or 'none'}",
        )

    def throughput(self, setup: Setup, redis: PinnedRedis | None, slug: str) -> list[scenarios.Throughput]:
        plan = self.plan
        return self.series(
            setup, slug, "throughput", plan.throughput_pairs,
            lambda server, pairs: scenarios.throughput(
                server, redis, pairs, plan.throughput_seconds, plan.warmup, plan.throughput_bytes, POLL_WAIT,
                tag=str(pairs),
            ),
            lambda run: f"{run.per_second:,.0f} delivered/s, {run.sent / run.seconds:,.0f} sent/s,"
                        f" {run.polls / run.seconds:,.0f} poll answers/s, {run.server_us_per_request:,.0f} µs"
                        f" server CPU per request, {run.refused} refused, {cpu_text(run.cpu)},"
                        f" retried: {run.failed or 'none'}",
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small run (< 60 s) for smoke tests")
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
                        help="record the workers with py-spy during ping-pong and throughput (needs py-spy)")
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
    try:
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
    text = report.table(results, report.rows(plan.held_steps, plan.pingpong_pairs, plan.throughput_pairs))
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
