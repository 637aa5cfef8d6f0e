"""The curl walkthroughs of the README and docs/tickets.md work exactly as written, output included."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from signaling.tickets import Verifier

from ..support.servers import ROOT

pytestmark = pytest.mark.live

STEP = "@@step@@"


#: (document, section) of each walkthrough: the README's, and the one for a server with join tickets on
WALKTHROUGH = ("README.md", "Walk through it with curl")
TICKETS = ("docs/tickets.md", "Try it with curl")


def section(document: str, heading: str) -> str:
    """The text of one `## heading` section of a Markdown file of the repository."""
    return (ROOT / document).read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def shell_blocks(document: str, heading: str) -> list[str]:
    """The ```sh blocks of one section."""
    return re.findall(r"```sh\n(.*?)```", section(document, heading), re.S)


def steps(block: str) -> list[tuple[str, str | None]]:
    """(command, expected output) pairs: a `# ` line right under a command is its output."""
    result: list[tuple[str, str | None]] = []
    command: list[str] = []
    for line in block.splitlines():
        if command and command[-1].endswith("\\"):
            command.append(line)
        elif line.startswith("# ") and command:
            result.append(("\n".join(command), line[2:]))
            command = []
        elif line.startswith("#") or not line.strip():
            if command:
                result.append(("\n".join(command), None))
            command = []
        else:
            if command:
                result.append(("\n".join(command), None))
            command = [line]
    if command:
        result.append(("\n".join(command), None))
    return result


#: the JOIN_SECRET of the server (and the curl terminal) for the walkthrough of join tickets
JOIN_SECRET = "the-readme-walkthrough-join-secret-32b"


def run_steps(pairs: list[tuple[str, str | None]], host: str, env: dict[str, str] | None = None) -> None:
    """Run the steps in one shell against `host`; each output must be the README's."""
    script = "set -e\n" + "".join(f"{cmd}\necho {STEP}\n" for cmd, _ in pairs)
    script = script.replace("localhost:8000", host).replace(".venv/bin/python", sys.executable)
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env=env or dict(os.environ))
    assert run.returncode == 0, run.stderr
    outputs = run.stdout.split(STEP + "\n")
    for (command, expected), output in zip(pairs, outputs, strict=False):
        if expected is not None:
            assert output.strip() == expected, command


@pytest.mark.parametrize("walkthrough", [WALKTHROUGH, TICKETS], ids=lambda w: w[0])
def test_curl_walkthrough_runs_as_written(live_server, start_server, walkthrough):
    assert shutil.which("curl") and shutil.which("jq"), "the walkthrough needs curl and jq"
    for block in shell_blocks(*walkthrough):
        pairs = steps(block)
        assert pairs
        env = dict(os.environ)
        server = live_server
        if "signaling.tickets" in block:  # the block for a server started with JOIN_SECRET
            env["JOIN_SECRET"] = JOIN_SECRET
            server = start_server(env={"JOIN_SECRET": JOIN_SECRET})
        run_steps(pairs, server.url.removeprefix("http://"), env)


def test_the_walkthrough_runs_again_after_one_stopped_halfway(live_server):
    """A reader who stopped before the leaves and starts over, within PEER_TTL, sees the same answers."""
    host = live_server.url.removeprefix("http://")
    pairs = steps(shell_blocks(*WALKTHROUGH)[0])
    first_leave = next(i for i, (command, _) in enumerate(pairs) if "-XDELETE" in command)
    run_steps(pairs[:first_leave], host)
    run_steps(pairs, host)
    run_steps(pairs, host)


def test_the_ticket_walkthrough_runs_again_at_once(start_server):
    """Run twice within PEER_TTL and a join ticket's lifetime: the second run is no 409 peer_id_taken."""
    server = start_server(env={"JOIN_SECRET": JOIN_SECRET})
    (block,) = shell_blocks(*TICKETS)
    for _ in range(2):
        run_steps(steps(block), server.url.removeprefix("http://"), {**os.environ, "JOIN_SECRET": JOIN_SECRET})


def test_the_python_example_mints_a_ticket_the_server_takes(monkeypatch):
    (example,) = re.findall(r"```python\n(.*?)```", section("docs/tickets.md", "Minting a ticket"), re.S)
    monkeypatch.setenv("JOIN_SECRET", JOIN_SECRET)
    namespace: dict = {}
    exec(example, namespace)
    ticket = namespace["join_ticket"]("demo", "alice")
    checked = Verifier([JOIN_SECRET]).check(ticket, "demo", None)
    assert checked.sub == "alice" and checked.jti
