"""The demo through the recommended nginx configuration (docs/nginx.conf): HTTP/2, two instances, round-robin."""

import re
import time

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def test_the_demo_holds_a_call_through_nginx(start_behind_nginx, open_demo, room):
    # Short polls: a few full poll cycles, each request on either instance, pass while the call is up.
    nginx, instances = start_behind_nginx(env={"POLL_WAIT": "2"})
    alice = open_demo(nginx.url, room, ignore_https_errors=True)
    bob = open_demo(nginx.url, room, ignore_https_errors=True)
    alice.expect_linked(bob)
    assert alice.page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"

    alice.start_camera()
    bob.expect_video_playing(alice)
    time.sleep(6)  # three poll cycles through the proxy
    for tab in (alice, bob):
        tab.expect_session("connected")
    alice.expect_channel_open(bob)
    bob.say("still here after a few polls")
    alice.expect_chat(bob, "still here after a few polls")
    expect(bob.member(alice.peer_id).locator(".state")).to_have_text("connected")
    # Every request of the API, not only receives: a stream is one GET, logged when it ends.
    requests = [len(re.findall(r'"[A-Z]+ /rooms/', i.log.read_text())) for i in instances]
    assert min(requests) > 0, f"every request went to one instance: {requests}"
