"""Server-Sent Events (the HTML standard's `text/event-stream`), read from chunks of bytes cut anywhere.

A stream's body reaches the client in pieces that need not end at a line, nor
even at a character. The parser keeps what it has not finished and gives back
the events each piece completes, exactly as the standard's "interpreting an
event stream" says: lines end with CRLF, LF or CR; the `data` lines of one
event are joined with "\\n"; a blank line dispatches the event; a line that
starts with `:` is a comment (the server's heartbeat); `id` is kept for the
events after it; an event that the end of the body cuts off is never
dispatched, nor is its id taken as seen.
"""

from __future__ import annotations

import codecs
import dataclasses
import re

__all__ = ["Event", "EventStreamParser"]

#: The three line ends of the standard. (str.splitlines would also split on \v, \f, \x1c-\x1e, \x85, \u2028.)
LINE_END = re.compile(r"\r\n|\r|\n")


@dataclasses.dataclass(frozen=True)
class Event:
    """One dispatched event: its `type` ("message" unless an `event` field named one), `data`, and `id`."""

    type: str
    data: str
    id: str


class EventStreamParser:
    """Feed it a stream's body chunk by chunk; `feed` returns the events each chunk completed."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False  # until the first character: a leading byte order mark is dropped
        self._partial = ""  # the start of a line whose end has not arrived
        self._after_cr = False  # the last text ended with CR: an LF that starts the next ends that line
        self._data = ""
        self._type = ""
        self._id = ""  # the last `id` field, which the next dispatch makes the last event id
        #: The id of the last event dispatched: what a reconnect's Last-Event-ID carries.
        self.last_event_id = ""
        #: The last `retry` field, in milliseconds (None until one came).
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        text = self._decoder.decode(chunk)
        if text and not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")
        if not text:
            return []
        if self._after_cr and text[0] == "\n":
            text = text[1:]
        self._after_cr = text.endswith("\r")
        *lines, self._partial = LINE_END.split(self._partial + text)
        return [event for line in lines if (event := self._line(line)) is not None]

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data += value + "\n"
        elif field == "event":
            self._type = value
        elif field == "id" and "\0" not in value:
            self._id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, kind = self._data, self._type or "message"
        self._data = self._type = ""
        self.last_event_id = self._id
        if not data:
            return None
        return Event(kind, data[:-1], self._id)
