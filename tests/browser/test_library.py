"""signaling.js used by a page of another origin: the README's example, as written."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import expect

from signaling.tickets import mint

pytestmark = pytest.mark.browser

EXAMPLE = Path(__file__).with_name("example.html")
PLACEHOLDER = "https://signal.example.com"


@pytest.fixture
def example_origin(live_server):
    """Serves example.html, pointed at the live server, from an origin of its own."""
    page = EXAMPLE.read_text().replace(PLACEHOLDER, live_server.url).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_readme_example_opens_a_data_channel_cross_origin(browser, example_origin, live_server, room):
    assert example_origin.rstrip("/") != live_server.url
    contexts = [browser.new_context() for _ in range(2)]
    try:
        first, second = (context.new_page() for context in contexts)
        for page in (first, second):
            page.goto(f"{example_origin}#{room}")
            expect(page.locator("#status")).to_contain_text("joined", timeout=10_000)
        for page in (first, second):
            expect(page.locator("#log")).to_contain_text("connected to", timeout=15_000)

        first.fill("#text", "over the data channel")
        first.press("#text", "Enter")
        expect(second.locator("#log")).to_contain_text(": over the data channel", timeout=5_000)
    finally:
        for context in contexts:
            context.close()


def test_get_ticket_gets_a_fresh_single_use_ticket_when_a_restarted_server_forgot_the_page(browser, start_server,
                                                                                         room):
    secret = "the-library-tests-join-secret-32-bytes"
    server = start_server(env={"JOIN_SECRET": secret})
    minted: list[str] = []

    def mint_ticket() -> str:  # the application's backend: short-lived, single-use tickets for this peer
        minted.append(mint(secret, room, "alice", ttl=30, once=True))
        return minted[-1]

    context = browser.new_context()
    try:
        page = context.new_page()
        page.expose_function("mintTicket", mint_ticket)
        page.goto(f"{server.url}/healthz")  # any page of the service's origin
        page.evaluate("""async (room) => {
            const { join } = await import("/static/signaling.js");
            window.states = [];
            window.session = await join(location.origin, room, { getTicket: () => window.mintTicket() });
            session.addEventListener("state", (event) => states.push(event.detail.state));
        }""", room)
        assert page.evaluate("session.peerId") == "alice" and len(minted) == 1

        server.stop()
        server.start()  # the same port, an empty memory: the next poll is 404 not_joined
        page.wait_for_function("states.includes('rejoining') && session.state === 'connected'", timeout=30_000)
        assert len(minted) == 2 and page.evaluate("session.peerId") == "alice"
        assert page.evaluate("session.resumed") is False
    finally:
        context.close()
