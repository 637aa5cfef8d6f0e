"""Request bodies parse to the value the standard library gives, whichever parser ran (protocol.parse_json).

orjson parses most bodies; these are the values where it would differ (an
integer past 64 bits becomes a float) or refuse (a lone surrogate, deep
nesting), and a bad body must still be the standard library's 400.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signaling import errors
from signaling.protocol import parse_json


def same(a, b) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0, -0.0 is not 0.0)."""
    return json.dumps(a) == json.dumps(b) and repr(a) == repr(b)


@pytest.mark.parametrize("body", [
    b'{"n": 123456789012345678901234}',
    b'{"n": -9223372036854775809}',
    b'{"n": 18446744073709551616}',
    b'{"n": 18446744073709551615, "m": -9223372036854775808}',
    b'[1, [2, [99999999999999999999999999999999]]]',
    b'{"sdp": "o=- 12345678901234567890 2 IN IP4 127.0.0.1", "n": 1e300}',
    b'{"t": 9.3e18, "u": -1e19}',
    b'"\\ud800"',
    b'{"a": 1, "a": 2}',
    b'\xef\xbb\xbf{"bom": true}',
    b'[' * 300 + b']' * 300,
    b'{"x": -0.0, "y": -0, "z": 4.9e-325}',
])
def test_a_body_parses_to_what_the_standard_library_gives(body):
    assert same(parse_json(body), json.loads(body))


@pytest.mark.parametrize("body", [b"NaN", b'{"n": Infinity}', b"1e400", b"[1,]", b'{"a": 1}x', b'"\xff"', b""])
def test_a_bad_body_is_bad_json(body):
    with pytest.raises(errors.BadJson):
        parse_json(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_comes_back_as_the_standard_library_reads_it(value):
    body = json.dumps(value).encode()
    assert same(parse_json(body), json.loads(body))
