"""The one HTTP layer: what every request of the API shares, whichever way it is answered.

A `Request` reads one request (query arguments, headers, token, client IP,
the body once and at most MAX_MESSAGE_BYTES, a poll's cursor, limit and
wait) and gives it its id. Answers are JSON with the same headers
(`X-Request-Id`, CORS); errors are the protocol's JSON body. Each route is
counted in its metric. Two ways in, one table (routes.py):

- `Front.answer`, plain WSGI, answers the routes marked `plain` (polls and
  sends: nearly all requests) straight from the environ;
- every other request goes on to Flask, which `install` gives the same
  request, headers and errors, behind one error handler.

The hot path's rules (a held poll keeps its greenlet's C stack for as long
as it is held: every C frame under the wait costs memory, per held poll;
tests/unit/test_held_stack.py guards the figure):

1. The WSGI entry is a bound method (`Front.answer`), never an instance:
   calling an instance goes through its type's `__call__` slot, in C, which
   nests a C frame (4.0 KiB instead of 5.1 of saved C stack per held poll).
2. No `f(*args)` or `f(**kwargs)` between the entry and the wait: CPython
   makes those calls through C too; spell the arguments out (`match.group(1)`).
3. The query string is split by hand, and unquoted only when it holds `%` or
   `+`: `urllib.parse.parse_qsl` costs more than the rest of reading a poll.
4. Flask answers on a greenlet of its own, which ends with the request
   (`Front.flask`): each greenlet keeps the deepest page of Python frames it
   ever touched, and a join through Flask and the backend reaches a page
   deeper than the connection's later held stream or poll ever does
   (3.6 KiB of RSS per held stream of a connection that joined first).
"""

from __future__ import annotations

import io
import ipaddress
import logging
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from http import HTTPStatus
from typing import NamedTuple

from flask import Flask, Response, g, has_request_context, jsonify, request
from greenlet import greenlet
from werkzeug.exceptions import HTTPException

from . import errors, metrics, protocol
from .config import Settings
from .service import Service

log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], object]
#: set in a request's environ once its answer let other greenlets run (messages.send): gunicorn.conf.py's
#: `post_request` then need not yield again
YIELDED = "signaling.yielded"
#: an HTTP status line's text by status: "404 Not Found"
STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


class Route(NamedTuple):
    """One endpoint: its method, its path as the OpenAPI document spells it, and its view.

    A view is `view(service, request, *path values)`; a plain one answers
    `(status, JSON text)` or a stream (an iterable of chunks with its own
    `headers(...)`, see stream.py), a Flask one a Flask `Response`. `count(status)`,
    if given, counts each answer in the endpoint's metric (every answer is also
    counted in `signaling_requests_total`). `cors=False`: no CORS headers, no
    page of any origin may read it (/metrics).
    """

    method: str
    path: str
    view: Callable
    plain: bool = False
    count: Callable[[int], object] | None = None
    cors: bool = True

    @property
    def endpoint(self) -> str:
        """Its name in logs and metrics: `GET /rooms/{room}/peers`."""
        return f"{self.method} {self.path}"


# -- reading a request


class Request:
    """What a view reads of one request, straight from the WSGI environ."""

    __slots__ = ("environ", "args", "id", "_body_limit", "_body")

    def __init__(self, environ: dict, body_limit: int):
        self.environ = environ
        self.id = request_id(environ.get("HTTP_X_REQUEST_ID"))
        self._body_limit = body_limit
        self._body: bytes | None = None
        self.args: dict[str, str] = {}
        for pair in environ.get("QUERY_STRING", "").split("&"):  # rule 3
            name, _, value = pair.partition("=")
            if "%" in pair or "+" in pair:  # parse_qsl's work, paid only by a query that needs it
                name, value = urllib.parse.unquote_plus(name), urllib.parse.unquote_plus(value)
            if name:
                self.args.setdefault(name, value)  # the first of repeated parameters, as werkzeug's args.get

    def header(self, name: str) -> str | None:
        return self.environ.get("HTTP_" + name.upper().replace("-", "_"))

    def token(self) -> str | None:
        """The token of an `Authorization: Bearer <token>` header, or None."""
        scheme, _, token = (self.environ.get("HTTP_AUTHORIZATION") or "").partition(" ")
        return (token.strip() or None) if scheme.lower() == "bearer" else None

    def client_ip(self) -> str:
        """The socket's address, or X-Forwarded-For's when TRUSTED_PROXIES put ProxyFix in front."""
        return self.environ.get("REMOTE_ADDR") or "unknown"

    def body(self) -> bytes:
        """The whole body, read from the client once, or 413 past MAX_MESSAGE_BYTES."""
        if self._body is None:
            self._body = read_body(self.environ, self._body_limit)
        return self._body

    def cursor(self) -> int:
        """The poll's cursor: `after=N`, or the `Last-Event-ID` header (1.1); both given, they must agree."""
        after = self.args.get("after")
        header = (self.header("Last-Event-ID") or "").strip()
        if not header:
            return 0 if after is None else _whole(after, "after", 0)
        cursor = _whole(header, "Last-Event-ID", 0)
        if after is not None and _whole(after, "after", 0) != cursor:
            raise errors.BadQuery(f"after={after} and Last-Event-ID: {header} disagree; give one of them")
        return cursor

    def limit(self) -> int:
        raw = self.args.get("limit")
        return protocol.MAX_LIMIT if raw is None else _whole(raw, "limit", 1, protocol.MAX_LIMIT)

    def wait(self, cap: float) -> float:
        """Seconds to hold the poll: any number >= 0, the larger ones capped at POLL_WAIT."""
        raw = self.args.get("wait")
        if raw is None:
            return cap
        if len(raw) > _MAX_NUMBER_TEXT or not _NUMBER.fullmatch(raw):
            raise errors.BadQuery(f"'wait' must be a number of seconds >= 0 like 25 or 0.5, got {raw!r:.40}")
        return min(float(raw), cap)


#: a decimal number, as JSON writes one (leading zeros and a bare "." allowed): no "1_0", "inf" or "nan"
_NUMBER = re.compile(r"([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


#: the most digits an integer from a client may have: 2**63 has 19 (Python's int() refuses past 4,300: a 500)
MAX_DIGITS = 19
#: "wait" in more characters than this is no number a client means
_MAX_NUMBER_TEXT = 32


def whole_number(text: str) -> int | None:
    """The integer that `text` spells in 1-MAX_DIGITS ASCII digits (no sign, no space), or None."""
    if 0 < len(text) <= MAX_DIGITS and text.isascii() and text.isdigit():
        return int(text)
    return None


def _whole(raw: str, name: str, low: int, high: int | None = None) -> int:
    """An integer query parameter or header, or a 400 naming it and its bounds."""
    value = whole_number(raw)
    if value is None or value < low or (high is not None and value > high):
        bounds = f"{low}-{high}" if high is not None else f">= {low} of at most {MAX_DIGITS} digits"
        raise errors.BadQuery(f"'{name}' must be an integer {bounds}, got {raw!r:.40}")
    return value


def request_id(given: str | None) -> str:
    """A request's id: the caller's `X-Request-Id` if sane, else a new one.

    It comes back in the `X-Request-Id` header and in error bodies, and stands
    in the app's log lines and gunicorn's access log.
    """
    return given if given and _REQUEST_ID.fullmatch(given) else os.urandom(16).hex()


def read_body(environ: dict, limit: int) -> bytes:
    """A request's whole body, or 413 past `limit` bytes, with a Content-Length or without one (chunked).

    A body without a length is read one byte past the limit: that tells a
    body of exactly the limit from a longer one, which must not be cut to fit.
    """
    length = environ.get("CONTENT_LENGTH")
    if not length and "HTTP_TRANSFER_ENCODING" not in environ:
        return b""  # neither a length nor chunked: no body (RFC 9112, 6.3)
    stream = environ["wsgi.input"]
    size = whole_number(length) if length else None
    if length and size is None:
        raise errors.BadRequest(f"Content-Length must be a number of bytes (1-{MAX_DIGITS} digits), got {length!r:.40}")
    if size is not None and size > limit:
        raise errors.PayloadTooLarge(f"the body is larger than MAX_MESSAGE_BYTES ({limit} bytes)")
    try:
        data = stream.read(limit + 1 if size is None else size)
    except errors.SignalingError:  # 408: it did not arrive in time (signaling/worker.py)
        raise
    except Exception as exc:  # the server could not read it: a malformed chunk, or the client went away
        raise errors.BadRequest(f"the body could not be read: {exc}"[:300]) from None
    if len(data) > limit:
        raise errors.PayloadTooLarge(f"the body is larger than MAX_MESSAGE_BYTES ({limit} bytes)")
    return data


# -- CORS: which origins may read answers, and what a preflight allows
#
# flask-cors could serve only the Flask side, and it would not say two things the
# protocol and its tests ask (flask-cors 6.0.5): it answers Access-Control-Allow-Headers
# with only those of the preflight's Access-Control-Request-Headers that it allows, never
# the whole list, and with one listed origin it sends no `Vary: Origin`.

#: what a preflight allows, and for how long a browser may cache the answer (a peer polls one URL)
PREFLIGHT = [
    ("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS"),
    ("Access-Control-Allow-Headers", "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"),
    ("Access-Control-Max-Age", "86400"),
]
EXPOSE = ("Access-Control-Expose-Headers", "Location, Retry-After, X-Request-Id")


def cors_headers(settings: Settings, origin: str | None, preflight: bool = False) -> list[tuple[str, str]]:
    """The CORS headers of an answer to a request from `origin` (a preflight's, or any other's)."""
    if "*" in settings.allowed_origins:
        found = [("Access-Control-Allow-Origin", "*")]
    elif origin in settings.allowed_origins:
        found = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
    else:
        found = [("Vary", "Origin")]  # refused, and a cache must not hand this answer to an allowed origin
    return found + PREFLIGHT if preflight else [*found, EXPOSE]


# -- answers without Flask


def json_answer(
    settings: Settings, origin: str | None, rid: str, body: str,
) -> tuple[bytes, list[tuple[str, str]]]:
    """A JSON answer written without Flask, and the headers every answer of the API carries."""
    data = body.encode()
    return data, [
        ("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("X-Request-Id", rid),
        *cors_headers(settings, origin),
    ]


def error_answer(
    settings: Settings, origin: str | None, rid: str, error: errors.SignalingError,
) -> tuple[bytes, list[tuple[str, str]]]:
    """The protocol's error body as a JSON answer, with the error's own headers (Retry-After, Allow)."""
    data, headers = json_answer(settings, origin, rid, protocol.dumps(error.body(rid)))
    return data, headers + error.headers()


#: the longest IP address text: IPv6 in full with an IPv4 tail (45) and a zone (`%eth0`)
_MAX_ADDRESS = 64


def forwarded_address_checked(wsgi_app: Callable, settings: Settings) -> Callable:
    """WSGI behind ProxyFix: a client address from X-Forwarded-For that is no IP address is refused (400).

    A trusted proxy writes the address it saw. Anything else (a name, digits,
    8 KB of text) did not come through it, and would otherwise become the key
    of the per-IP limits and a field of the access log.
    """

    def checked(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        address, socket_address = environ.get("REMOTE_ADDR", ""), environ["werkzeug.proxy_fix.orig"]["REMOTE_ADDR"]
        if address == socket_address or _is_ip(address):
            return wsgi_app(environ, start_response)
        environ["REMOTE_ADDR"] = socket_address  # the access log names who sent it
        error = errors.BadRequest(f"X-Forwarded-For must end with the client's IP address, got {address!r:.60}")
        data, headers = error_answer(
            settings, environ.get("HTTP_ORIGIN"), request_id(environ.get("HTTP_X_REQUEST_ID")), error)
        start_response(STATUS_LINES[400], headers)
        return [data]

    return checked


def _is_ip(text: str) -> bool:
    if len(text) > _MAX_ADDRESS:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class Front:
    """WSGI: the plain routes here, every other request to `fallback` (the Flask app's own wsgi_app).

    Install `Front(...).answer`, the bound method (rule 1).
    """

    def __init__(self, service: Service, routes: Sequence[Route], fallback: Callable):
        self.service = service
        self.settings = service.settings
        self.fallback = fallback
        by_path: dict[str, dict[str, Route]] = {}
        for route in routes:
            if route.plain:
                by_path.setdefault(route.path, {})[route.method] = route
        #: (the path's pattern, its routes by method, what a 405 allows)
        self.paths = [
            (re.compile(re.sub(r"\{[^}]+\}", "([^/]+)", path)), methods, (*methods, "OPTIONS"))
            for path, methods in by_path.items()
        ]

    def answer(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        if method == "OPTIONS":  # preflights: Flask's
            return self.flask(environ, start_response)
        path = environ.get("PATH_INFO", "")
        for pattern, methods, allow in self.paths:  # noqa: B007 (read after the break)
            match = pattern.fullmatch(path)
            if match is not None:
                break
        else:
            return self.flask(environ, start_response)
        settings = self.settings
        request = Request(environ, settings.max_message_bytes)
        route = methods.get(method)
        try:
            if route is None:
                raise errors.MethodNotAllowed(f"{method} is not allowed on {path}", allow=allow)
            if pattern.groups == 2:  # rule 2: no *match.groups()
                answer = route.view(self.service, request, match.group(1), match.group(2))
            else:
                answer = route.view(self.service, request, match.group(1))
            if type(answer) is not tuple:  # a stream (stream.py): its checks passed, the server writes it as it comes
                metrics.child(metrics.REQUESTS, route.endpoint, 200).inc()
                start_response(STATUS_LINES[200], answer.headers(self.service, environ.get("HTTP_ORIGIN"), request.id))
                return answer
            status, body = answer
            data, headers = json_answer(settings, environ.get("HTTP_ORIGIN"), request.id, body)
        except Exception as exc:
            error = exc if isinstance(exc, errors.SignalingError) else _unexpected(method, path, request.id)
            status = error.status
            data, headers = error_answer(settings, environ.get("HTTP_ORIGIN"), request.id, error)
        if route is not None:
            metrics.child(metrics.REQUESTS, route.endpoint, status).inc()
            if route.count is not None:
                route.count(status)
        else:
            metrics.child(metrics.REQUESTS, "other", status).inc()
        start_response(STATUS_LINES[status], headers)
        return [data]

    def flask(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        """Flask's answer, made on a new greenlet that runs it at once and ends with it (rule 4).

        Its Python frames are on its own stack, freed when it ends, not on the
        connection's, which stays as shallow as a held poll or stream needs.
        """
        return greenlet(self.fallback).switch(environ, start_response)


def _unexpected(method: str, path: str, rid: str) -> errors.SignalingError:
    """A 500 for an error nobody expected (a bug): logged with its traceback."""
    log.exception("unhandled error on %s %s (request %s)", method, path, rid)
    return errors.SignalingError()


# -- the Flask side


#: werkzeug's own HTTP errors, answered in our JSON shape
_HTTP_ERRORS: dict[int, type[errors.SignalingError]] = {
    400: errors.BadRequest,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
}


def install(app: Flask, service: Service, routes: Sequence[Route]) -> None:
    """Serve `routes` on `app`: the plain ones by `Front`, the others as Flask views, all with one layer.

    Flask's routes get the same `Request` (its body read before any view, so a
    view that ignores its body cannot act on a refused request), the same
    answer headers and one error handler that makes anything a `SignalingError`.
    """
    settings = service.settings
    counted: dict[str, Callable[[int], object]] = {}
    private: set[str] = set()  # endpoints answered without CORS headers
    for route in routes:
        if not route.plain:
            app.add_url_rule(re.sub(r"\{([^}]+)\}", r"<\1>", route.path), route.endpoint,
                             _flask_view(service, route.view), methods=[route.method])
            if route.count is not None:
                counted[route.endpoint] = route.count
            if not route.cors:
                private.add(route.endpoint)
    app.wsgi_app = Front(service, routes, app.wsgi_app).answer  # rule 1

    @app.before_request
    def begin():
        g.request = current = Request(request.environ, settings.max_message_bytes)
        body = current.body()
        # what was read stays readable: Flask's form parser reads a FormData beacon from here
        request.environ["wsgi.input"] = io.BytesIO(body)
        request.environ["CONTENT_LENGTH"] = str(len(body))
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return Response(status=204)  # a preflight: answered before any view
        return None

    @app.errorhandler(Exception)
    def refuse(error: Exception):
        refused = _as_error(error, settings)
        response = json_response(refused.body(g.request.id if "request" in g else None), refused.status)
        response.headers.extend(refused.headers())
        return response

    @app.after_request
    def finish(response: Response) -> Response:
        endpoint = request.endpoint
        if request.method != "OPTIONS":
            name = "GET /static/{filename}" if endpoint == "static" else endpoint or "other"
            metrics.child(metrics.REQUESTS, name, response.status_code).inc()
        count = counted.get(endpoint)
        if count is not None:
            count(response.status_code)
        if "request" in g:
            response.headers["X-Request-Id"] = g.request.id
        if endpoint in private:
            return response
        for name, value in cors_headers(settings, request.headers.get("Origin"), request.method == "OPTIONS"):
            if name == "Vary":
                response.vary.add(value)
            else:
                response.headers[name] = value
        return response


def _flask_view(service: Service, view: Callable) -> Callable:
    """Flask's view function for `view`: Flask passes the path values by name."""

    def flask_view(**values):
        return view(service, g.request, **values)

    flask_view.__name__ = view.__name__
    return flask_view


def _as_error(error: Exception, settings: Settings) -> errors.SignalingError:
    """Any error of a Flask view or of Flask itself as the protocol's: ours, werkzeug's, the unexpected (500)."""
    if isinstance(error, errors.SignalingError):
        return error
    if not isinstance(error, HTTPException):
        return _unexpected(request.method, request.path, g.request.id if "request" in g else "-")
    kind = _HTTP_ERRORS.get(error.code or 500)
    if error.code == 413:
        message = f"the body is larger than MAX_MESSAGE_BYTES ({settings.max_message_bytes} bytes)"
    elif error.code == 405:
        message = f"{request.method} is not allowed on {request.path}"
    elif error.code == 404:
        message = f"no such resource: {request.path}"
    else:
        message = error.description
    if error.code == 405 and getattr(error, "valid_methods", None):
        return errors.MethodNotAllowed(message, allow=tuple(error.valid_methods))
    refused = (kind or errors.SignalingError)(message)
    if kind is None:
        refused.status, refused.code = error.code or 500, "http_error"
    return refused


def json_response(body: dict, status: int = 200, **headers: str) -> Response:
    """A Flask view's JSON answer."""
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers)
    return response


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every log record (`-` outside a Flask request).

    gunicorn.conf.py's `logconfig_dict` sets it on the app's log handler.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.request.id if has_request_context() and "request" in g else "-"
        return True
