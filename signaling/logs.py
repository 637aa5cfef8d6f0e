"""Log lines a client cannot forge: every value that came with a request is escaped before it is written.

A path, a header or a forwarded address may hold a newline (a second, made-up
line), a quote (a field that ends early) or an ESC (an escape sequence for the
operator's terminal). `printable` writes each such character as a Python-style
escape (`\\x0a`, `\\"`, `\\\\`), so one request stays one line and the original
can be read back. The access log (accesslog.py) calls it on each field; the
app's own log lines go through `Formatter`, which calls it on each argument.

Every line of the log, gunicorn's, the access log's and the app's, has one
format (`LINE`): a timestamp (ISO 8601, milliseconds, the UTC offset), the
process, the level, the logger, the message; a line written for a request ends
with its `request_id=`. And a condition that lasts (Redis away, the open-file
limit reached) is one `Episode`: a line when it starts, one when it ends.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time

_QUOTES = {'"': '\\"', "\\": "\\\\"}


def printable(value: object) -> str:
    """`value` as text with no control or unprintable character, quote or backslash left as it was."""
    text = str(value)
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(_escape(char) for char in text)


def _escape(char: str) -> str:
    if char in _QUOTES:
        return _QUOTES[char]
    if char.isprintable():
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


#: the one line format of every log line (gunicorn's and the access log's too: accesslog.AccessLogger.setup)
LINE = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"


class Formatter(logging.Formatter):
    """`LINE`, whose message arguments are escaped: the message's own words are the code's, not a client's.

    A record that carries a `request_id` (http.RequestIdFilter's) other than `-` ends with `request_id=…`.
    """

    def __init__(self, fmt: str | None = LINE, datefmt: str | None = None, style: str = "%", **kwargs):
        super().__init__(fmt, datefmt, style, **kwargs)
        self._second: tuple[int, str, str] = (-1, "", "")  # the last second formatted: its date and time, its offset

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        if datefmt:
            return datetime.datetime.fromtimestamp(record.created).astimezone().strftime(datefmt)
        return self.timestamp(record.created)

    def timestamp(self, created: float) -> str:
        """LINE's `asctime` of a time.time(): ISO 8601, milliseconds, the UTC offset."""
        # Every access line asks: the local time of each second is worked out once (a third of the line's cost).
        second = int(created)
        if self._second[0] != second:
            text = datetime.datetime.fromtimestamp(second).astimezone().isoformat(timespec="seconds")
            self._second = (second, text[:19], text[19:])
        _, date_time, offset = self._second
        return f"{date_time}.{int((created - second) * 1000):03d}{offset}"

    def format(self, record: logging.LogRecord) -> str:
        line = self._escaped_format(record)
        request_id = getattr(record, "request_id", "-")
        return line if request_id == "-" else f"{line} request_id={request_id}"

    def _escaped_format(self, record: logging.LogRecord) -> str:
        if record.args:
            args = record.args
            escaped = (
                {name: _escaped(value) for name, value in args.items()} if isinstance(args, dict)
                else tuple(_escaped(value) for value in args)
            )
            record = logging.makeLogRecord({**record.__dict__, "args": escaped})
        return super().format(record)


def _escaped(value: object) -> object:
    """Text escaped; numbers and the like as they are, so `%d` and `%.1f` still format them."""
    return printable(value) if isinstance(value, str) else value


class Episode:
    """A condition that lasts, logged twice: when it starts (`begin`, at WARNING) and when it ends (`end`, at INFO).

    However often it is seen meanwhile (a loop's tick each second, each refused
    connection), it is one line each way; the end says how long it lasted and
    how often it was seen.
    """

    def __init__(self, log: logging.Logger, what: str):
        self.log, self.what = log, what
        self._since: float | None = None
        self._seen = 0
        self._lock = threading.Lock()

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def begin(self, detail: object = "") -> None:
        """Seen (again): the first time, one line."""
        with self._lock:
            self._seen += 1
            if self._since is not None:
                return
            self._since = time.monotonic()
        self.log.warning("%s%s", self.what, f": {detail}" if detail else "")

    def end(self) -> None:
        """Over: one line, if it was under way."""
        with self._lock:
            if self._since is None:
                return
            lasted, seen = time.monotonic() - self._since, self._seen
            self._since, self._seen = None, 0
        self.log.info("%s: over after %.1f s (seen %d times)", self.what, lasted, seen)
