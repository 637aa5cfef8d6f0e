"""The server: `create_app` builds the Flask app and the `Service` it runs."""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import logging
from pathlib import Path

from flask import Flask, Response, g, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from . import cors, errors, logs, protocol
from .backends import Backend, create_backend
from .config import Settings
from .hub import Hub
from .presence import KeepAlive, Reaper
from .tickets import Verifier

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

#: werkzeug's own HTTP errors, answered in our JSON shape
_HTTP_ERRORS: dict[int, type[errors.SignalingError]] = {
    400: errors.BadRequest,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
}


@dataclasses.dataclass
class Service:
    """The parts one process runs: settings, backend, held polls and streams, reaper, keep-alive of the streaming
    peers, and the join ticket check."""

    settings: Settings
    backend: Backend
    hub: Hub
    reaper: Reaper
    keep_alive: KeepAlive
    tickets: Verifier | None  # None: tickets are off, anyone may join

    @staticmethod
    def of(app: Flask) -> Service:
        """The service an app made by `create_app` runs: the one way to reach it."""
        return app.extensions["signaling"]

    def close(self) -> None:
        self.hub.close()
        self.reaper.stop()
        self.keep_alive.stop()
        self.backend.close()


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; without `settings` they come from the environment."""
    from .api import blueprint  # the views reach the service through Service.of
    from .messages import MessagesApp

    settings = settings or Settings.from_env()
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_message_bytes
    app.json.sort_keys = False

    tickets = Verifier.from_settings(settings)
    hub = Hub()
    backend = create_backend(settings, hub)
    backend.start()
    reaper = Reaper(backend, settings.reap_interval)
    reaper.start()
    # A stream is its peer's heartbeat: renewed in one backend call a tick, well within PEER_TTL.
    keep_alive = KeepAlive(backend, min(settings.stream_heartbeat, settings.peer_ttl / 3))
    keep_alive.start()
    service = app.extensions["signaling"] = Service(settings, backend, hub, reaper, keep_alive, tickets)

    # A bound method, not the instance: calling an instance's __call__ nests a C stack frame, and every
    # held poll's greenlet keeps its C stack (4.0 KiB instead of 5.1 per held poll, with the call below)
    app.wsgi_app = MessagesApp(service, app.wsgi_app).__call__
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(_forwarded_address_checked(app.wsgi_app, settings), x_for=settings.trusted_proxies)
    app.register_blueprint(blueprint)
    _install_request_ids(app)
    _install_body_limit(app, settings)
    _install_error_handlers(app, settings)
    _install_cors(app, settings)
    return app


#: the longest IP address text: IPv6 in full with an IPv4 tail (45) and a zone (`%eth0`)
_MAX_ADDRESS = 64


def _forwarded_address_checked(wsgi_app, settings: Settings):
    """WSGI behind ProxyFix: a client address from X-Forwarded-For that is no IP address is refused (400).

    A trusted proxy writes the address it saw. Anything else (a name, digits,
    8 KB of text) did not come through it, and would otherwise become the key
    of the per-IP limits and a field of the access log.
    """
    from .messages import error_answer

    def checked(environ: dict, start_response):
        address, socket_address = environ.get("REMOTE_ADDR", ""), environ["werkzeug.proxy_fix.orig"]["REMOTE_ADDR"]
        if address == socket_address or _is_ip(address):
            return wsgi_app(environ, start_response)
        environ["REMOTE_ADDR"] = socket_address  # the access log names who sent it
        error = errors.BadRequest(f"X-Forwarded-For must end with the client's IP address, got {address!r:.60}")
        request_id = protocol.request_id(environ.get("HTTP_X_REQUEST_ID"))
        data, headers = error_answer(settings, environ.get("HTTP_ORIGIN"), request_id, error)
        start_response("400 Bad Request", headers)
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


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every log record (`-` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


def _install_request_ids(app: Flask) -> None:
    """Every request gets an id: the caller's `X-Request-Id` if sane, else a new one.

    It comes back in the `X-Request-Id` header and in error bodies, and stands
    in the app's log lines and gunicorn's access log.
    """

    @app.before_request
    def assign():
        g.request_id = protocol.request_id(request.headers.get("X-Request-Id"))

    @app.after_request
    def echo(response: Response) -> Response:
        if "request_id" in g:
            response.headers["X-Request-Id"] = g.request_id
        return response

    root = logging.getLogger()
    if not root.handlers:  # under gunicorn: app logs go to stderr beside gunicorn's, with the id
        handler = logging.StreamHandler()
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(logs.Formatter(  # a path or header in a message is escaped: one record, one line
            "[%(asctime)s] [%(process)d] [%(levelname)s] [%(request_id)s] %(name)s: %(message)s"
        ))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def _install_body_limit(app: Flask, settings: Settings) -> None:
    """No body past MAX_MESSAGE_BYTES is accepted, with a Content-Length or without one (chunked).

    Every body is read here, before any view, so a view that ignores its body
    (a leave with its token in the header) cannot act on a refused request.
    """

    @app.before_request
    def read_body():
        g.body = protocol.read_body(request.environ, settings.max_message_bytes)
        # what was read stays readable: Flask's form parser reads a FormData beacon from here
        request.environ["wsgi.input"] = io.BytesIO(g.body)
        request.environ["CONTENT_LENGTH"] = str(len(g.body))


def _error_response(error: errors.SignalingError) -> Response:
    response = jsonify(error.body(g.get("request_id")))
    response.status_code = error.status
    response.headers.extend(error.headers())
    return response


def _install_error_handlers(app: Flask, settings: Settings) -> None:
    """Every error is JSON: ours, werkzeug's, and anything unexpected (a 500 is a bug)."""

    @app.errorhandler(errors.SignalingError)
    def signaling_error(error: errors.SignalingError):
        return _error_response(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        kind = _HTTP_ERRORS.get(error.code or 500)
        if error.code == 413:
            message = f"the body is larger than MAX_MESSAGE_BYTES ({settings.max_message_bytes} bytes)"
        elif error.code == 405:
            message = f"{request.method} is not allowed on {request.path}"
        elif error.code == 404:
            message = f"no such resource: {request.path}"
        else:
            message = error.description
        signaling_error = (kind or errors.SignalingError)(message)
        if kind is None:
            signaling_error.status, signaling_error.code = error.code or 500, "http_error"
        if error.code == 405 and getattr(error, "valid_methods", None):
            signaling_error = errors.MethodNotAllowed(message, allow=tuple(error.valid_methods))
        return _error_response(signaling_error)

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(errors.SignalingError())


def _install_cors(app: Flask, settings: Settings) -> None:
    """CORS for every response; preflights answer 204 before any view runs."""

    @app.before_request
    def preflight():
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return Response(status=204)
        return None

    @app.after_request
    def add_cors(response: Response) -> Response:
        for name, value in cors.headers(settings, request.headers.get("Origin"), request.method == "OPTIONS"):
            if name == "Vary":
                response.vary.add(value)
            else:
                response.headers[name] = value
        return response
