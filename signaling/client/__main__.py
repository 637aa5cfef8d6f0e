"""A terminal peer for trying the service by hand: `python -m signaling.client ROOM [--url URL] [--peer-id ID]`.

Every envelope that arrives is printed to stdout as one JSON line. Each line
typed is sent: `<to> <type> [json data]`, or `* <type> [json data]` to
broadcast. What the client itself has to say (joined, how it receives, sent,
errors) goes to stderr as `#` lines, so stdout stays pure JSON. End of input
(Ctrl-D) or Ctrl-C leaves the room.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading

from . import RECEIVE_MODES, Session, SignalingError, join

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
    parser.add_argument("--url", default="http://localhost:8000", help="the service (default: %(default)s)")
    parser.add_argument("--peer-id", help="this peer's id (default: the server picks one)")
    parser.add_argument("--ticket", help="a join ticket, when the service requires them")
    parser.add_argument("--receive", choices=RECEIVE_MODES, default="auto",
                        help="stream, poll, or stream and fall back to polls (default: %(default)s)")
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
