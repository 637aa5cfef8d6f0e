"""What the worker does once that gunicorn did on every request, and the checks that gunicorn still goes through it.

- `worker._remember_trusted_addresses`: the forwarded-headers check, once per client address;
- `worker._format_date_once_a_second`: the `Date` header, once a second.
"""

from __future__ import annotations

import email.utils
import ipaddress

import pytest
from gunicorn import util
from gunicorn.http import message, wsgi

from signaling import worker


@pytest.fixture
def remembering(monkeypatch):
    monkeypatch.setattr(message, "_ip_in_allow_list", message._ip_in_allow_list)  # put back after the test
    worker._remember_trusted_addresses()
    return message._ip_in_allow_list


def test_each_address_gets_gunicorns_answer_and_the_first_is_kept(remembering):
    allowed = ["127.0.0.1", "10.0.0.0/8"]
    networks = [ipaddress.ip_network(a) for a in allowed]
    assert remembering("127.0.0.1", allowed, networks) is True
    assert remembering("10.1.2.3", allowed, networks) is True
    assert remembering("192.0.2.1", allowed, networks) is False
    assert remembering("not an address", allowed, networks) is False
    assert remembering("192.0.2.1", allowed, networks) is False  # from memory now


def test_gunicorns_check_still_goes_through_the_function_remembered():
    """Fails when an upgraded gunicorn checks the address some other way (and the memory would go unused)."""
    assert "_ip_in_allow_list" in message.HeaderPolicy._peer_is_trusted_proxy.__code__.co_names


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
