"""signaling.js used by a page of another origin: the example of docs/clients.md, as written."""

import contextlib
import re
import threading
from collections import Counter, defaultdict
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
    with example_served(live_server.url) as origin:
        yield origin


@contextlib.contextmanager
def example_served(service_url: str):
    """Serves example.html, pointed at `service_url`, from an origin of its own."""
    page = EXAMPLE.read_text().replace(PLACEHOLDER, service_url).encode()

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
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
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


def test_readme_example_says_why_a_join_was_refused(browser, start_server, room):
    """Against a server that admits only ticket holders, the page shows the refusal, not "joining…" forever."""
    server = start_server(env={"JOIN_SECRET": "the-library-tests-join-secret-32-bytes"})
    context = browser.new_context()
    try:
        with example_served(server.url) as origin:
            page = context.new_page()
            page.goto(f"{origin}#{room}")
            refused = re.compile(f"^could not join {room}: .+ \\(ticket_required\\)$")
            expect(page.locator("#status")).to_have_text(refused, timeout=10_000)
    finally:
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


# The example keeps its session in a module's const; a test that drives it needs a handle. The
# session is the one EventTarget with send() and peerId, and the example adds listeners to it.
KEEP_SESSION = """
const addEventListener = EventTarget.prototype.addEventListener;
EventTarget.prototype.addEventListener = function (...args) {
  if (!window.session && typeof this.send === "function" && "peerId" in this) {
    window.session = this;
    window.bursts = [];
    addEventListener.call(this, "message", ({ detail }) => detail.type === "burst" && window.bursts.push(detail.data));
  }
  return addEventListener.apply(this, args);
};
"""

# Starts sending `count` envelopes to `to`, five at a time 40 ms apart, so that many requests go to
# the other page's mailbox URL and some sends wait behind one in flight; `window.sent` resolves to their seqs.
BURST = """([to, count]) => {
  window.sent = (async () => {
    const sent = [];
    for (let n = 0; n < count; n++) {
      sent.push(window.session.send(to, "burst", n));
      if (n % 5 === 4) await new Promise((resolve) => setTimeout(resolve, 40));
    }
    return (await Promise.all(sent)).map(({ seq }) => seq);
  })();
}"""


def access_log(server) -> Counter:
    """Requests per (method, path) in the server's access log."""
    return Counter(re.findall(r'"([A-Z]+) (\S+)"', server.log.read_text()))


def test_a_burst_of_sends_and_receives_pays_one_preflight_per_url(browser, example_origin, live_server, room):
    """Polls and streams carry the cursor in Last-Event-ID and a stream's Accept is CORS-safelisted, so a page
    receives on one URL: its preflight is cached, not repeated, whether it polls or streams."""
    count = 60
    callers = defaultdict(set)  # path -> the pages that made a request to it (every API request needs a preflight)
    contexts = [browser.new_context() for _ in range(2)]
    try:
        pages = []
        for index, context in enumerate(contexts):
            context.add_init_script(KEEP_SESSION)
            page = context.new_page()
            page.on("request", lambda request, index=index: callers[request.url.split("?")[0]].add(index))
            page.goto(f"{example_origin}#{room}")
            expect(page.locator("#status")).to_contain_text("joined", timeout=10_000)
            pages.append(page)
        for page in pages:
            expect(page.locator("#log")).to_contain_text("connected to", timeout=15_000)
        ids = [page.evaluate("window.session.peerId") for page in pages]

        for page, other in zip(pages, reversed(ids), strict=True):
            page.evaluate(BURST, [other, count])  # both pages at once
        seqs = [page.evaluate("window.sent") for page in pages]
        for page in pages:
            page.wait_for_function(f"window.bursts.length >= {count}", timeout=15_000)
            assert page.evaluate("window.bursts") == list(range(count)), "every envelope once, in order"
        log = access_log(live_server)
    finally:
        for context in contexts:
            context.close()

    for sent in seqs:
        assert sent == list(range(sent[0], sent[0] + count)), "each send got its own seq, in order"
    # A mailbox's URL takes its owner's polls or streams (GET) and the other page's sends (POST).
    mailboxes = [f"/rooms/{room}/peers/{peer}/messages" for peer in ids]
    requests = {path: log["GET", path] + log["POST", path] for path in mailboxes}
    assert min(requests.values()) >= 4, f"a burst of requests to each mailbox: {requests}"
    sends = sum(n for (method, path), n in log.items() if method == "POST" and path.endswith("/messages"))
    assert sends <= count, f"{2 * count} envelopes went in {sends} requests: sends made together go as a batch"
    preflights = {path: n for (method, path), n in log.items() if method == "OPTIONS"}
    assert preflights.get(f"/rooms/{room}/peers/{ids[0]}/messages"), f"the log shows preflights: {preflights}"
    for path, n in preflights.items():
        pages_using = len(callers[live_server.url + path])
        assert n <= pages_using, f"{n} preflights for {path}, used by {pages_using} page(s); all: {preflights}"
