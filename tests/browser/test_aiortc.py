"""A Python peer (aiortc, examples/aiortc_peer.py) holds a call with the browser demo."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.browser


@dataclasses.dataclass
class Bot:
    """The example peer, run as a user would; its log is kept for a failing test's report."""

    peer_id: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.log.read_text()


@pytest.fixture
def start_bot(tmp_path):
    """Start `python -m examples.aiortc_peer ROOM --url URL --peer-id ID`, in this run's network namespace."""
    bots = []

    def start(url: str, room: str, peer_id: str) -> Bot:
        log = tmp_path / f"bot-{peer_id}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "examples.aiortc_peer", room, "--url", url, f"--peer-id={peer_id}"],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )
        bots.append(Bot(peer_id, process, log))
        return bots[-1]

    yield start
    for bot in bots:
        print(f"--- log of {bot.peer_id}\n{bot.stop()}")


def below(peer_id: str) -> str:
    """An id that sorts before `peer_id` (as JavaScript's < sorts), so its owner is the polite side."""
    return "-" if peer_id.startswith("-") else "-aiortc"


@pytest.mark.parametrize("offerer", ["aiortc", "demo"])
def test_an_aiortc_peer_chats_and_sends_video_to_the_demo(live_server, open_demo, room, start_bot, offerer):
    demo = open_demo(live_server.url, room)
    # The demo's rule: the peer whose id sorts first is polite, and the other one offers.
    bot_id = f"{demo.peer_id}-aiortc" if offerer == "aiortc" else below(demo.peer_id)
    bot = start_bot(live_server.url, room, bot_id)

    demo.expect_channel_open(bot)
    demo.expect_chat(bot, "hello from aiortc")
    demo.say("Hello, Python")
    demo.expect_chat(bot, "echo: Hello, Python")
    demo.expect_video_playing(bot)

    bot.stop()  # SIGTERM: the peer leaves the room, so the demo drops it at once
    expect(demo.member(bot_id)).to_have_count(0, timeout=2_000)
