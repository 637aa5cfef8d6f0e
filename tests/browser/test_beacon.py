"""`navigator.sendBeacon` leaves with each kind of body a page can give it (string, URLSearchParams, FormData, Blob)."""

import time

import pytest

from tests.support.helpers import Api

pytestmark = pytest.mark.browser

SEND = """([path, token, how]) => {
  const bodies = {
    string: () => JSON.stringify({ token }),
    URLSearchParams: () => new URLSearchParams({ token }),
    FormData: () => { const form = new FormData(); form.append("token", token); return form; },
    "json-Blob": () => new Blob([JSON.stringify({ token })], { type: "application/json" }),
  };
  return navigator.sendBeacon(path, bodies[how]());
}"""


@pytest.mark.parametrize("how", ["string", "URLSearchParams", "FormData", "json-Blob"])
def test_a_beacon_leave_from_the_browser(live_server, browser, room, how):
    api = Api.over_http(live_server.url)
    alice, bob = api.peer(room, "alice"), api.peer(room, "bob")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{live_server.url}/healthz")  # any page of the service's origin
        assert page.evaluate(SEND, [f"/rooms/{room}/peers/bob/leave", bob.token, how]) is True
        deadline = time.monotonic() + 10
        while alice.members().body["peers"] != ["alice"]:
            assert time.monotonic() < deadline, "the beacon did not make bob leave"
            time.sleep(0.1)
    finally:
        context.close()
