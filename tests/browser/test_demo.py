"""The demo page end to end: real RTCPeerConnections between headless Chromium tabs."""

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from signaling.tickets import mint
from tests.support.helpers import Api

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "demo.png"
JOIN_SECRET = "the-browser-tests-join-secret-32-bytes+"


def test_two_pages_chat_then_video(live_server, open_demo, room, tmp_path):
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
    # docs/demo.png is remade only when asked (UPDATE_SCREENSHOT=1): a test run leaves the checkout as it was
    bob.page.screenshot(path=str(SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "demo.png"))


def test_the_demo_receives_by_stream_and_makes_no_poll_once_its_stream_is_open(live_server, open_demo, room):
    """Needs the server's stream (protocol 1.2): each page holds one GET open on its mailbox, where a polling
    page makes a new GET after every answer."""
    alice = open_demo(live_server.url, room)
    bob = open_demo(live_server.url, room)
    receives = {tab: [] for tab in (alice, bob)}  # each page's GETs of its own mailbox, from here on
    arrived = {}

    def watch(tab):
        mailbox = f"{live_server.url}/rooms/{room}/peers/{tab.peer_id}/messages"
        tab.page.on("request", lambda request: request.method == "GET" and request.url.split("?")[0] == mailbox
                    and receives[tab].append(request.url))
        arrived[tab] = tab.page.locator("#envelope-log li.in").count()

    for tab in (alice, bob):
        watch(tab)
    alice.expect_linked(bob)
    alice.start_camera()  # a renegotiation: more envelopes both ways
    bob.expect_video_playing(alice)

    for tab in (alice, bob):
        assert tab.page.locator("#envelope-log li.in").count() > arrived[tab], "envelopes came meanwhile"
        assert receives[tab] == [], f"{tab.peer_id} asked for its envelopes again: {receives[tab]}"
        modes = tab.page.locator('#envelope-log li.sys[data-type="receive"]')
        expect(modes).to_have_count(1)
        expect(modes).to_contain_text("by stream: one open response")
    log = live_server.log.read_text()
    for tab in (alice, bob):
        gets = len(re.findall(rf'"GET /rooms/{room}/peers/{tab.peer_id}/messages" ', log))
        assert gets <= 2, f"{gets} GETs of {tab.peer_id}'s mailbox in the access log: it polled"


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


def test_with_tickets_on_the_page_says_it_needs_one_and_joins_with_one_from_its_address(start_server, open_demo,
                                                                                      room):
    server = start_server(env={"JOIN_SECRET": JOIN_SECRET})
    stranger = open_demo(server.url, room, connected=False)
    stranger.expect_session("closed")
    banner = stranger.page.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("join ticket")
    expect(banner).to_contain_text(f"python -m signaling.tickets --room {room}")
    refused = open_demo(server.url, room, ticket=mint(JOIN_SECRET, "another-room"), connected=False)
    expect(refused.page.locator("#banner")).to_contain_text("refused this page's join ticket: bad ticket: another room")

    alice = open_demo(server.url, room, ticket=mint(JOIN_SECRET, room, "alice"))
    bob = open_demo(server.url, room, ticket=mint(JOIN_SECRET, room, once=True))
    assert alice.peer_id == "alice"
    assert "ticket" not in alice.page.url and alice.page.locator("#room-link").input_value().endswith(f"#room={room}")
    alice.expect_linked(bob)

    # The beacon of a reload leaves the room; the page joins afresh with the ticket it kept.
    alice.page.reload()
    alice.expect_session("connected")
    assert alice.peer_id == "alice"
    alice.expect_linked(bob)
    # Bob's ticket was single-use: after his reload the page says so instead of failing silently.
    bob.page.reload()
    bob.expect_session("closed")
    expect(bob.page.locator("#banner")).to_contain_text("bad ticket: already used")


SERVER_KEY = "the-browser-tests-server-key-32-chars-01"


def named(server_url: str, name: str) -> dict:
    """Context options of a tab whose person gave the demo `name` on an earlier visit (kept in localStorage)."""
    return {"storage_state": {"cookies": [], "origins": [
        {"origin": server_url, "localStorage": [{"name": "signaling-demo-name", "value": name}]}]}}


def test_the_demo_shows_names_and_a_removal_ends_the_page(start_server, open_demo, room):
    server = start_server(env={"SERVER_API_KEYS": SERVER_KEY})
    alice = open_demo(server.url, room, **named(server.url, "Alice Liddell"))
    bob = open_demo(server.url, room, **named(server.url, "Bob"))
    alice.expect_linked(bob)
    expect(alice.page.locator("#my-id")).to_have_text("Alice Liddell")
    expect(alice.member(bob.peer_id).locator(".name")).to_have_text("Bob")
    expect(bob.member(alice.peer_id).locator(".name")).to_have_text("Alice Liddell")
    alice.say("Hi Bob")
    expect(bob.page.locator(f'#chat-log .chat-line[data-from="{alice.peer_id}"] .who')).to_have_text("Alice Liddell")

    api = Api.over_http(server.url)
    removed = api.request("DELETE", f"/server/rooms/{room}/peers/{bob.peer_id}", {"reason": "too loud"},
                          token=SERVER_KEY)
    assert removed.body == {"removed": True}
    expect(bob.page.locator("#banner")).to_contain_text("You were removed from this room", timeout=10000)
    expect(bob.page.locator("#banner")).to_contain_text("too loud")
    bob.expect_session("closed")
    expect(alice.member(bob.peer_id)).to_have_count(0, timeout=10000)
