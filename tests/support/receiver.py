"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 that records every POST and verifies it with
the `standardwebhooks` package (not with the service's own code)."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

#: Standard Webhooks secrets (whsec_ and the base64 of 24 bytes): two, as in a rotation
SECRETS = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One POST as received: its event (verified), its webhook-id, the status it was answered."""

    id: str
    event: dict
    status: int
    headers: dict
    at: float  # time.time() when it arrived

    @property
    def room(self) -> str:
        return self.event["data"]["room"]


class Receiver:
    """`answer(event) -> status` decides each answer (default 200); `hang(event)` True holds that request
    until `release()`; `stop()`/`start()` refuse connections on the same port in between. HTTP/1.1: a
    connection is kept for the next request; `connections` counts those opened."""

    def __init__(self, secrets: tuple[str, ...] = SECRETS):
        self.secrets = secrets
        self.answer: Callable[[dict], int] = lambda event: 200
        self.hang: Callable[[dict], bool] = lambda event: False
        self.retry_after: str | None = None
        self.deliveries: list[Delivery] = []  # every request, verified, in the order answered
        self.bad: list[str] = []  # requests that failed verification: a test asserts there are none
        self.hung_closed = threading.Event()  # a held request's connection was closed by the sender
        self.hanging = self.most_hanging = 0  # requests held now, and the most held at once
        self.connections = 0
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with receiver._lock:
                    receiver.connections += 1

            def do_POST(self):
                at = time.time()
                raw = self.rfile.read(int(self.headers["content-length"]))
                headers = {name.lower(): value for name, value in self.headers.items()}
                try:
                    for secret in receiver.secrets:  # every secret signs: each verifies on its own
                        event = Webhook(secret).verify(raw, headers)
                except Exception as exc:
                    receiver.bad.append(f"{exc!r}: {headers} {raw!r}")
                    self.send_response(400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if receiver.hang(event):  # never answer; notice when the sender gives up and closes its end
                    self.connection.settimeout(0.05)
                    self.close_connection = True
                    with receiver._lock:
                        receiver.hanging += 1
                        receiver.most_hanging = max(receiver.most_hanging, receiver.hanging)
                    try:
                        self._hold()
                    finally:
                        with receiver._lock:
                            receiver.hanging -= 1
                    return
                status = receiver.answer(event)
                with receiver._lock:
                    receiver.deliveries.append(Delivery(headers["webhook-id"], event, status, headers, at))
                self.send_response(status)
                if receiver.retry_after and status >= 300:
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _hold(self):
                """Until `release`, or until the sender closes its end (then `hung_closed` is set)."""
                while not receiver._released.is_set():
                    try:
                        if self.connection.recv(1) == b"":
                            break
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                else:
                    return
                receiver.hung_closed.set()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening: connections are refused until `start`."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def release(self) -> None:
        self._released.set()

    def delivered(self) -> list[Delivery]:
        """The deliveries answered 2xx, in order."""
        with self._lock:
            return [d for d in self.deliveries if 200 <= d.status < 300]

    def events(self, room: str | None = None) -> list[tuple[str, dict]]:
        """(type, data) of each delivered event, of one room or all."""
        return [(d.event["type"], d.event["data"]) for d in self.delivered() if room is None or d.room == room]

    def wait_for(self, count: int, timeout: float = 20) -> list[Delivery]:
        """Wait until `count` events were delivered (2xx); fails with what came when they do not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.delivered()) >= count:
                return self.delivered()
            time.sleep(0.02)
        raise AssertionError(f"{len(self.delivered())} of {count} delivered: "
                             f"{json.dumps([(d.event['type'], d.event['data']) for d in self.delivered()])}")
