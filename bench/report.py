"""The floor line, the one table of results, its targets, and docs/benchmarks.md."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

from .procs import Setup
from .scenarios import CallSetups, Floor, HeldStep, PingPong, Sends, Throughput, Wait
from .webhooks import Webhooks

#: the setup the targets are for: one gevent worker pinned to one core, Redis backend
TARGET_SETUP = Setup("redis", 1)

#: setup -> {"held": [HeldStep], "streams": [HeldStep], "pingpong": [PingPong], "pingpong_stream": [PingPong],
#:           "throughput": [Throughput], "batched": [Throughput], "throughput_stream": [Throughput],
#:           "batched_stream": [Throughput], "sends": [Sends], "setups": [CallSetups], "wait": [Wait],
#:           "webhooks": [Webhooks],
#:           "errors": [str]}
Results = dict[Setup, dict[str, list]]


class Row:
    """One line of the table: a label, a target (text and test) and how to show each setup's figure."""

    def __init__(self, label: str, show: Callable[[dict], str | None], target: str = "",
                 value: Callable[[dict], float | None] | None = None, test: Callable[[float], bool] | None = None):
        self.label, self.show, self.target, self.value, self.test = label, show, target, value, test

    def verdict(self, results: Results) -> str:
        if self.test is None or TARGET_SETUP not in results:
            return ""
        value = self.value(results[TARGET_SETUP])
        if value is None:
            return "not measured"
        return "met" if self.test(value) else "**missed**"


def _held(result: dict, clients: int, part: str = "held") -> HeldStep | None:
    return next((s for s in result.get(part, []) if s.clients == clients), None)


def _pp(result: dict, pairs: int, part: str = "pingpong") -> PingPong | None:
    return next((p for p in result.get(part, []) if p.pairs == pairs), None)


def _sends(result: dict, pairs: int) -> Sends | None:
    return next((s for s in result.get("sends", []) if s.pairs == pairs), None)


def ratio(a: float | None, b: float | None) -> str:
    """" (0.45× polling)": `a` over `b`, when both were measured."""
    return f" ({a / b:.2f}× polling)" if a and b else ""


def per_delivery(result: dict, pairs: int, floor: Floor | None) -> str | None:
    """Server CPU per send (sends alone), and per envelope delivered on a stream less its send."""
    sends, streamed = _sends(result, pairs), _tp(result, pairs, "throughput_stream")
    if sends is None or streamed is None or not sends.sends:
        return None
    return (per_request(sends.server_us_per_send, floor) + " / "
            + per_request(streamed.server_us_per_delivery(sends.server_us_per_send), floor))


def _idle(result: dict, clients: int, part: str) -> str | None:
    step = _held(result, clients, part)
    if step is None or step.idle is None:
        return None
    text = f"{step.idle.cpu.get('server', 0.0) * 100:.1f} % over {step.idle.seconds:g} s"
    if step.idle.heartbeats is not None:
        text += f" ({step.idle.heartbeats:,} heartbeats read)"
    return text


def _best(result: dict, part: str = "throughput") -> Throughput | None:
    runs = result.get(part, [])
    return max(runs, key=lambda t: t.per_second) if runs else None


def _tp(result: dict, pairs: int, part: str = "throughput") -> Throughput | None:
    return next((t for t in result.get(part, []) if t.pairs == pairs), None)


def _cs(result: dict, calls: int) -> CallSetups | None:
    return next((c for c in result.get("setups", []) if c.calls == calls), None)


def _wait(result: dict) -> Wait | None:
    return next(iter(result.get("wait", [])), None)


def wait_cost(wait: Wait) -> str | None:
    """REDIS_WAIT_REPLICAS=1 over 0: sends/s, server CPU per send, send p50 and p99, e.g. "0.80× / 1.10× / ..."."""
    pairs = [(wait.per_second(1), wait.per_second(0)), (wait.server_us_per_send(1), wait.server_us_per_send(0)),
             (wait.latency_ms(1, 0.5), wait.latency_ms(0, 0.5)), (wait.latency_ms(1, 0.99), wait.latency_ms(0, 0.99))]
    if not all(b for _, b in pairs):
        return None
    return " / ".join(f"{a / b:.2f}×" for a, b in pairs) + f" ({len(wait.rounds[1])} and {len(wait.rounds[0])} rounds)"


def _wh(result: dict) -> Webhooks | None:
    return next(iter(result.get("webhooks", [])), None)


def per_request(us: float, floor: Floor | None) -> str:
    """Server CPU per request, and as a multiple of the floor's when there is one: "345 µs (2.9× floor)"."""
    text = f"{us:,.0f} µs"
    if floor is not None and floor.server_us_per_request:
        text += f" ({us / floor.server_us_per_request:.1f}× floor)"
    return text


def floor_line(floor: Floor | None) -> str:
    if floor is None:
        return "Floor: not measured (every \"× floor\" below is missing)."
    return (f"Floor (`bench/floor.py`: a bare WSGI app answering 12 bytes, one gevent worker, the service's worker"
            f" settings): {floor.per_second:,.0f} requests/s, {per_request(floor.server_us_per_request, None)} of"
            f" server CPU per request (CPU % server / redis / load / other: {_cpu(floor.cpu)}); holding"
            f" {floor.held:,} requests shaped as polls: {floor.rss_per_held_kib:.1f} KiB of RSS per held request.")


def per_held_poll(kib: float, floor: Floor | None) -> str:
    """RSS per held poll, and as a multiple of the bare app's per held request: "17.5 KiB (1.2× floor)"."""
    text = f"{kib:.1f} KiB"
    if floor is not None and floor.rss_per_held_kib:
        text += f" ({kib / floor.rss_per_held_kib:.1f}× floor)"
    return text


def _failures(failed: dict[str, int]) -> str:
    """What was refused and retried, e.g. " (12× poll 503)"."""
    return f" ({', '.join(f'{n:,}× {what}' for what, n in sorted(failed.items()))})" if failed else ""


def _cpu(shares: dict[str, float]) -> str:
    return " / ".join(f"{round(shares[k] * 100)}" if k in shares else "–" for k in ("server", "redis", "load", "other"))


def rows(held_steps, pingpong_pairs, throughput_pairs, setup_calls, floor: Floor | None,
         idle_clients: int = 0, wait_pairs: int = 0) -> list[Row]:
    out: list[Row] = []
    for n in held_steps:
        out.append(Row(
            f"held polls, {n:,} clients: held / answered (time to answer all)",
            lambda r, n=n: (s := _held(r, n)) and f"{s.held:,} / {s.answered:,} ({s.answer_seconds:.2f} s)"
            + _failures(s.failed),
        ))
    for n in held_steps:
        ten_k = n == 10_000
        out.append(Row(
            f"server RSS per held poll at {n:,}",
            lambda r, n=n: (s := _held(r, n)) and per_held_poll(s.rss_per_poll_kib, floor),
            "≤ 15 KiB" if ten_k else "",
            (lambda r, n=n: (s := _held(r, n)) and s.rss_per_poll_kib) if ten_k else None,
            (lambda v: v <= 15) if ten_k else None,
        ))
    redis_at = 5_000 if 5_000 in held_steps else held_steps[-1]
    out.append(Row(
        f"Redis connections of the server (`CLIENT LIST`, `signaling*`) at {redis_at:,} held polls",
        lambda r: (s := _held(r, redis_at)) and (str(s.redis_clients) if s.redis_clients is not None else "–"),
    ))
    for n in held_steps:
        out.append(Row(
            f"held streams, {n:,} clients: open / answered (time to answer all)",
            lambda r, n=n: (s := _held(r, n, "streams")) and f"{s.held:,} / {s.answered:,} ({s.answer_seconds:.2f} s)"
            + _failures(s.failed),
        ))
    for n in held_steps:
        ten_k = n == 10_000 and floor is not None and floor.rss_per_held_kib > 0
        out.append(Row(
            f"server RSS per held stream at {n:,}",
            lambda r, n=n: (s := _held(r, n, "streams")) and per_held_poll(s.rss_per_poll_kib, floor),
            "≤ 1.3× floor" if ten_k else "",
            (lambda r, n=n: (s := _held(r, n, "streams")) and s.rss_per_poll_kib / floor.rss_per_held_kib)
            if ten_k else None,
            (lambda v: v <= 1.3) if ten_k else None,
        ))
    if idle_clients:
        quick = " (a quick run's count)" if idle_clients < 10_000 else ""
        out.append(Row(
            f"server CPU, {idle_clients:,} idle held polls{quick}: % of one core",
            lambda r: _idle(r, idle_clients, "held"),
        ))
        out.append(Row(
            f"server CPU, {idle_clients:,} idle open streams, 15 s heartbeats{quick}: % of one core",
            lambda r: _idle(r, idle_clients, "streams"),
            "≤ 5 %" if idle_clients == 10_000 else "",
            (lambda r: (s := _held(r, idle_clients, "streams")) and s.idle and s.idle.cpu.get("server", 0.0) * 100)
            if idle_clients == 10_000 else None,
            (lambda v: v <= 5) if idle_clients == 10_000 else None,
        ))
    targets = {1: 1.5, 100: 50.0}
    for n in pingpong_pairs:
        limit = targets.get(n)
        out.append(Row(
            f"ping-pong 2 KB, {n:,} pair{'s' if n > 1 else ''}: round trip p50 / p99",
            lambda r, n=n: (p := _pp(r, n)) and f"{p.p50_ms:.2f} / {p.p99_ms:.2f} ms" + _failures(p.failed),
            f"p50 ≤ {limit:g} ms" if limit else "",
            (lambda r, n=n: (p := _pp(r, n)) and p.p50_ms) if limit else None,
            (lambda v, limit=limit: v <= limit) if limit else None,
        ))
        out.append(Row(
            f"ping-pong 2 KB, {n:,} pair{'s' if n > 1 else ''}, streaming receive: round trip p50 / p99"
            " (p50 streaming / polling)",
            lambda r, n=n: (p := _pp(r, n, "pingpong_stream")) and f"{p.p50_ms:.2f} / {p.p99_ms:.2f} ms"
            + ratio(p.p50_ms, (q := _pp(r, n)) and q.p50_ms) + _failures(p.failed),
        ))
    biggest = max(n for n in pingpong_pairs if n <= 100)
    out.append(Row(
        f"CPU % during ping-pong, {biggest} pairs: server / redis / load / other",
        lambda r: (p := _pp(r, biggest)) and _cpu(p.cpu),
    ))
    out.append(Row(
        f"CPU % during ping-pong, {biggest} pairs, streaming receive: server / redis / load / other",
        lambda r: (p := _pp(r, biggest, "pingpong_stream")) and _cpu(p.cpu),
    ))
    for n in throughput_pairs:
        out.append(Row(
            f"throughput, {n} senders → {n} receivers: delivered envelopes/s",
            lambda r, n=n: (t := _tp(r, n)) and f"{t.per_second:,.0f}"
            + (f" ({t.refused:,}× 429)" if t.refused else "") + _failures(t.failed),
        ))
    out.append(Row(
        "throughput, best: delivered envelopes/s",
        lambda r: (t := _best(r)) and f"{t.per_second:,.0f} ({t.pairs} pairs)",
        "≥ 6,000",
        lambda r: (t := _best(r)) and t.per_second,
        lambda v: v >= 6000,
    ))
    out.append(Row(
        "CPU % at best throughput: server / redis / load / other",
        lambda r: (t := _best(r)) and _cpu(t.cpu),
    ))
    out.append(Row(
        "most CPU % used by other processes in any ping-pong, throughput or call set-up window",
        lambda r: (shares := [run.cpu.get("other", 0.0) for part in STEADY_PARTS for run in r.get(part, [])])
        and f"{max(shares) * 100:.0f}",
    ))
    out.append(Row(
        "server CPU per request at best throughput (sends and polls)",
        lambda r: (t := _best(r)) and per_request(t.server_us_per_request, floor),
    ))
    for n in throughput_pairs:
        out.append(Row(
            f"throughput, batching client, {n} senders → {n} receivers: delivered envelopes/s"
            " (envelopes per send request / per poll answer)",
            lambda r, n=n: (t := _tp(r, n, "batched")) and f"{t.per_second:,.0f}"
            f" ({t.envelopes_per_send:.1f} / {t.envelopes_per_poll:.1f})"
            + (f" ({t.refused:,}× 429)" if t.refused else "") + _failures(t.failed),
        ))
    out.append(Row(
        "throughput, batching client, best: delivered envelopes/s",
        lambda r: (t := _best(r, "batched")) and f"{t.per_second:,.0f} ({t.pairs} pairs)",
    ))
    out.append(Row(
        "CPU % at best throughput, batching client: server / redis / load / other",
        lambda r: (t := _best(r, "batched")) and _cpu(t.cpu),
    ))
    out.append(Row(
        "server CPU per request at best throughput, batching client (sends and polls)",
        lambda r: (t := _best(r, "batched")) and per_request(t.server_us_per_request, floor),
    ))
    for part, client in (("throughput_stream", ""), ("batched_stream", "batching client, ")):
        polled = "throughput" if part == "throughput_stream" else "batched"
        for n in throughput_pairs:
            out.append(Row(
                f"throughput, {client}streaming receive, {n} senders → {n} receivers: delivered envelopes/s"
                " (streaming / polling)",
                lambda r, n=n, part=part, polled=polled: (t := _tp(r, n, part)) and f"{t.per_second:,.0f}"
                + ratio(t.per_second, (q := _tp(r, n, polled)) and q.per_second)
                + (f" ({t.refused:,}× 429)" if t.refused else "") + _failures(t.failed),
            ))
        out.append(Row(
            f"throughput, {client}streaming receive, best: delivered envelopes/s (streaming / polling, each its best)",
            lambda r, part=part, polled=polled: (t := _best(r, part)) and f"{t.per_second:,.0f} ({t.pairs} pairs)"
            + ratio(t.per_second, (q := _best(r, polled)) and q.per_second),
        ))
    for part, what in (("throughput", "polling"), ("throughput_stream", "streaming receive"),
                       ("batched", "batching client, polling"), ("batched_stream", "batching client, streaming")):
        out.append(Row(
            f"server CPU per envelope delivered at best throughput, {what} (its send and its delivery)",
            lambda r, part=part: (t := _best(r, part)) and per_request(t.server_us_per_envelope, floor),
        ))
    for n in throughput_pairs:
        out.append(Row(
            f"{n} pairs: server CPU per send (sends alone) / per envelope delivered on a stream, less its send",
            lambda r, n=n: per_delivery(r, n, floor),
        ))
    for n in setup_calls:
        out.append(Row(
            f"call set-ups, {n:,} at a time: set-ups/s, set-up time p50 / p99",
            lambda r, n=n: (c := _cs(r, n)) and f"{c.per_second:,.1f}/s, {c.p50_ms:.1f} / {c.p99_ms:.1f} ms"
            + _failures(c.failed),
        ))
    for n in setup_calls:
        out.append(Row(
            f"call set-ups, {n:,} at a time: requests per set-up (join to leave), server CPU per request",
            lambda r, n=n: (c := _cs(r, n)) and f"{c.requests_per_setup:.1f}, "
            + per_request(c.server_us_per_request, floor),
        ))
    if wait_pairs:
        for replicas in (0, 1):
            out.append(Row(
                f"REDIS_WAIT_REPLICAS={replicas}, a replica in sync, sends alone, {wait_pairs} senders: sends/s,"
                " server CPU per send, send p50 / p99",
                lambda r, replicas=replicas: (w := _wait(r)) and w.rounds.get(replicas) and (
                    f"{w.per_second(replicas):,.0f}/s, {per_request(w.server_us_per_send(replicas), floor)},"
                    f" {w.latency_ms(replicas, 0.5):.2f} / {w.latency_ms(replicas, 0.99):.2f} ms"
                    + _failures(w.failed(replicas))),
            ))
        out.append(Row(
            "REDIS_WAIT_REPLICAS=1 over 0, same run: sends/s / server CPU per send / send p50 / send p99",
            lambda r: (w := _wait(r)) and wait_cost(w),
        ))
    out.append(Row(
        "webhooks: joins+leaves/s, off / on (cost); every event delivered after the load's end within",
        lambda r: (w := _wh(r)) and f"{w.off.per_second:,.0f} / {w.on.per_second:,.0f} ({w.cost:.0%});"
        f" {w.caught_up:.1f} s",
        "cost ≤ 15 %",
        lambda r: (w := _wh(r)) and w.cost * 100,
        lambda v: v <= 15,
    ))
    out.append(Row(
        "webhooks: deliveries/s draining a backlog (its size)",
        lambda r: (w := _wh(r)) and f"{w.per_second:,.0f} ({w.backlog:,})",
    ))
    out.append(Row(
        "webhooks: queue at a steady 50 joins+leaves/s: start → end (most), events",
        lambda r: (w := _wh(r)) and f"{w.steady.depth_start} → {w.steady.depth_end} ({w.steady.depth_most})"
        f" over {w.steady.seconds:.0f} s at {w.steady.rate:.0f}/s",
        "does not grow",
        lambda r: (w := _wh(r)) and (1.0 if w.steady.held else 0.0),
        lambda v: v == 1.0,
    ))
    return out


#: the parts that load the server steadily over a window
STEADY_PARTS = ("pingpong", "pingpong_stream", "throughput", "batched", "throughput_stream", "batched_stream",
                "sends", "setups")


def table(results: Results, table_rows: list[Row], floor: Floor | None = None, errors: list[str] = ()) -> str:
    """The floor's line, then one table: a row per measure, a column per setup."""
    setups = list(results)
    head = ["measure", "target"] + [s.name for s in setups] + [f"target met ({TARGET_SETUP.name})"]
    lines = [floor_line(floor), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table_rows:
        cells = [row.label, row.target]
        cells += [row.show(results[s]) or "–" for s in setups]
        cells.append(row.verdict(results))
        lines.append("| " + " | ".join(cells) + " |")
    failures = [f"- {error}" for error in errors]
    failures += [f"- {setup.name}, {error}" for setup in setups for error in results[setup].get("errors", [])]
    if failures:
        lines += ["", "Parts that failed (their rows show –):", *failures]
    return "\n".join(lines)


NOTES = "## Notes"


def document(results: Results, table_text: str, versions: dict[str, str], plan_text: str, command: str,
             quick: bool, seconds: float, waited: float, old: str = "") -> str:
    """docs/benchmarks.md: when, on what, how, and the table; a `## Notes` section of `old` is kept."""
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = "\n".join(f"- {name}: {value}" for name, value in versions.items())
    warning = "\n**A quick run: small numbers, for smoke-testing only.**\n" if quick else ""
    notes = old[old.index(NOTES):] if NOTES in old else ""
    return f"""# Benchmarks

Measured by `{command.strip()}` on {when}, in {seconds / 60:.1f} minutes
({waited / 60:.1f} of them waiting for other processes on the machine to go quiet).
Every figure below is from that run. `make bench` measures again and prints the
table; `make bench WRITE=docs/benchmarks.md` rewrites this file (keeping its
"Notes" section).
{warning}
## Machine and versions

{machine}

## How

- The bench (`bench/`) starts everything itself: one `redis-server` (valkey) for
  the Redis setups, and for each measurement a fresh
  `gunicorn -c gunicorn.conf.py app:app` (gevent workers) under `taskset -c 0`.
  The load generator is one asyncio process pinned to CPU 1 (plain sockets, one
  small Protocol per connection); redis-server is pinned to CPU 1 too, so the
  worker has CPU 0 to itself. With 2 workers both share CPU 0.
- The memory backend runs with 1 worker only (the server refuses more without Redis).
- Server settings: the defaults, but `WORKER_CONNECTIONS=20000`; the per-IP abuse
  limits off (`JOINS_PER_IP_PER_MINUTE`, `SENDS_PER_PEER_PER_SECOND`, `PEERS_PER_IP`,
  `ROOMS_PER_IP` = 0), since every client here comes from 127.0.0.1; and for the
  held polls `POLL_WAIT=120`, `PEER_TTL=300`, so early clients stay held while later
  ones join. Access logging stays on (to a file), as `gunicorn.conf.py` sets it.
{plan_text}
- RSS is that of the worker process(es) (`/proc/<pid>/statm`), minus their RSS just
  after start, divided by the number of held polls (or streams): everything a worker keeps
  for a client (connection, greenlet, request, and for the memory backend the peer state).
- CPU % is the share of one core used during the measured window (`/proc/<pid>/stat`):
  server (all workers), redis-server, the load process, and "other": the rest of the
  machine on both CPUs, kernel included. Other work on this 2-core machine slows the
  server and the load, so a high "other" means the figures in that column are pessimistic.
- Targets are for one gevent worker on one core with the Redis backend; the last
  column compares that column with them.

## Results

{table_text}

{notes}"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
