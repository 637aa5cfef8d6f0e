"""The Lua scripts: each a file in `lua/`, loaded once, called with keyword arguments.

A script file starts with its header, comment lines that say what it does and
then, one a line, what it reads:

    -- include   wakeups.lua room.lua          (files of lua/lib/ it needs, in order)
    -- KEYS[1]   members     sig:{room}:members
    -- ARGV[1]   peer        the peer id
    -- ARGV[12...] tails     the rest, each an envelope's tail
    -- returns   ...

Its first lines bind those to locals of the same names, and nothing below
reads `ARGV[n]` again. `Script` reads the header, so Python calls a script by
those names (`script.command(keys, peer=..., tails=[...])`) and the order of
ARGV is written once, in the file. `tests/unit/test_scripts.py` checks every
header against its call in backend.py and against the file's own bindings.

What Redis runs is the file behind a head that Script writes:

    local SHARDED = false                  (true on Redis Cluster: wakeups.lua)
    local UNREAD_EVENTS = 1000             (base.UNREAD_EVENTS)
    local IDEMPOTENCY_KEYS_PER_PEER = 1000 (protocol.IDEMPOTENCY_KEYS_PER_PEER: receipts.lua)
    local SERVER_SENDER = "@server"        (protocol.SERVER_SENDER: room.lua's check_sender)
    local WAKES, RENEW = {}, {}            (filled by wakeups.lua and room.lua's `touch`)
    local ME = table.remove(ARGV)          (the calling instance: `command` passes it last; wakeups.lua)
    <each included file>
    local function main()
    <the script>
    end
    return {main(), WAKES, RENEW}

so each script answers {its reply, the wake-ups it left to send or that are
for the caller's own instance, the renewals it asked for}. Redis names a line of that text in an error
(`user_script:140`); `Script.explain` turns it back into `send.lua:12`.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import operator
import re

from ...protocol import IDEMPOTENCY_KEYS_PER_PEER, SERVER_SENDER
from ..base import UNREAD_EVENTS

_LUA = importlib.resources.files(__package__) / "lua"
_INCLUDE = re.compile(r"^-- include\s+(.+)$", re.M)
_KEYS = re.compile(r"^-- KEYS\[(\d+)\]\s+(\w+)", re.M)
_ARGV = re.compile(r"^-- ARGV\[(\d+)(\.\.\.)?\]\s+(\w+)", re.M)
_LINE = re.compile(r"user_script:(\d+)")


class Script:
    """One script as Redis runs it (`source`, `sha`), and the names of its KEYS and ARGV in order."""

    def __init__(self, name: str, sharded: bool, instance: str = ""):
        self.name, self.instance = name, instance
        text = (_LUA / f"{name}.lua").read_text()
        self.keys = [key for _, key in sorted((int(n), key) for n, key in _KEYS.findall(text))]
        argv = [(int(n), rest, arg) for n, rest, arg in _ARGV.findall(text)]
        assert [n for n, _, _ in argv] == list(range(1, len(argv) + 1)), f"{name}.lua: ARGV numbered out of order"
        assert all(not rest for _, rest, _ in argv[:-1]), f"{name}.lua: only the last ARGV may take the rest"
        self.rest = argv[-1][2] if argv and argv[-1][1] else None  # the name of a variable-length tail, if any
        self.argv = [arg for _, rest, arg in argv if not rest]
        self._names = {*self.argv, *([self.rest] if self.rest else [])}
        self._pick = operator.itemgetter(*self.argv)
        assert len(self.argv) > 1, f"{name}.lua: itemgetter of one name gives no tuple"
        head = ("local SHARDED = " + ("true" if sharded else "false"),
                f"local UNREAD_EVENTS = {UNREAD_EVENTS}",
                f"local IDEMPOTENCY_KEYS_PER_PEER = {IDEMPOTENCY_KEYS_PER_PEER}",
                f'local SERVER_SENDER = "{SERVER_SENDER}"',
                "local WAKES, RENEW = {}, {}",
                "local ME = table.remove(ARGV)")
        parts = [("(head)", "\n".join(head))]
        includes = _INCLUDE.search(text)
        for lib in includes.group(1).split() if includes else ():
            parts.append((f"lib/{lib}", (_LUA / "lib" / lib).read_text().rstrip("\n")))
        parts += [("(main)", "local function main()"), (f"{name}.lua", text.rstrip("\n")),
                  ("(main)", "end\nreturn {main(), WAKES, RENEW}")]
        self._starts: list[tuple[int, str]] = []  # (first line in the source, the file it came from)
        line = 1
        for file, part in parts:
            self._starts.append((line, file))
            line += part.count("\n") + 1
        self.source = "\n".join(part for _, part in parts) + "\n"
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def command(self, keys: list[str], **args) -> tuple:
        """The EVALSHA command that runs this script on `keys` with these ARGV, each named as its header does."""
        if len(args) != len(self._names):
            raise self._mismatch(args)
        try:
            argv = self._pick(args)  # itemgetter: every request pays this, so in C
        except KeyError:
            raise self._mismatch(args) from None
        if self.rest:
            return ("EVALSHA", self.sha, len(keys), *keys, *argv, *args[self.rest], self.instance)
        return ("EVALSHA", self.sha, len(keys), *keys, *argv, self.instance)

    def _mismatch(self, args: dict) -> TypeError:
        missing, extra = sorted(self._names - args.keys()), sorted(args.keys() - self._names)
        return TypeError(f"{self.name}.lua: missing ARGV {missing}, unknown {extra}")

    def explain(self, message: str) -> str:
        """A Redis error's message with its line of the source written as the file's own (`send.lua:12`)."""
        def where(match: re.Match) -> str:
            number = int(match.group(1))
            start, file = max((s, f) for s, f in self._starts if s <= number)
            return f"{file}:{number - start + 1}"

        return _LINE.sub(where, message)


def load(sharded: bool, instance: str = "") -> dict[str, Script]:
    """Every script of lua/ by name (its file's stem), called by `instance` (wakeups.py)."""
    return {
        path.name.removesuffix(".lua"): Script(path.name.removesuffix(".lua"), sharded, instance)
        for path in sorted(_LUA.iterdir(), key=lambda p: p.name) if path.name.endswith(".lua")
    }
