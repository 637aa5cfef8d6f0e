"""gunicorn's access log line, written directly.

gunicorn formats its access line from a dict of every request header,
response header and environ entry, built for each request: 6 % of a busy
worker's CPU. This logger writes the one line we use, with the same fields:

    127.0.0.1 "GET /rooms/r1/peers/bob/messages" 200 97 3ms <4711> request_id=6f1c...

Never a query string or a header that might hold a token: method, path,
status, bytes sent, milliseconds, worker pid, request id. What a client
chose (the path, a forwarded address) is escaped (logs.printable): a request
is one line, whatever its path holds.
"""

from __future__ import annotations

import os
import traceback

from gunicorn.glogging import Logger

from .logs import printable


class AccessLogger(Logger):
    """Set `logger_class` to this; `accesslog` still says where lines go (unset: none)."""

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        request_id = "-"
        for name, value in resp.headers:
            if name.lower() == "x-request-id":
                request_id = value
        try:
            self.access_log.info(
                '%s "%s %s" %s %s %dms <%d> request_id=%s',
                printable(environ.get("REMOTE_ADDR", "-")), printable(environ["REQUEST_METHOD"]),
                printable(environ.get("PATH_INFO", "")), resp.status_code, resp.sent,
                request_time.total_seconds() * 1000, os.getpid(), printable(request_id),
            )
        except Exception:
            self.error(traceback.format_exc())
