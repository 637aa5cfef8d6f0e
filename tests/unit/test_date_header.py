"""The worker formats gunicorn's `Date` header once a second (worker._format_date_once_a_second)."""

from __future__ import annotations

import email.utils

import pytest
from gunicorn import util
from gunicorn.http import wsgi

from signaling import worker


@pytest.fixture
def formatted(monkeypatch):
    """The times gunicorn's own function formatted."""
    times: list[float] = []
    gunicorns = util.http_date

    def counted(timestamp=None):
        times.append(timestamp)
        return gunicorns(timestamp)

    monkeypatch.setattr(util, "http_date", counted)  # and put back after the test
    return times


@pytest.fixture
def once_a_second(formatted):
    worker._format_date_once_a_second()
    return util.http_date


def test_the_date_is_the_current_second_formatted_once(once_a_second, formatted, monkeypatch):
    clock = [1_700_000_000.25]
    monkeypatch.setattr(worker.time, "time", lambda: clock[0])
    first = once_a_second()
    assert first == email.utils.formatdate(1_700_000_000, usegmt=True) == "Tue, 14 Nov 2023 22:13:20 GMT"
    clock[0] = 1_700_000_000.99
    assert once_a_second() == first
    assert formatted == [1_700_000_000]  # the same second: formatted once
    clock[0] = 1_700_000_001.0
    assert once_a_second() == "Tue, 14 Nov 2023 22:13:21 GMT"
    assert formatted == [1_700_000_000, 1_700_000_001]


def test_a_given_time_is_formatted_as_gunicorn_does(once_a_second):
    assert once_a_second(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


def test_gunicorns_answers_still_take_their_date_from_the_function_replaced():
    """Fails when an upgraded gunicorn dates its answers some other way (and the replacement would go unused)."""
    assert "http_date" in wsgi.Response.default_headers.__code__.co_names
