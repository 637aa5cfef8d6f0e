"""Headless Chromium driving the demo, in a network namespace of the test run's own.

WebRTC never offers loopback addresses as ICE candidates, so two pages on one
machine connect over an interface address. To keep that traffic (and
Chromium's mDNS) off the machine's real network, a run that selects browser
tests first moves into a new network namespace: loopback plus a veth pair with
a private address, nothing else. This happens after collection and before any
fixture starts a server, so every server and browser of the run lives in it.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import uuid

import pytest
from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
CLONE_NEWNET = 0x40000000
VETH_ADDRESS = "10.213.0.1/24"
TIMEOUT_MS = 15_000

_namespace_error: str | None = None


def pytest_collection_finish(session):
    """Enter a private network namespace when browser tests are about to run."""
    global _namespace_error
    if not any(item.get_closest_marker("browser") for item in session.items):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        _namespace_error = (
            f"browser tests need a private network namespace, and unshare failed: "
            f"{os.strerror(ctypes.get_errno())}. Run as root, or under `unshare -rn`."
        )
        return
    for command in (
        "ip link set lo up",
        "ip link add webrtc0 type veth peer name webrtc1",
        f"ip addr add {VETH_ADDRESS} dev webrtc0",
        "ip link set webrtc0 up",
        "ip link set webrtc1 up",
    ):
        subprocess.run(command.split(), check=True)


@pytest.fixture(scope="session")
def browser():
    if _namespace_error:
        pytest.fail(_namespace_error)
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no {CHROMIUM}: install it with `apt-get install -y chromium`")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def room() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


class Demo:
    """One tab on the demo page, with the steps the tests repeat."""

    def __init__(self, page: Page):
        self.page = page

    @property
    def peer_id(self) -> str:
        return self.page.locator("#my-id").get_attribute("data-peer")

    def member(self, peer_id: str):
        return self.page.locator(f'#members li[data-peer="{peer_id}"]')

    def expect_channel_open(self, other: Demo, timeout: int = TIMEOUT_MS) -> None:
        expect(self.member(other.peer_id)).to_have_attribute("data-channel", "open", timeout=timeout)
        expect(self.member(other.peer_id).locator(".state")).to_have_text("connected", timeout=timeout)

    def expect_linked(self, other: Demo) -> None:
        """The data channel between the two tabs is open, seen from both sides."""
        self.expect_channel_open(other)
        other.expect_channel_open(self)

    def expect_session(self, state: str, timeout: int = TIMEOUT_MS) -> None:
        expect(self.page.locator("#session-state")).to_have_attribute("data-state", state, timeout=timeout)

    def signaling_log(self) -> str:
        """The page's envelope log, oldest first, one line per entry."""
        return self.page.evaluate(
            """() => [...document.querySelectorAll('#envelope-log li')].reverse()
                .map(li => [...li.children].map(span => span.textContent).join('  ')).join('\\n')"""
        )

    def say(self, text: str) -> None:
        self.page.fill("#chat-input", text)
        self.page.press("#chat-input", "Enter")

    def expect_chat(self, sender: Demo, text: str) -> None:
        line = self.page.locator(f'#chat-log .chat-line[data-from="{sender.peer_id}"] .text')
        expect(line.filter(has_text=text)).to_have_count(1, timeout=TIMEOUT_MS)

    def start_camera(self) -> None:
        self.page.click("#media-toggle")
        expect(self.page.locator("#local-tile")).to_have_class("tile local has-video", timeout=TIMEOUT_MS)

    def expect_video_playing(self, other: Demo) -> None:
        """The remote video of `other` has frames and its clock moves."""
        video = self.page.locator(f'video[data-peer="{other.peer_id}"]')
        self.page.wait_for_function(
            "v => v.videoWidth > 0 && v.currentTime > 0", arg=video.element_handle(), timeout=TIMEOUT_MS
        )
        before = video.evaluate("v => v.currentTime")
        self.page.wait_for_function(
            "([v, t]) => v.currentTime > t + 0.3", arg=[video.element_handle(), before], timeout=TIMEOUT_MS
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the signaling log of each of its open demo tabs."""
    report = yield
    if report.when == "call" and report.failed:
        for tab in getattr(item, "demo_tabs", []):
            if not tab.page.is_closed():
                report.sections.append((f"signaling log of {tab.peer_id}", tab.signaling_log()))
    return report


@pytest.fixture
def open_demo(request, browser):
    """Open the demo in a fresh browser context: `open_demo(server_url, room, ticket=None, **context_options)`.

    With `connected=False` the tab is not expected to join. Fails the test on
    any uncaught error in a page.
    """
    contexts = []
    errors: list[str] = []
    request.node.demo_tabs = []

    def open_(server_url: str, room: str, ticket: str | None = None, connected: bool = True,
              **context_options) -> Demo:
        context = browser.new_context(viewport={"width": 1280, "height": 800}, **context_options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))
        page.goto(f"{server_url}/#room={room}" + (f"&ticket={ticket}" if ticket else ""))
        tab = Demo(page)
        if connected:
            tab.expect_session("connected")
        request.node.demo_tabs.append(tab)
        return tab

    yield open_
    for context in contexts:
        context.close()
    assert not errors, errors
