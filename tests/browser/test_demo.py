"""The demo page end to end: real RTCPeerConnections between headless Chromium tabs."""

from pathlib import Path

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "demo.png"


def test_two_pages_chat_then_video(live_server, open_demo, room):
    alice = open_demo(live_server.url, room)
    bob = open_demo(live_server.url, room)
    alice.expect_linked(bob)

    alice.say("Hello Bob, can you read me?")
    bob.expect_chat(alice, "Hello Bob, can you read me?")
    bob.say("Loud and clear. Turn on your camera?")
    alice.expect_chat(bob, "Loud and clear. Turn on your camera?")

    # Media added to a connection that is already up: a renegotiation.
    alice.start_camera()
    bob.expect_video_playing(alice)
    alice.say("There you go.")
    bob.expect_chat(alice, "There you go.")

    bob.page.click("#log-panel summary")
    bob.page.screenshot(path=str(SCREENSHOT))


def test_remote_video_plays_both_ways(live_server, open_demo, room):
    alice = open_demo(live_server.url, room)
    bob = open_demo(live_server.url, room)
    alice.expect_linked(bob)

    # Both start at once: both sides offer, and perfect negotiation settles the glare.
    alice.page.click("#media-toggle")
    bob.page.click("#media-toggle")
    alice.expect_video_playing(bob)
    bob.expect_video_playing(alice)


def test_three_pages_form_a_full_mesh(live_server, open_demo, room):
    tabs = [open_demo(live_server.url, room) for _ in range(3)]
    for tab in tabs:
        for other in tabs:
            if other is not tab:
                tab.expect_channel_open(other)
    tabs[2].say("hi all")
    tabs[0].expect_chat(tabs[2], "hi all")
    tabs[1].expect_chat(tabs[2], "hi all")


def test_closed_page_is_dropped_by_its_beacon_and_can_come_back(live_server, open_demo, room):
    alice = open_demo(live_server.url, room)
    bob = open_demo(live_server.url, room)
    alice.expect_channel_open(bob)
    gone = bob.peer_id

    # The default PEER_TTL is 60 s: only the pagehide beacon can make this quick.
    bob.page.close(run_before_unload=True)
    expect(alice.member(gone)).to_have_count(0, timeout=2_000)
    expect(alice.page.locator(f'video[data-peer="{gone}"]')).to_have_count(0)

    carol = open_demo(live_server.url, room)
    alice.expect_linked(carol)


def test_reload_keeps_the_peer_id_and_reconnects(live_server, open_demo, room):
    alice = open_demo(live_server.url, room)
    bob = open_demo(live_server.url, room)
    alice.expect_channel_open(bob)
    before = bob.peer_id

    bob.page.reload()
    bob.expect_session("connected")
    assert bob.peer_id == before
    alice.expect_linked(bob)
    bob.say("back again")
    alice.expect_chat(bob, "back again")


def test_reload_without_beacon_resumes_and_the_others_start_over(live_server, open_demo, room):
    alice = open_demo(live_server.url, room)
    bob = open_demo(live_server.url, room)
    alice.expect_channel_open(bob)
    before = bob.peer_id

    # A lost beacon: the reloaded page finds its peer still live and resumes it with its token.
    bob.page.evaluate("navigator.sendBeacon = () => true")
    bob.page.reload()
    bob.expect_session("connected")
    assert bob.peer_id == before
    expect(alice.page.locator('#envelope-log li.in[data-type="hello"]')).to_have_count(1)
    expect(alice.page.locator('#envelope-log li.in[data-type="peer-left"]')).to_have_count(0)
    alice.expect_linked(bob)


def test_pages_rejoin_after_a_server_restart(live_server, open_demo, room):
    alice = open_demo(live_server.url, room)
    bob = open_demo(live_server.url, room)
    alice.expect_channel_open(bob)

    live_server.stop()
    alice.expect_session("reconnecting")
    # Same port, empty memory: every poll gets 404 not_joined and the pages join afresh.
    live_server.start()
    for tab in (alice, bob):
        tab.expect_session("connected", timeout=15_000)
    alice.expect_linked(bob)
    alice.say("still here")
    bob.expect_chat(alice, "still here")
