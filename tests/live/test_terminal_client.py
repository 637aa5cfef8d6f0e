"""The terminal client says what is wrong at once: a URL without a scheme, a server that does not answer, $PORT."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

from ..support.servers import ROOT, free_port

pytestmark = pytest.mark.live


class TerminalClient:
    """`python -m signaling.client ROOM ...` as a subprocess; its stderr notes read line by line as they come."""

    def __init__(self, *arguments: str, env: dict[str, str] | None = None):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "signaling.client", *arguments], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.notes: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.notes.put(line.rstrip("\n"))
        self.notes.put("")

    def note(self, within: float) -> str:
        """The next note; fails when none comes within `within` seconds (a bound on silence, not a speed test)."""
        try:
            return self.notes.get(timeout=within)
        except queue.Empty:
            raise AssertionError(f"the terminal client said nothing for {within} s") from None

    def stop(self) -> int:
        """End its input (it leaves the room), and its exit status."""
        if not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            return self.process.wait(timeout=20)
        finally:
            self.process.kill()
            self.process.wait()
            self.reader.join(timeout=5)
            self.process.stderr.close()


@pytest.fixture
def terminal():
    clients: list[TerminalClient] = []

    def start(*arguments: str, env: dict[str, str] | None = None) -> TerminalClient:
        clients.append(TerminalClient(*arguments, env=env))
        return clients[-1]

    yield start
    for client in clients:
        client.stop()


def test_a_url_without_a_scheme_is_http(live_server, terminal):
    client = terminal("room", "--url", live_server.url.removeprefix("http://"), "--peer-id", "alice")
    assert client.note(within=20).startswith("# joined room as alice"), "localhost:PORT means http://localhost:PORT"
    assert client.stop() == 0


def test_the_default_url_follows_port_as_make_run_does(live_server, terminal):
    client = terminal("room", "--peer-id", "alice", env={"PORT": str(live_server.port)})
    assert client.note(within=20).startswith("# joined room as alice")
    assert client.stop() == 0


def test_a_server_that_never_answers_is_one_line_then_status_1(terminal):
    url = f"http://127.0.0.1:{free_port()}"
    client = terminal("room", "--url", url, "--retry-for", "0")
    assert client.note(within=5) == f"# {url} does not answer (connection refused); giving up"
    assert client.note(within=5) == "", "one line, then the end"
    assert client.stop() == 1


def test_a_server_that_is_down_is_said_at_once_and_tried_again_until_it_answers(start_server, terminal):
    server = start_server()
    server.stop()
    client = terminal("room", "--url", server.url, "--peer-id", "alice")
    first = client.note(within=5)
    assert first == f"# {server.url} does not answer (connection refused); trying again in 1 s (Ctrl-C gives up)"
    assert client.note(within=5).endswith("trying again in 2 s (Ctrl-C gives up)"), "the wait grows, and says so"
    server.start()
    while (note := client.note(within=20)).endswith("(Ctrl-C gives up)"):
        pass
    assert note.startswith("# joined room as alice")
    assert client.stop() == 0


def test_ctrl_c_while_the_server_does_not_answer_is_status_1(terminal):
    client = terminal("room", "--url", f"http://127.0.0.1:{free_port()}")
    assert "does not answer" in client.note(within=5)
    client.process.send_signal(signal.SIGINT)
    assert client.note(within=5) == "# stopped before the server answered"
    assert client.stop() == 1
