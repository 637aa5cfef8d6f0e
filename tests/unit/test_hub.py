"""A held poll answers with the envelopes its wake-ups carried only when they are surely all it needs."""

from __future__ import annotations

from signaling.hub import Waiter
from signaling.protocol import envelope_tail, with_seq


def envelope(seq: int) -> str:
    return with_seq(seq, envelope_tail("alice", "n", seq, 1.0))


def woken(*wake_ups: int | None) -> Waiter:
    waiter = Waiter("r1", "bob", 1)
    for seq in wake_ups:
        waiter.wake(None if seq is None else [envelope(seq)])
    return waiter


def test_consecutive_envelopes_past_the_cursor_are_the_answer():
    assert woken(4, 5, 6).carried(after=3, limit=100) == ([envelope(4), envelope(5), envelope(6)], 6)


def test_envelopes_the_cursor_already_covers_are_left_out():
    assert woken(3, 4).carried(after=3, limit=100) == ([envelope(4)], 4)


def test_at_most_limit_envelopes():
    assert woken(4, 5, 6).carried(after=3, limit=2) == ([envelope(4), envelope(5)], 5)


def test_a_gap_means_look_in_the_backend():
    assert woken(4, 6).carried(after=3, limit=100) is None


def test_a_wake_up_without_its_envelope_means_look_in_the_backend():
    assert woken(4, None, 5).carried(after=3, limit=100) is None


def test_nothing_new_means_look_and_each_call_starts_afresh():
    waiter = woken(2)
    assert waiter.carried(after=3, limit=100) is None
    waiter.wake([envelope(4)])
    assert waiter.carried(after=3, limit=100) == ([envelope(4)], 4)
    assert waiter.carried(after=4, limit=100) is None


def test_a_batch_woken_once_is_answered_whole():
    waiter = Waiter("r1", "bob", 1)
    waiter.wake([envelope(4), envelope(5), envelope(6)])
    assert waiter.carried(after=3, limit=100) == ([envelope(4), envelope(5), envelope(6)], 6)


def test_envelopes_that_do_not_start_right_after_the_cursor_mean_look_in_the_backend():
    """A stream's look read at most `limit` envelopes: wake-ups of later ones must not skip those it left."""
    assert woken(7, 8).carried(after=3, limit=100) is None
