"""signaling.js used by a page of another origin: the README's example, as written."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import expect

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
