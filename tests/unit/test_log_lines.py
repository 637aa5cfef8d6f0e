"""Log lines a client cannot forge (signaling/logs.py): escaped, one line, and readable back.

The live access log is checked in test_hostile_values.py; these are the escaping rules themselves.
"""

from __future__ import annotations

import logging

import hypothesis
from hypothesis import strategies as st

from signaling.logs import Formatter, printable


def read_back(escaped: str) -> str:
    """What the operator recovers from a logged value: Python's own escapes, undone."""
    return escaped.encode("ascii", "backslashreplace").decode("unicode_escape")


@hypothesis.given(st.text())
def test_an_escaped_value_is_one_printable_line_and_reads_back(text):
    escaped = printable(text)
    assert escaped.isprintable()
    assert '"' not in escaped.replace('\\"', "").replace("\\\\", "")  # every quote is escaped
    assert read_back(escaped) == text


def test_the_escapes_are_the_ones_an_operator_knows():
    assert printable('/x\n127.0.0.1 "DELETE /a" 204') == '/x\\x0a127.0.0.1 \\"DELETE /a\\" 204'
    assert printable("\x1b[2J\\ \x85 \u2028 é") == "\\x1b[2J\\\\ \\x85 \\u2028 é"
    assert printable("/rooms/r1/peers/bob/messages") == "/rooms/r1/peers/bob/messages"


def record(message: str, *args) -> logging.LogRecord:
    return logging.LogRecord("signaling.messages", logging.ERROR, __file__, 1, message, args, None)


def test_the_app_log_escapes_what_a_request_brought_and_formats_the_rest():
    formatter = Formatter("%(levelname)s %(message)s")
    line = formatter.format(record("unhandled error on %s %s after %.1f s (%d)", "GET", "/x\n\x1b[31mforged", 2.5, 7))
    assert line == "ERROR unhandled error on GET /x\\x0a\\x1b[31mforged after 2.5 s (7)"
    assert formatter.format(record("no arguments")) == "ERROR no arguments"


def test_the_app_log_leaves_the_record_for_other_handlers_as_it_was():
    entry = record("on %s", "/a\nb")
    Formatter("%(message)s").format(entry)
    assert entry.args == ("/a\nb",) and entry.getMessage() == "on /a\nb"
