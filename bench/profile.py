"""`python -m bench.profile FILE...`: where the samples of py-spy raw (collapsed) stacks went.

Prints the share of samples by package (of the innermost frame), the
functions with the most samples of their own, and the functions with the
most samples under them. Files come from `python -m bench --profile DIR`.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

#: py-spy names a file by its path under site-packages (or the stdlib): the first part is the package
RENAME = {"redis": "redis-py", "_parsers": "redis-py"}
FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")


def package(frame: str) -> str:
    """`flask`, `gevent`, `signaling`, ...; `stdlib` for a module at the top (`threading.py`)."""
    match = FRAME.match(frame)
    path = match.group("file") if match else frame
    head = path.split("/", 1)[0] if "/" in path else "stdlib"
    if head in ("json", "logging", "urllib", "http", "email", "asyncio", "concurrent", "importlib", "collections"):
        return f"stdlib ({head})"
    return RENAME.get(head, head)


def function(frame: str) -> str:
    """`function (file)`, without the line number."""
    match = FRAME.match(frame)
    return f"{match.group('function')} ({match.group('file')})" if match else frame


def load(paths: list[Path]) -> list[tuple[list[str], int]]:
    stacks = []
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks.append((stack.split(";"), int(count)))
    return stacks


def summary(stacks: list[tuple[list[str], int]], top: int) -> str:
    total = sum(count for _, count in stacks) or 1
    by_package: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    under: collections.Counter = collections.Counter()
    for frames, count in stacks:
        by_package[package(frames[-1])] += count
        own[function(frames[-1])] += count
        for name in {function(frame) for frame in frames}:
            under[name] += count
    lines = [f"{total:,} samples", "", "by package (innermost frame):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in by_package.most_common()]
    lines += ["", f"top {top} functions by own samples:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines += ["", f"top {top} functions by samples under them:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in under.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print(summary(load(args.files), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
