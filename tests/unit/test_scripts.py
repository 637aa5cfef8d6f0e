"""The Lua scripts: each header matches its Python call and its own first lines, and every script loads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import redis

from signaling.backends.redis import backend, scripts

LUA = Path(scripts.__file__).parent / "lua"
NAMES = sorted(path.stem for path in LUA.glob("*.lua"))
#: keywords of `_run` that are not ARGV: the keys a script is `on` and what its refusal's message is `about`
NOT_ARGV = {"on", "about"}


def calls_in_backend() -> dict[str, list[set[str]]]:
    """The ARGV names passed to each script in backend.py: `_run(self.scripts[name], ...)` and `.command(...)`."""
    found: dict[str, list[set[str]]] = {}
    for node in ast.walk(ast.parse(Path(backend.__file__).read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if node.func.attr == "_run":
            script = node.args[0]
        elif node.func.attr == "command":
            script = node.func.value
        else:
            continue
        if any(kw.arg is None for kw in node.keywords):  # `_run` handing its own **args on
            continue
        assert isinstance(script, ast.Subscript) and ast.unparse(script.value) == "self.scripts", ast.unparse(node)
        found.setdefault(script.slice.value, []).append({kw.arg for kw in node.keywords} - NOT_ARGV)
    return found


def test_every_script_is_called_with_exactly_the_argv_its_header_names():
    loaded, calls = scripts.load(sharded=False), calls_in_backend()
    assert sorted(loaded) == NAMES and sorted(calls) == NAMES  # every file is a script, and each is called
    for name, script in loaded.items():
        header = {*script.argv, *([script.rest] if script.rest else [])}
        for passed in calls[name]:
            assert passed == header, f"{name}.lua: missing {header - passed}, not in its header {passed - header}"


@pytest.mark.parametrize("name", NAMES)
def test_a_scripts_first_lines_bind_its_header_and_nothing_below_reads_argv(name):
    """`local a, b = ARGV[1], tonumber(ARGV[2])`: each name of the header bound to its own ARGV, once, at the top."""
    script = scripts.Script(name, sharded=False)
    lines = [line for line in (LUA / f"{name}.lua").read_text().splitlines() if not line.startswith("--")]
    top = next(i for i, line in enumerate(lines) if not line.startswith("local "))
    bindings = []
    for line in lines[:top]:
        targets, values = line.removeprefix("local ").split(" = ", 1)
        # split the values at top-level commas only: a value may be a call
        parts, depth, start = [], 0, 0
        for i, char in enumerate(values):
            depth += (char in "({") - (char in ")}")
            if char == "," and depth == 0:
                parts.append(values[start:i])
                start = i + 1
        parts.append(values[start:])
        bindings += list(zip(targets.split(", "), (part.strip() for part in parts), strict=True))
    body = "\n".join(lines[top:])
    argv = {}
    for target, value in bindings:
        if match := re.fullmatch(r"(?:tonumber\()?ARGV\[(\d+)\]\)?", value):
            argv.setdefault(target, int(match.group(1)))
        elif match := re.fullmatch(r"\{unpack\(ARGV, (\d+)\)\}", value):
            assert target == script.rest and int(match.group(1)) == len(script.argv) + 1
    assert sorted(argv, key=argv.get) == script.argv
    assert [argv[name] for name in script.argv] == list(range(1, len(script.argv) + 1))
    assert "ARGV[" not in body and "ARGV," not in body


def test_script_command_refuses_a_missing_or_unknown_name():
    members = scripts.Script("members", sharded=False, instance="i1")
    command = members.command(["sig:{r}:members"], peer="p", given="", now="1", ttl="60")
    # the calling instance last: the head pops it (ME), so the script's own ARGV are as its header says
    assert command == ("EVALSHA", members.sha, 1, "sig:{r}:members", "p", "", "1", "60", "i1")
    with pytest.raises(TypeError, match=r"missing ARGV \['ttl'\], unknown \['tll'\]"):
        members.command(["sig:{r}:members"], peer="p", given="", now="1", tll="60")
    send = scripts.Script("send", sharded=False, instance="i1")
    args = dict(sender="a", given="", now="1", ttl="60", to="b", digest="", key="", limit=1, max_bytes=1,
                receipt_ttl=1, per_second=0)
    assert send.command(["k"], **args, tails=("x", "y"))[-3:] == ("x", "y", "i1")  # the rest in order, then ME


@pytest.mark.parametrize("sharded", [False, True], ids=["redis", "cluster"])
def test_every_script_loads_as_the_sha_it_is_called_by(redis_url, sharded):
    with redis.Redis.from_url(redis_url) as db:
        for script in scripts.load(sharded).values():
            assert db.script_load(script.source) == script.sha


def test_a_line_redis_names_is_written_as_the_files_own():
    send = scripts.Script("send", sharded=False)
    source = send.source.splitlines()
    for file, text in [("send.lua", (LUA / "send.lua").read_text()), ("lib/receipts.lua",
                                                                      (LUA / "lib/receipts.lua").read_text())]:
        for number, line in enumerate(text.splitlines(), 1):
            if line.startswith("local function"):
                assert send.explain(f"ERR oops @user_script:{source.index(line) + 1}.") == f"ERR oops @{file}:{number}."
                break


def test_a_script_error_names_its_file_and_line(redis_url):
    """A send without envelopes (no view sends one) makes RPUSH fail inside room.lua's `push`."""
    from signaling.config import Settings
    from signaling.hub import Hub
    from signaling.protocol import Join

    settings = Settings(redis_url=redis_url)
    store = backend.RedisBackend(settings, Hub())
    try:
        store.join(Join("r1", "a", "a.secret", None, 1e9))
        store.join(Join("r1", "b", "b.secret", None, 1e9))
        with pytest.raises(redis.ResponseError, match=r"lib/room\.lua:\d+"):
            store._run(store.scripts["send"], "r1", sender="a", given=backend._hashed("a.secret"), now="1e9",
                       ttl="60", to="b", digest="", key="", limit=10, max_bytes=10**6, receipt_ttl=60,
                       per_second=0, tails=())
    finally:
        store.close()
