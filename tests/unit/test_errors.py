"""Error messages: a template gets every name it uses, or the bug is raised, never a message with a hole."""

from __future__ import annotations

import pytest

from signaling import errors
from signaling.config import Settings


def test_a_template_is_filled_from_what_the_caller_names():
    error = errors.RoomFull.about(room="r1", settings=Settings(room_capacity=3))
    assert error.message == "room 'r1' is full (3 members)"
    assert errors.IdempotencyKeyReused.about(room="r1").message == errors.IdempotencyKeyReused.default_message


def test_a_name_the_template_needs_and_the_caller_left_out_is_a_loud_bug():
    with pytest.raises(KeyError, match=r"PeerNotFound.about\(\) needs 'to'"):
        errors.PeerNotFound.about(room="r1", peer="alice")
