"""A terminal peer for trying the service by hand: `python -m signaling.client ROOM [--url URL] [--peer-id ID]`.

Every envelope that arrives is printed to stdout as one JSON line. Each line
typed is sent: `<to> <type> [json data]`, or `* <type> [json data]` to
broadcast. What the client itself has to say (joined, how it receives, sent,
errors) goes to stderr as `#` lines, so stdout stays pure JSON. End of input
(Ctrl-D) or Ctrl-C leaves the room.

Before joining it asks the server for /healthz, so that a server that does
not answer is one line at once (with the reason), then a countdown to the
next try; it exits with status 1 when the server never answered within
`--retry-for` seconds, or at Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time

import httpx

from . import RECEIVE_MODES, Session, SignalingError, join

#: Seconds a try to reach the server may take: so that one that does not answer is said within 2 s.
PROBE_TIMEOUT = 1.5
#: Seconds between tries while the server does not answer: 1, 2, 4, then 5 s each.
RETRY_DELAYS = (1, 2, 4, 5)

#: What the notes say for each reason the session gives for a change of `receive_mode`.
RECEIVE_REASONS = {
    "stream-open": "one open response (Server-Sent Events)",
    "receive-option": "as asked",
    "server-sends-json": "the server does not stream",
    "no-first-byte": "no byte of the stream came in time (a buffering proxy?); streaming again in 5 min",
}


def parse_line(line: str) -> tuple[str, str, object]:
    """`<to> <type> [json]` -> (to, type, data); raises ValueError with what is wrong."""
    parts = line.strip().split(maxsplit=2)
    if len(parts) < 2:
        raise ValueError("type `<to> <type> [json data]`, or `* <type> [json data]` to broadcast")
    data = json.loads(parts[2]) if len(parts) == 3 else None
    return parts[0], parts[1], data


def note(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def default_url() -> str:
    """The service as `make run` starts it: localhost, on $PORT (8000)."""
    return f"http://localhost:{os.environ.get('PORT') or 8000}"


def with_scheme(url: str) -> str:
    """`localhost:8000` means http://localhost:8000 (httpx would refuse it as an unknown protocol)."""
    return url if "://" in url else f"http://{url}"


async def wait_for_server(url: str, retry_for: float) -> bool:
    """True once the server gives any HTTP answer to /healthz; False when it gave none for `retry_for` seconds.

    Each failed try is one line naming the reason and the wait before the next; on a terminal the
    wait counts down in place.
    """
    deadline = time.monotonic() + retry_for
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT) as http:
        for attempt in range(1_000_000):
            try:
                await http.get(f"{url.rstrip('/')}/healthz")
                return True
            except httpx.HTTPError as error:
                reason = why_no_answer(error)
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            if time.monotonic() + delay > deadline:
                note(f"{url} does not answer ({reason}); giving up")
                return False
            await count_down(f"{url} does not answer ({reason}); trying again in", delay)
    return False


def why_no_answer(error: httpx.HTTPError) -> str:
    """The root of a failed try, in a few words: "connection refused", "Name or service not known", ..."""
    if isinstance(error, httpx.TimeoutException):
        return f"nothing within {PROBE_TIMEOUT:g} s"
    cause: BaseException = error
    while (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    return getattr(cause, "strerror", None) or str(cause) or type(cause).__name__


async def count_down(text: str, seconds: int) -> None:
    """`# text N s`, then on a terminal the same line rewritten each second; elsewhere one line."""
    if not sys.stderr.isatty():
        note(f"{text} {seconds} s (Ctrl-C gives up)")
        await asyncio.sleep(seconds)
        return
    for left in range(seconds, 0, -1):
        print(f"\r\033[K# {text} {left} s (Ctrl-C gives up)", end="", file=sys.stderr, flush=True)
        await asyncio.sleep(1)
    print("\r\033[K", end="", file=sys.stderr, flush=True)


def note_receive_mode(mode: str, reason: str) -> None:
    note(f"receiving by {'stream' if mode == 'stream' else 'polling'}: {RECEIVE_REASONS.get(reason, reason)}")


def read_lines(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue) -> None:
    """Feed stdin's lines to the loop, then None; a thread, since stdin may be a file, a pipe or a tty."""
    for line in sys.stdin:
        loop.call_soon_threadsafe(lines.put_nowait, line)
    loop.call_soon_threadsafe(lines.put_nowait, None)


async def print_envelopes(session: Session) -> None:
    async for envelope in session:
        print(json.dumps(envelope), flush=True)


async def send_lines(session: Session, lines: asyncio.Queue) -> None:
    """Send each typed line, one after another so that they arrive in the order typed, until end of input."""
    while (line := await lines.get()) is not None:
        if line.strip():
            await send_line(session, line)


async def send_line(session: Session, line: str) -> None:
    try:
        to, kind, data = parse_line(line)
    except ValueError as error:
        note(f"not sent: {error}")
        return
    try:
        if to == "*":
            note(f"broadcast: {json.dumps(await session.broadcast(kind, data))}")
        else:
            note(f"sent to {to}: seq {await session.send(to, kind, data)}")
    except SignalingError as error:
        note(f"not sent to {to}: {error} ({error.code})")


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m signaling.client", description=__doc__.split("\n\n")[0])
    parser.add_argument("room")
    parser.add_argument("--url", type=with_scheme, default=default_url(),
                        help="the service; http:// unless it names a scheme (default: %(default)s, from $PORT)")
    parser.add_argument("--peer-id", help="this peer's id (default: the server picks one)")
    parser.add_argument("--ticket", help="a join ticket, when the service requires them")
    parser.add_argument("--receive", choices=RECEIVE_MODES, default="auto",
                        help="stream, poll, or stream and fall back to polls (default: %(default)s)")
    parser.add_argument("--retry-for", type=float, default=60, metavar="SECONDS",
                        help="how long to keep trying a server that does not answer (default: %(default)s; 0: once)")
    args = parser.parse_args(argv)

    if not await wait_for_server(args.url, args.retry_for):
        return 1
    try:
        session = await join(args.url, args.room, peer_id=args.peer_id, ticket=args.ticket, receive=args.receive,
                             on_receive_mode=note_receive_mode)
    except SignalingError as error:
        note(f"could not join {args.room}: {error} ({error.code})")
        return 1
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=read_lines, args=(loop, lines), daemon=True).start()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    stopped = asyncio.create_task(stop.wait())

    async with session:
        peers = ", ".join(sorted(session.peers)) or "nobody yet"
        note(f"joined {session.room} as {session.peer_id}; here: {peers}")
        printer = asyncio.create_task(print_envelopes(session))
        sender = asyncio.create_task(send_lines(session, lines))
        await asyncio.wait({sender, stopped, printer}, return_when=asyncio.FIRST_COMPLETED)
        sender.cancel()
        note(f"leaving {session.room}")
    await asyncio.gather(printer, return_exceptions=True)
    if session.error:
        note(f"disconnected: {session.error} ({session.error.code})")
        return 1
    return 0


def run() -> int:
    """main(), with Ctrl-C before the join (while the server does not answer) an exit with status 1."""
    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        note("stopped before the server answered")
        return 1


if __name__ == "__main__":
    sys.exit(run())
