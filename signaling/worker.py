"""The gunicorn worker: gevent's, answering in the protocol's JSON, timing each connection, stopping at once.

Some requests never reach Flask: gunicorn refuses a request line or a header
it cannot parse, or one too large, and would write an HTML page. Here
`handle_error` writes the protocol's error body instead, with the CORS
headers and a request id, and closes the connection.

gunicorn's one clock on a connection is `keepalive`, and it also covers
reading a request: a client that sends half a request keeps its connection,
and a place among `worker_connections`, for 75 s. Here a request must arrive
whole, headers and body, within REQUEST_READ_TIMEOUT of its first byte (of
the connection's opening, for the first request), or it is answered 408 and
the connection closed. The clock counts the client's time only: what has
arrived while the worker was busy elsewhere is read, however late. Waiting for the next request on a kept-alive
connection is still `keepalive`'s; a held poll reads nothing while it is
held, so no clock runs on it.

Writes are bounded too: a client that takes no byte of its answer for
WRITE_TIMEOUT seconds has stopped reading, and its connection is reset. A
write waits for the client rather than queue anything in the worker, so a
client that stops reading holds the answer (or stream event) under way and
the kernel's socket buffers for a few seconds, and loses nothing: what it was
sent is still in the mailbox, unacknowledged.

Past the open-file limit (each connection is one open file) accepting fails
with EMFILE; gevent would print a traceback for each try, and leave the
connections waiting in the kernel's queue. `SheddingServer` answers each of
them instead, `503 server_busy` with Retry-After, through one file kept in
reserve, and logs one line when it starts and one when connections are
accepted again (which happens by itself as connections close). Connections
already open, a balancer's kept-alive health check among them, are served
meanwhile.

On SIGTERM the worker stops at once rather than after `graceful_timeout`:
held polls and streams end (`Hub.close`), connections waiting for a request
are closed, and one under way is answered and then closed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import select
import socket
import struct
import time
import warnings
from datetime import timedelta

import gevent
from gevent import monkey
from gevent.event import Event
from gevent.monkey import MonkeyPatchWarning
from gevent.server import StreamServer
from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http import message as gunicorn_message
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker

from . import errors, metrics
from .config import Settings
from .http import STATUS_LINES, error_answer, request_id
from .hub import Hub
from .logs import Episode
from .service import Service

log = logging.getLogger(__name__)

#: Seconds a write may wait for the client to take a byte; past it the client has stopped reading
WRITE_TIMEOUT = 5.0

#: the kernel's poll(2), asked without yielding (gevent's patched one would switch greenlets)
_POLL = monkey.get_original("select", "poll")
#: the kernel's close(2): gevent's patched one may leave a device's file open until its loop turns
_close_now = monkey.get_original("os", "close")

#: gevent's warning when PyJWT's JWKS client, and nothing else, imported ssl before the patch
_JWKS_CLIENT_UNPATCHED = (
    r"(?s)Monkey-patching ssl after ssl has already been imported.*\['jwt\.jwks_client \([^)]*\)'\]\. *$"
)

#: gunicorn's complaints about a request, as the protocol's errors: the first that matches counts
_GUNICORN_ERRORS: tuple[tuple[type[Exception] | tuple[type[Exception], ...], type[errors.SignalingError]], ...] = (
    # a header the app tried to send, or the server's own configuration: a bug, 500
    ((http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName, http_errors.ConfigurationProblem),
     errors.SignalingError),
    (http_errors.LimitRequestLine, errors.UriTooLong),
    (http_errors.LimitRequestHeaders, errors.HeaderTooLarge),
    (http_errors.ExpectationFailed, errors.ExpectationFailed),
    (http_errors.UnsupportedTransferCoding, errors.UnsupportedTransferCoding),
    (http_errors.ForbiddenProxyRequest, errors.Forbidden),
    (http_errors.ParseException, errors.BadRequest),  # any other malformed request line, header or chunk
)


class SheddingServer(StreamServer):
    """gevent's server, which answers connections past the open-file limit `503 server_busy` instead of a traceback.

    One file is kept open in reserve: when accepting fails for want of files,
    the reserve is closed, the waiting connection accepted on it, answered and
    closed, and the reserve opened again. So each connection is answered at
    once (not left to time out in the kernel's queue) and the worker never
    spins on a queue it cannot take from.
    """

    #: the answer of a shed connection, made once (SignalingWorker.load_wsgi): no work left to do while files are out
    ANSWER: bytes = b""
    #: seconds without a shed connection before the episode is over: one line each way, not one per freed file
    QUIET = 5.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reserve: int | None = _open_reserve()
        self._last_shed = 0.0
        self.shedding = Episode(log, "open-file limit reached: new connections answered 503 server_busy")

    def do_read(self):
        try:
            accepted = super().do_read()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            shed = self._shed()
            if shed is None:  # no file even for that: wait a little rather than spin on the queue
                self.stop_accepting()
                gevent.spawn_later(0.1, self._resume)
            elif shed:
                self.shedding.begin(f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]} open files")
                self._last_shed = time.monotonic()
            return None  # as when nothing is waiting: gevent calls again while the queue holds connections
        if self._reserve is None:
            self._reserve = _open_reserve()
        if accepted is not None and self.shedding.ongoing and time.monotonic() - self._last_shed > self.QUIET:
            self.shedding.end()
        return accepted

    def _shed(self) -> bool | None:
        """Accept one waiting connection on the reserve's file, answer it 503 and close it.

        True when one was; False when none was waiting (Linux takes a file for
        a connection before it looks for one); None when no file was to be had.
        """
        if self._reserve is not None:
            _close_now(self._reserve)
            self._reserve = None
        try:
            fd, _ = self.socket._accept()
        except BlockingIOError:
            self._reserve = _open_reserve()
            return False
        except OSError:
            return None
        with socket.socket(fileno=fd) as client:
            client.setblocking(False)
            with contextlib.suppress(OSError):
                client.recv(65536)  # what arrived of the request: left unread, the close would reset the answer
            with contextlib.suppress(OSError):
                client.send(self.ANSWER)  # a few hundred bytes: the socket's buffer takes them at once
        self._reserve = _open_reserve()  # the file the connection had
        metrics.CONNECTIONS_SHED.inc()
        return True

    def _resume(self) -> None:
        if not self.closed:
            self.start_accepting()


def _open_reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


# gunicorn's gevent worker makes its servers by this name: ours answers what it cannot accept
ggevent.StreamServer = SheddingServer


class SignalingWorker(GeventWorker):
    """`worker_class` of gunicorn.conf.py."""

    settings: Settings
    hub: Hub

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.connections: set[RequestClock] = set()  # every open connection, to close the idle ones on SIGTERM
        self._drained = Event()  # set when the worker is stopping and its last connection has closed

    def patch(self):
        """gevent's monkey-patching, without its one warning that does not apply here.

        The master imports the app's modules before the worker patches (this
        module, to find the worker class; the settings check, for tickets), and
        PyJWT's `jwks_client` imports ssl: gevent then warns that it was not
        patched. It fetches JWKS over HTTPS, which this service never asks of it.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _JWKS_CLIENT_UNPATCHED, MonkeyPatchWarning)
            super().patch()

    def load_wsgi(self):
        """The worker's settings are the app's: read from the environment once, in one place."""
        super().load_wsgi()
        _remember_trusted_addresses()
        _format_date_once_a_second()
        _read_settings_once(self.cfg)
        service = Service.of(self.wsgi)
        self.settings, self.hub = service.settings, service.hub
        status, headers, body = _error_response(errors.ServerBusy(), self.settings, None, "-")
        SheddingServer.ANSWER = _http_bytes(status, [(n, v) for n, v in headers if n != "X-Request-Id"], body)

    def handle(self, listener, client, addr):
        """Serve one connection, its reads and writes timed by a `RequestClock`."""
        if listener.fileno() == -1:  # the stopping worker closed its listener since accepting: as if still queued
            client.close()  # (gunicorn would log the listener's EBADF with a traceback)
            return
        clock = RequestClock(client, self.settings.request_read_timeout, self.cfg.keepalive)
        self.connections.add(clock)
        metrics.OPEN_CONNECTIONS.inc()
        metrics.note_memory(metrics.MEMORY_EVERY)
        if not self.alive:  # accepted in the moment before the stopping worker closes its listener
            clock.stop()
        try:
            super().handle(listener, clock, addr)
        finally:
            self.connections.discard(clock)
            metrics.OPEN_CONNECTIONS.dec()
            if not self.alive and not self.connections:
                self._drained.set()

    def handle_exit(self, sig, frame):
        """SIGTERM: stop now, not once every idle keep-alive connection has run out `graceful_timeout`."""
        super().handle_exit(sig, frame)
        if self.booted:  # before, the app is still loading and no connection is open: gunicorn's loop ends at once
            gevent.spawn(self._stop)

    def _stop(self) -> None:
        """End held polls and streams, close idle connections, and exit once the last request is answered.

        gunicorn's loop would notice the stop within a second and then wait for
        every connection, kept-alive ones too, up to `graceful_timeout`. Exiting
        from here is gunicorn's own way for gevent workers (`handle_quit`); its
        loop still forces the end if a request outlasts `graceful_timeout`.
        """
        self.hub.close()
        for clock in tuple(self.connections):
            clock.stop()
        if self.connections:
            self._drained.wait()
        # Leave without the interpreter's teardown: under gevent it would run logging's handler clean-up after
        # gevent's thread module is gone, and print a traceback for nothing. The logs are flushed first.
        logging.shutdown()
        os._exit(0)

    def timeout_ctx(self):
        """No clock around reading a request's headers: the connection's `RequestClock` keeps time."""
        return contextlib.nullcontext()

    def handle_request(self, listener_name, req, sock, addr):
        """Run the app on one request; once answered, the connection waits for the next under `keepalive`."""
        try:
            _check_transfer_coding(req)
            return super().handle_request(listener_name, req, sock, addr)
        except ClientStoppedReading as exc:
            self.log.info("Reset the connection of %s: %s", addr[0] if addr else "-", exc)
            raise StopIteration from None  # gunicorn closes the connection; the app's iterator was closed
        finally:
            sock.await_next_request()

    def handle_error(self, req, client, addr, exc):
        """Answer a request the app could not: with the protocol's JSON error, never an HTML page."""
        if req is None and isinstance(exc, http_errors.InvalidHeader):
            req = exc.req  # the request whose header it was, when known
        headers = dict(req.headers) if req is not None else {}
        error = _as_error(exc)
        rid = request_id(headers.get("X-REQUEST-ID"))
        ip = addr[0] if addr else "-"
        if error.status >= 500 and not isinstance(error, errors.UnsupportedTransferCoding):
            self.log.exception("Error handling request (request_id=%s)", rid)
        else:
            self.log.info("Refused a request from %s: %s %s (request_id=%s)", ip, error.status, error.code, rid)
        status, response_headers, body = _error_response(error, self.settings, headers.get("ORIGIN"), rid)
        if req is not None:
            self._log_access(req, client, ip, status, response_headers, body)
        try:
            util.write_nonblock(client, _http_bytes(status, response_headers, body))
        except Exception:
            self.log.debug("Failed to send error message.")

    def _log_access(self, req, client, ip, status, headers, body):
        environ = default_environ(req, client, self.cfg)
        environ["REMOTE_ADDR"] = ip
        resp = Response(req, client, self.cfg)
        resp.status, resp.status_code = STATUS_LINES[status], status
        resp.headers, resp.sent = headers, len(body)
        self.log.access(resp, req, environ, timedelta(0))


def _read_settings_once(cfg) -> None:
    """Copy gunicorn's settings into its config object, where reading one is a plain attribute.

    gunicorn reads a setting through `Config.__getattr__` and the setting's
    `get()`, a dozen times per request (3 % of a busy worker's CPU). In a
    worker they no longer change (a reload starts new workers). Names the
    class itself defines (`is_ssl`, `worker_class`, ...) stay as they are.
    """
    for name, setting in cfg.settings.items():
        if not hasattr(type(cfg), name):
            object.__setattr__(cfg, name, setting.get())


def _remember_trusted_addresses() -> None:
    """Decide once per client address whether it may set forwarded headers, not once per request.

    gunicorn parses the peer's address into an `ipaddress` object on every
    request to check it against `forwarded_allow_ips` (4 % of a busy worker's
    CPU). The answer for one address cannot change within a worker (the
    setting is read at the worker's start), so it is kept, for the first
    4,096 addresses seen; past them, asked again.
    """
    check = gunicorn_message._ip_in_allow_list
    answers: dict[str, bool] = {}

    def remembered(ip: str, allow_list, networks) -> bool:
        answer = answers.get(ip)
        if answer is None:
            answer = check(ip, allow_list, networks)
            if len(answers) < 4096:
                answers[ip] = answer
        return answer

    gunicorn_message._ip_in_allow_list = remembered


def _format_date_once_a_second() -> None:
    """Format the `Date` header once a second, not once per answer.

    gunicorn formats it anew for every answer (`util.http_date`, 5 µs through
    `email.utils`: 1-2 % of a busy worker's CPU), and it changes once a second.
    """
    formatted = util.http_date
    last: tuple[int, str] = (-1, "")

    def http_date(timestamp: float | None = None) -> str:
        nonlocal last
        if timestamp is not None:
            return formatted(timestamp)
        second = int(time.time())
        if last[0] != second:
            last = (second, formatted(second))
        return last[1]

    util.http_date = http_date


class ClientStoppedReading(TimeoutError):
    """A write found no room for WRITE_TIMEOUT seconds: the client no longer reads its answer."""


class RequestClock:
    """The client's socket, every wait on it bounded: by REQUEST_READ_TIMEOUT while a request arrives,
    by `keepalive` while the connection waits for the next one, by WRITE_TIMEOUT while an answer leaves.

    When the worker stops (`stop`), a connection waiting for a request is closed at once.
    """

    def __init__(self, sock: socket.socket, read_timeout: float, keepalive: float,
                 write_timeout: float = WRITE_TIMEOUT):
        self._sock = sock
        self._read_timeout = read_timeout
        self._keepalive = keepalive
        self._write_timeout = write_timeout
        # The first request's clock starts when the connection opens: sending nothing is no way around it.
        self._deadline: float | None = time.monotonic() + read_timeout
        self._between_requests = True  # no byte of the next request has arrived
        self._stopping = False

    def __getattr__(self, name: str):
        return getattr(self._sock, name)

    def await_next_request(self) -> None:
        """A request was answered: the connection is idle until the next one's first byte."""
        self._deadline = None
        self._between_requests = True

    def stop(self) -> None:
        """The worker is stopping: close now if no request is under way, else once its answer is written.

        A request whose bytes have arrived but are not read yet is under way: it is served.
        """
        self._stopping = True
        if self._between_requests and not _readable(self._sock):
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the greenlet waiting in `recv`

    def recv(self, size: int) -> bytes:
        if self._stopping and self._between_requests:
            try:
                return self._recv(size, 0.0)  # a request already in the socket is served; none is waited for
            except TimeoutError:
                return b""
        if self._deadline is None:
            try:
                data = self._recv(size, self._keepalive)
            except TimeoutError:
                return b""  # idle past keepalive: gunicorn closes it, as when the client does
            self._deadline = time.monotonic() + self._read_timeout
            return data
        try:
            return self._recv(size, self._deadline - time.monotonic())
        except TimeoutError:
            raise errors.RequestTimeout.about(seconds=self._read_timeout) from None

    def _recv(self, size: int, timeout: float) -> bytes:
        """Read, waiting at most `timeout` seconds for the client.

        Past the deadline the read still takes what has arrived: the clock is
        on the client, and bytes that wait in the socket because the worker was
        busy were sent in time.
        """
        self._sock.settimeout(max(timeout, 0.0))
        try:
            data = self._sock.recv(size)
        except BlockingIOError:  # nothing has arrived, and no time is left to wait for it
            raise TimeoutError from None
        except OSError:
            if self._stopping and self._between_requests:
                return b""  # `stop` shut the connection while it waited for a request
            raise
        finally:
            self._sock.settimeout(None)
        if data:
            self._between_requests = False
        return data

    def sendall(self, data: bytes) -> None:
        """Send all of `data`, as long as the client takes some of it every WRITE_TIMEOUT seconds.

        A slow client that reads is served however long a large answer takes;
        one that stops reading is reset, its unsent bytes dropped.
        """
        view = memoryview(data)
        while view:
            view = view[self.send(view):]

    def send(self, data, flags: int = 0) -> int:
        return self._timed_write(self._sock.send, data, flags)

    def sendfile(self, file, offset: int = 0, count: int | None = None) -> int:
        return self._timed_write(self._sock.sendfile, file, offset, count)  # gevent's: send() in a loop

    def _timed_write(self, write, *args):
        self._sock.settimeout(self._write_timeout)
        try:
            return write(*args)
        except TimeoutError:
            # Reset on close: a FIN queued behind bytes that will never be read would keep them in the kernel.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raise ClientStoppedReading(f"it took no byte of its answer for {self._write_timeout:g} s") from None
        finally:
            self._sock.settimeout(None)


def _readable(sock: socket.socket) -> bool:
    """Whether bytes (or the client's close) wait in the socket, asked of the kernel without yielding."""
    poller = _POLL()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _check_transfer_coding(req) -> None:
    """501 for a body in any transfer coding but chunked: the one the server decodes.

    gunicorn takes `gzip, chunked` (and `deflate`, `compress`, `identity`)
    and hands on the body still compressed, which the app would store as if plain.
    """
    for name, value in req.headers:
        if name == "TRANSFER-ENCODING" and any(coding.strip(" \t").lower() != "chunked" for coding in value.split(",")):
            refused = errors.UnsupportedTransferCoding
            raise refused(f"{refused.default_message}, not {value!r:.60}")


def _as_error(exc: BaseException) -> errors.SignalingError:
    if isinstance(exc, errors.SignalingError):
        return exc
    for kinds, kind in _GUNICORN_ERRORS:
        if isinstance(exc, kinds):
            detail = str(exc)[:200]
            return kind(f"{kind.default_message}: {detail}" if kind is not errors.SignalingError and detail else None)
    return errors.SignalingError()


def _error_response(
    error: errors.SignalingError, settings: Settings, origin: str | None, rid: str,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) as the app would answer the error; the connection then closes."""
    body, headers = error_answer(settings, origin, rid, error)
    return error.status, [*headers, ("Connection", "close")], body


def _http_bytes(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = f"HTTP/1.1 {STATUS_LINES[status]}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (head + "\r\n").encode("latin-1") + body
