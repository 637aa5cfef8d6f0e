"""The worker remembers gunicorn's forwarded-headers check per address (worker._remember_trusted_addresses)."""

from __future__ import annotations

import ipaddress

import pytest
from gunicorn.http import message

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
