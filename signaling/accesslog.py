"""gunicorn's access log line, written directly.

gunicorn formats its access line from a dict of every request header,
response header and environ entry, built for each request: 6 % of a busy
worker's CPU. This logger writes the one line we use, with the same fields:

    127.0.0.1 "GET /rooms/r1/peers/bob/messages" 200 97 3ms request_id=6f1c...

after the prefix every line has (logs.LINE): `2025-11-23T12:00:00.123+00:00 [4711] [INFO] gunicorn.access: `.

Never a query string or a header that might hold a token: method, path,
status, bytes sent, milliseconds, request id (the worker's pid and the time
come with every line: `setup` gives gunicorn's own lines the app's format,
logs.LINE). What a client
chose (the path, a forwarded address) is escaped (logs.printable): a request
is one line, whatever its path holds.
"""

from __future__ import annotations

import logging
import os
import time
import traceback

from gunicorn.glogging import Logger

from .logs import Formatter, printable


class AccessLogger(Logger):
    """Set `logger_class` to this; `accesslog` still says where lines go (unset: none)."""

    def setup(self, cfg):
        """gunicorn's handlers, as it sets them, in the one format of every line (logs.LINE)."""
        super().setup(cfg)
        for handler in (*self.error_log.handlers, *self.access_log.handlers):
            handler.setFormatter(Formatter())

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        request_id = "-"
        for name, value in resp.headers:
            if name.lower() == "x-request-id":
                request_id = value
        try:
            # escaped here, and handed over as a finished line: the formatter escapes only a record's arguments
            self._write(
                f'{printable(environ.get("REMOTE_ADDR", "-"))} "{printable(environ["REQUEST_METHOD"])} '
                f'{printable(environ.get("PATH_INFO", ""))}" {resp.status_code} {resp.sent} '
                f'{int(request_time.total_seconds() * 1000)}ms request_id={printable(request_id)}'
            )
        except Exception:
            self.error(traceback.format_exc())

    def _write(self, message: str) -> None:
        """One INFO line to each of the access log's handlers, as logging would write it, at a third of the cost.

        Each request writes one, and logging's way (a record, the caller's frame,
        filters, the format string) was 5 % of a busy worker's CPU. Handlers
        this cannot write to directly (gunicorn's syslog one) get the record.
        """
        created = time.time()
        record = None
        for handler in self.access_log.handlers:
            formatter = handler.formatter
            if type(handler) in (logging.StreamHandler, logging.FileHandler) and isinstance(formatter, Formatter):
                line = f"{formatter.timestamp(created)} [{os.getpid()}] [INFO] {self.access_log.name}: {message}\n"
                with handler.lock:
                    handler.stream.write(line)
                    handler.stream.flush()
            else:
                record = record or self.access_log.makeRecord(
                    self.access_log.name, logging.INFO, "", 0, message, None, None)
                handler.handle(record)
