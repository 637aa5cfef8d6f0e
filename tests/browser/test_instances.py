"""Two server instances on one Redis: pages served by different instances still meet."""

import pytest

pytestmark = pytest.mark.browser


def test_pages_on_two_instances_connect(start_server, redis_url, open_demo, room):
    a = start_server(env={"REDIS_URL": redis_url})
    b = start_server(env={"REDIS_URL": redis_url})
    alice = open_demo(a.url, room)
    bob = open_demo(b.url, room)
    alice.expect_linked(bob)
    bob.say("from instance B")
    alice.expect_chat(bob, "from instance B")
