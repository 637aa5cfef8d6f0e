"""The processes under test: gunicorn and redis-server pinned with taskset, and what /proc says of them."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.support.servers import ROOT, LiveServer, RedisServer, redis_server_binary

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclasses.dataclass(frozen=True)
class Setup:
    """One server configuration of the table: a backend and a number of gevent workers."""

    backend: str  # "memory" or "redis"
    workers: int

    @property
    def name(self) -> str:
        return f"{self.backend}, {self.workers} worker{'s' if self.workers > 1 else ''}"


SETUPS = (Setup("memory", 1), Setup("redis", 1), Setup("redis", 2))


def rss_kib(pid: int) -> int:
    """Resident set size of one process, KiB (/proc/<pid>/statm, field 2)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_KIB


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def demand_seconds(pid: int) -> float:
    """Time the main thread of `pid` ran or waited to run (/proc/<pid>/schedstat): busy even when starved."""
    with open(f"/proc/{pid}/schedstat") as f:
        ran, waited, _ = f.read().split()
    return (int(ran) + int(waited)) / 1e9


def machine_busy_seconds() -> float:
    """CPU time all CPUs spent busy so far (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(t) for t in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


class CpuMeter:
    """CPU use of some processes between `start()` and `stop()`, as a share of one core.

    "other" is what the rest of the machine used meanwhile (all CPUs, kernel
    included): other work on a 2-core machine disturbs every figure.
    """

    def __init__(self, pids: dict[str, list[int]]):
        self.pids = pids
        self.started: dict[str, float] = {}
        self.at = 0.0
        self.shares: dict[str, float] = {}

    def _totals(self) -> dict[str, float]:
        totals = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.pids.items()}
        totals["other"] = machine_busy_seconds() - sum(totals.values())
        return totals

    def start(self) -> CpuMeter:
        self.started = self._totals()
        self.at = time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.at
        ended = self._totals()
        self.shares = {name: max(0.0, ended[name] - self.started[name]) / elapsed for name in ended}
        return self.shares


class PinnedServer(LiveServer):
    """`gunicorn -c gunicorn.conf.py app:app` under `taskset -c CPU`: the master and its workers stay there."""

    def __init__(self, workdir: Path, env: dict[str, str], workers: int, cpu: int, code: Path = ROOT):
        super().__init__(workdir, env, workers)
        self.cpu, self.workers, self.code, self.workdir = cpu, workers, code, workdir

    def command(self) -> tuple[list[str], Path]:
        """The gunicorn command line and the directory it runs in."""
        return ["-c", "gunicorn.conf.py", "app:app"], self.code

    def start(self) -> PinnedServer:
        args, cwd = self.command()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["taskset", "-c", str(self.cpu), sys.executable, "-m", "gunicorn", *args],
                cwd=cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._healthy() and len(self.worker_pids()) == self.workers:
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"gunicorn did not come up in 30s\n{self.log.read_text()[-3000:]}")
        settle_cpu(self.worker_pids(), limit=10)
        return self

    def rss_kib(self) -> int:
        """RSS of the worker processes together (not the master), KiB."""
        return sum(rss_kib(pid) for pid in self.worker_pids())


class FloorServer(PinnedServer):
    """bench/floor.py's bare app on gunicorn with the service's worker settings: gevent workers, their
    `worker_connections` (from the same environment) and gunicorn.conf.py's keep-alive; nothing else
    of gunicorn.conf.py (no access log, no hooks). It runs outside the checkout, so that gunicorn does
    not load ./gunicorn.conf.py by itself."""

    KEEPALIVE = 75  # gunicorn.conf.py's `keepalive`

    def command(self) -> tuple[list[str], Path]:
        return [
            "--worker-class", "gevent", "--workers", str(self.workers),
            "--worker-connections", self.env.get("WORKER_CONNECTIONS", "10000"),
            "--keep-alive", str(self.KEEPALIVE), "--bind", f"127.0.0.1:{self.port}",
            "--graceful-timeout", "1",  # its held requests (floor.py's /hold/) never end by themselves
            "--pythonpath", str(ROOT), "bench.floor:app",
        ], self.workdir


def settle_cpu(pids: list[int], share: float = 0.05, window: float = 0.5, limit: float = 60) -> bool:
    """Wait until `pids` want less than `share` of a core over `window` s (at most `limit` s); True if so.

    "Want" counts time spent waiting for a CPU too, so a worker starved by
    other processes does not pass for an idle one.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = sum(demand_seconds(pid) for pid in pids)
        time.sleep(window)
        if (sum(demand_seconds(pid) for pid in pids) - before) / window < share:
            return True
    return False


def wait_for_quiet(limit: float, share: float = 0.15, window: float = 0.25) -> float:
    """Wait up to `limit` s until the machine's other work is below `share` of a core; that share."""
    deadline = time.monotonic() + limit
    while True:
        before = machine_busy_seconds()
        time.sleep(window)
        other = (machine_busy_seconds() - before) / window
        if other < share or time.monotonic() >= deadline:
            return other


class PinnedRedis(RedisServer):
    """redis-server (valkey-server) with every thread pinned to one CPU."""

    def __init__(self, workdir: Path, cpu: int):
        super().__init__(workdir)
        self.cpu = cpu
        self.replicas: list[PinnedRedis] = []  # running now, metered beside it

    def start(self, *options: str) -> PinnedRedis:
        super().start(*options)
        subprocess.run(["taskset", "-a", "-c", "-p", str(self.cpu), str(self.process.pid)],
                       check=True, capture_output=True)
        return self

    @contextlib.contextmanager
    def replica(self, timeout: float = 30):
        """A replica of this server (`--replicaof`, the same binary, pinned to the same CPU), yielded once it
        is in sync (`in_sync`); stopped after."""
        replica = PinnedRedis(self.workdir, self.cpu).start("--replicaof", "127.0.0.1", str(self.port))
        self.replicas.append(replica)
        try:
            deadline = time.monotonic() + timeout
            while not self.in_sync(replica):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the replica on port {replica.port} was not in sync within {timeout:g} s")
                time.sleep(0.05)
            yield replica
        finally:
            self.replicas.remove(replica)
            replica.stop()

    def in_sync(self, replica: PinnedRedis) -> bool:
        """INFO replication on both sides: the replica's link is up and done syncing, and the primary
        counts it online with every byte it has written so far."""
        with self.client() as primary, replica.client() as other:
            ours, theirs = primary.info("replication"), other.info("replication")
        if theirs.get("master_link_status") != "up" or theirs.get("master_sync_in_progress"):
            return False
        listed = [ours.get(f"slave{i}", {}) for i in range(ours.get("connected_slaves", 0))]
        return any(s.get("port") == replica.port and s.get("state") == "online"
                   and s.get("offset") == ours["master_repl_offset"] for s in listed)

    def calls(self, command: str) -> int:
        """How many times this server has run `command` since it started (INFO commandstats)."""
        with self.client() as client:
            return client.info("commandstats").get(f"cmdstat_{command.lower()}", {}).get("calls", 0)

    def signaling_clients(self) -> int:
        """Connections whose client name starts with `signaling` (CLIENT LIST)."""
        with self.client() as client:
            return sum(1 for c in client.client_list() if c.get("name", "").startswith("signaling"))


def pin_self(cpu: int) -> None:
    """Pin this (load) process to one CPU, as `taskset -c CPU` would."""
    os.sched_setaffinity(0, {cpu})


def raise_open_files(needed: int) -> tuple[int, int]:
    """Raise the soft open-files limit up to the hard one; fail early if `needed` will not fit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, needed + 1000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    if soft < needed:
        raise SystemExit(f"bench: needs {needed} open files, the limit is {soft} (hard {hard}): raise `ulimit -Hn`")
    return soft, hard


def checkout(commit: str, into: Path) -> str:
    """Extract the server code of `commit` into `into` (git archive: the repository is left as it is)."""
    full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", commit],
                          check=True, capture_output=True, text=True).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", full], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {commit} failed")
    return f"commit {full}"


def working_tree() -> str:
    """What the server code in the working tree is: its commit, and whether it has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "signaling", "app.py", "gunicorn.conf.py", "requirements.txt")
    return f"working tree at commit {git('rev-parse', '--short', 'HEAD')}" + (
        " with uncommitted changes" if dirty else ""
    )


def versions() -> dict[str, str]:
    """Versions of what runs: Python, gunicorn, gevent, Flask, redis-py, redis-server; CPU and kernel."""
    from importlib.metadata import version

    server = subprocess.run([redis_server_binary(), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"(\w+) server v=(\S+)", server)
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "Python": platform.python_version(),
        "gunicorn": version("gunicorn"),
        "gevent": version("gevent"),
        "greenlet": version("greenlet"),
        "Flask": version("flask"),
        "redis-py": version("redis"),
        "redis-server": f"{match.group(1)} {match.group(2)}" if match else server.strip(),
        "CPU": f"{cpu} ({os.cpu_count()} cores)",
        "kernel": platform.release(),
    }

