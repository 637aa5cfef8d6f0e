"""gunicorn settings: gevent workers, bind from $HOST and $PORT, workers from $WEB_CONCURRENCY.

Every value comes from signaling.config.Settings, which checks them all; the
hooks below run signaling/startup.py's checks once, in the master.
"""

import logging

from signaling import startup

# Before anything imports prometheus_client: every worker writes its metrics here, /metrics sums them.
# (A configuration reload runs this file again: the folder is set by then, and kept.)
startup.metrics_folder()

from signaling.config import settings_or_exit  # noqa: E402

_settings = settings_or_exit()  # every setting, gunicorn's below included, is checked there

if (_settings.redis_url or "").startswith("rediss"):  # a TLS Redis whose certificate is not trusted: one line, now
    import sys

    from signaling.backends.redis.connection import check_trust
    from signaling.config import ConfigError

    try:
        check_trust(_settings)
    except ConfigError as exc:
        sys.exit(f"signaling: bad configuration: {exc}")

# IPv6 addresses are bound in brackets.
bind = f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"
# gevent's worker, with JSON answers of its own, REQUEST_READ_TIMEOUT on slow requests, a write timeout
# on clients that stop reading, new connections shed past the open-file limit, and a prompt stop on SIGTERM
# (held polls and streams end, idle connections close).
worker_class = "signaling.worker.SignalingWorker"
workers = _settings.web_concurrency
# One held poll is one open connection, one open file: leave room for thousands per worker.
worker_connections = _settings.worker_connections
# On SIGTERM held polls end at once; a request still running after this is cut off.
graceful_timeout = _settings.graceful_timeout
keepalive = 75
accesslog = "-"
# One line per request, never a query string or header that might hold a token (see signaling/accesslog.py);
# it also gives gunicorn's own lines the one format of every line, with its timestamp (signaling/logs.py LINE).
logger_class = "signaling.accesslog.AccessLogger"
errorlog = "-"
# The app's own log lines (logging's root logger) go to stderr beside gunicorn's, with the request's id.
# Only these keys: gunicorn merges them over its defaults, and its own loggers stay as it sets them.
logconfig_dict = {
    "root": {"level": "INFO", "handlers": ["app"]},
    "loggers": {},
    "handlers": {"app": {"class": "logging.StreamHandler", "filters": ["request_id"], "formatter": "app"}},
    "filters": {"request_id": {"()": "signaling.http.RequestIdFilter"}},
    # a path or header in a message is escaped: one record, one line (signaling/logs.py)
    "formatters": {"app": {"()": "signaling.logs.Formatter"}},
}
# No line names a thread or a multiprocessing process: each record (one a request) skips looking them up.
logging.logThreads = logging.logMultiprocessing = False
# ... nor where in the code it was written (logging's documented switch: no frame walk per record).
logging._srcfile = None
# gunicorn's control socket sits at one path per user: several instances on one host would collide.
control_socket_disable = True
loglevel = _settings.log_level.lower()


def on_starting(server):
    """Once, before binding: refuse an address that cannot be listened on (`python -m signaling` asked already,
    before gunicorn's first line; this covers gunicorn started by hand); raise the open-file limit."""
    startup.check_listen(_settings)
    warning = startup.raise_open_files(_settings)
    if warning:
        server.log.warning(warning)
    server.log.info(startup.listening_line(_settings))


def on_exit(server):
    """The master is leaving: the metrics folder it made goes with it."""
    startup.remove_metrics_folder()


def post_request(worker, req, environ, resp):
    """Let other greenlets run between two requests of one connection.

    A keep-alive connection whose next request is already buffered never
    blocks in recv, so without this its greenlet would keep the worker until
    the client paused, and woken polls would wait behind a flood of sends.
    A send yields before its answer already (signaling/messages.py): one turn
    per request is enough.
    """
    import gevent

    from signaling.http import YIELDED

    if not environ.get(YIELDED):
        gevent.sleep(0)


def child_exit(server, worker):
    """A dead worker's held-polls gauge must stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
