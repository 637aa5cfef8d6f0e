"""Log lines a client cannot forge: every value that came with a request is escaped before it is written.

A path, a header or a forwarded address may hold a newline (a second, made-up
line), a quote (a field that ends early) or an ESC (an escape sequence for the
operator's terminal). `printable` writes each such character as a Python-style
escape (`\\x0a`, `\\"`, `\\\\`), so one request stays one line and the original
can be read back. The access log (accesslog.py) calls it on each field; the
app's own log lines go through `Formatter`, which calls it on each argument.
"""

from __future__ import annotations

import logging

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


class Formatter(logging.Formatter):
    """A log format whose message arguments are escaped: the message's own words are the code's, not a client's."""

    def format(self, record: logging.LogRecord) -> str:
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
