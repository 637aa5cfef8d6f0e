"""The Python client's Server-Sent Events parser, against the HTML standard's rules, fed in every possible cut."""

from __future__ import annotations

import pytest

from signaling.client.event_stream import Event, EventStreamParser


def parse(body: bytes, size: int | None = None) -> tuple[list[Event], EventStreamParser]:
    """Every event of `body` fed in chunks of `size` bytes (all at once when None), and the parser."""
    parser = EventStreamParser()
    size = size or len(body) or 1
    events = [event for at in range(0, len(body), size) for event in parser.feed(body[at:at + size])]
    return events, parser


#: What the server sends, with what the standard allows besides: every line end, a field without a
#: space, data on two lines, a named event, comments, a multi-byte character, a retry.
WIRE = (
    b"retry: 2000\n: open\n\n"
    b'id: 1\ndata: {"seq": 1}\n\n'
    b"id: 2\r\ndata: h\xc3\xa9llo \xe2\x9c\x93\r\n\r\n"
    b": heartbeat\rid:3\rdata: first line\rdata:second line\r\r"
    b"event: notice\ndata: named\n\n"
)
EXPECTED = [
    Event("message", '{"seq": 1}', "1"),
    Event("message", "héllo ✓", "2"),
    Event("message", "first line\nsecond line", "3"),
    Event("notice", "named", "3"),
]


@pytest.mark.parametrize("size", [None, 1, 2, 3, 5, 7])
def test_events_cut_anywhere_parse_as_when_whole(size):
    events, parser = parse(WIRE, size)
    assert events == EXPECTED
    assert parser.retry == 2000
    assert parser.last_event_id == "3"


@pytest.mark.parametrize("size", [None, 1])
def test_a_crlf_split_between_chunks_ends_one_line_not_two(size):
    # Were the LF after a chunk's final CR read as a line of its own, "a" would go out alone.
    events, _ = parse(b"data: a\r\ndata: b\r\n\r\n", size)
    assert events == [Event("message", "a\nb", "")]


@pytest.mark.parametrize("size", [None, 1])
def test_an_event_cut_off_by_the_end_is_not_dispatched_nor_its_id_seen(size):
    events, parser = parse(b'id: 1\ndata: {"seq": 1}\n\nid: 2\ndata: {"seq": 2}\n', size)
    assert events == [Event("message", '{"seq": 1}', "1")]
    assert parser.last_event_id == "1"  # a reconnect must not acknowledge seq 2, which never came


def test_an_id_alone_is_seen_when_its_blank_line_comes():
    _, parser = parse(b"id: 5\n\nid: 6\n")
    assert parser.last_event_id == "5"


def test_comments_and_blank_lines_alone_dispatch_nothing():
    assert parse(b": hi\n\n\n:\n\n: heartbeat\n\n")[0] == []


def test_a_data_line_without_a_value_is_an_empty_line_of_data():
    assert parse(b"data\n\ndata:\ndata:\n\n")[0] == [Event("message", "", ""), Event("message", "\n", "")]


def test_only_one_leading_space_of_a_value_is_dropped_and_unknown_fields_are_ignored():
    events, _ = parse(b"data:  two spaces\nfoo: bar\nDATA: shouted\n\n")
    assert events == [Event("message", " two spaces", "")]


def test_an_id_with_a_nul_is_ignored_and_an_id_holds_for_the_events_after_it():
    events, _ = parse(b"id: 7\ndata: a\n\nid: 8\0\ndata: b\n\ndata: c\n\n")
    assert [event.id for event in events] == ["7", "7", "7"]


def test_a_retry_that_is_not_digits_is_ignored():
    _, parser = parse(b"retry: 100\n\nretry: soon\n\nretry: 1.5\n\n")
    assert parser.retry == 100


@pytest.mark.parametrize("size", [None, 1, 2])
def test_a_leading_byte_order_mark_is_dropped_once(size):
    events, _ = parse(b"\xef\xbb\xbfdata: x\n\n", size)
    assert events == [Event("message", "x", "")]
    # Anywhere else it is data.
    assert parse(b"data: \xef\xbb\xbfx\n\n")[0] == [Event("message", "\ufeffx", "")]
