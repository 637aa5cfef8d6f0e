"""`python -m signaling.admin`: the server API (protocol 1.2) from a shell, for operators.

    export SIGNALING_SERVER_KEY=...            # one of the server's SERVER_API_KEYS
    python -m signaling.admin show demo
    python -m signaling.admin send demo hello '{"text": "back in 5"}' [--to alice]
    python -m signaling.admin remove demo mallory [--reason "spam"] [--ban 3600]
    python -m signaling.admin close demo

The service is `--url`, or `SIGNALING_URL`, or http://localhost:8000. The key
comes from the environment only, never from the command line, where other
users of the machine could read it (`ps`). Needs httpx alone, as the client.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from collections.abc import Sequence

import httpx

#: the environment variable that holds the server API key
KEY_VARIABLE = "SIGNALING_SERVER_KEY"
URL_VARIABLE = "SIGNALING_URL"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m signaling.admin",
        description=f"Call the signaling service's server API with the key in ${KEY_VARIABLE}.",
    )
    parser.add_argument("--url", default=os.environ.get(URL_VARIABLE) or "http://localhost:8000",
                        help=f"the service (default: ${URL_VARIABLE}, else http://localhost:8000)")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="list a room's members with their meta and join time")
    show.add_argument("room")
    send = commands.add_parser("send", help="send an envelope from @server to one member, or to every member")
    send.add_argument("room")
    send.add_argument("type", help="the envelope's type, such as notice")
    send.add_argument("data", nargs="?", default="null", help="its data as JSON (default null)")
    send.add_argument("--to", help="the member to send to (default: every member)")
    remove = commands.add_parser("remove", help="remove a member; --ban keeps its id out of the room")
    remove.add_argument("room")
    remove.add_argument("peer")
    remove.add_argument("--reason", help="told to the removed peer (1-200 characters)")
    remove.add_argument("--ban", type=float, help="seconds its id may not join the room again (0-86400)")
    close = commands.add_parser("close", help="remove every member of a room")
    close.add_argument("room")
    return parser


def request_for(args: argparse.Namespace) -> tuple[str, str, dict | None]:
    """(method, path, JSON body or None) of the server API call a command makes."""
    room = _q(args.room)
    if args.command == "show":
        return "GET", f"/server/rooms/{room}", None
    if args.command == "send":
        path = f"/server/rooms/{room}/peers/{_q(args.to)}/messages" if args.to else f"/server/rooms/{room}/messages"
        return "POST", path, {"type": args.type, "data": json.loads(args.data)}
    if args.command == "remove":
        body = {name: value for name, value in (("reason", args.reason), ("ban", args.ban)) if value is not None}
        return "DELETE", f"/server/rooms/{room}/peers/{_q(args.peer)}", body or None
    return "DELETE", f"/server/rooms/{room}", None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; print the answer's JSON. Exit 0 on success, 1 when refused, 2 for bad usage."""
    parser = _parser()
    args = parser.parse_args(argv)
    key = os.environ.get(KEY_VARIABLE, "").strip()
    if not key:
        parser.exit(2, f"error: set {KEY_VARIABLE} to one of the server's SERVER_API_KEYS\n")
    try:
        method, path, body = request_for(args)
    except ValueError as exc:
        parser.exit(2, f"error: data must be JSON: {exc}\n")
    try:
        response = httpx.request(method, args.url.rstrip("/") + path, json=body,
                                 headers={"Authorization": f"Bearer {key}"}, timeout=30)
    except httpx.HTTPError as exc:
        print(f"error: {args.url} cannot be reached: {exc}", file=sys.stderr)
        return 1
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": {"code": f"http_{response.status_code}", "message": response.text[:200]}}
    print(json.dumps(answer, indent=2, ensure_ascii=False), file=sys.stdout if response.is_success else sys.stderr)
    return 0 if response.is_success else 1


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


if __name__ == "__main__":
    sys.exit(main())
