"""The figure the hot path's rules exist for (signaling/http.py): the C stack a held poll keeps.

A held poll's greenlet keeps a copy of the C stack under its wait for as
long as it is held; every call made through C on the way (an instance's
`__call__`, a call with `*args`) nests a C frame there. greenlet counts the
copy (`_stack_saved`): a budget in bytes, not a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import greenlet

from signaling import create_app
from signaling.config import Settings
from signaling.service import Service

ROOT = Path(__file__).resolve().parents[2]
HELD = 200
#: bytes of saved C stack per held poll, here (in-process, memory backend): 3,496 with the rules kept;
#: 4,248 with `Front` called as an instance, 3,864 with the view called with `*match.groups()`
#: (under gunicorn the stack below the app is deeper: 4.0 KiB kept, 5.1 KiB with an instance's __call__)
BUDGET = 3.6 * 1024

HOLD_POLLS = f"""
from gevent import monkey
monkey.patch_all()

import gevent
from werkzeug.test import EnvironBuilder

from signaling import create_app
from signaling.config import Settings
from signaling.service import Service

app = create_app(Settings(joins_per_ip_per_minute=0, sends_per_peer_per_second=0,
                          peers_per_ip=0, rooms_per_ip=0))
client = app.test_client()
joins = [client.post(f"/rooms/r{{n}}/peers", json={{"peer_id": "p"}}).get_json() for n in range({HELD})]


def poll(n):
    query = {{"wait": "20", "after": joins[n]["cursor"]}}
    environ = EnvironBuilder(f"/rooms/r{{n}}/peers/p/messages", query_string=query,
                             headers={{"Authorization": f"Bearer {{joins[n]['token']}}"}}).get_environ()
    return b"".join(app(environ, lambda status, headers: None))


hub = Service.of(app).hub
polls = [gevent.spawn(poll, n) for n in range({HELD})]
for _ in range(1000):  # at most 10 s
    if len(hub) == {HELD}:
        break
    gevent.sleep(0.01)
gevent.sleep(0.1)
saved = [held._stack_saved for held in polls]
hub.close()
gevent.joinall(polls, timeout=10)
print(json.dumps({{"saved": saved, "answered": sum(1 for held in polls if held.successful())}}))
Service.of(app).close()
"""


def test_a_held_poll_keeps_at_most_its_budget_of_c_stack():
    done = subprocess.run([sys.executable, "-c", "import json\n" + HOLD_POLLS], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["answered"] == HELD  # every poll was held, then answered when the hub closed
    per_poll = sum(found["saved"]) / HELD
    assert 0 < per_poll <= BUDGET, f"{per_poll:.0f} bytes of C stack per held poll, budget {BUDGET:.0f}"


def test_flask_answers_on_a_greenlet_of_its_own_that_ends_with_the_request():
    """Rule 4 (signaling/http.py): the frames of a request through Flask are not the connection greenlet's to keep."""
    app = create_app(Settings())
    seen = []
    app.before_request(lambda: seen.append(greenlet.getcurrent()))
    try:
        assert app.test_client().get("/healthz").status_code == 200
    finally:
        Service.of(app).close()
    assert seen and seen[0] is not greenlet.getcurrent() and seen[0].dead
