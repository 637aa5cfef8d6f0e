"""`python -m signaling.admin`, the server API from a shell, against a live gunicorn server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ..support.helpers import Api
from ..support.servers import ROOT

pytestmark = pytest.mark.live

KEY = "an-operators-server-api-key-of-32-chars-1"


def admin(url: str, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SIGNALING_SERVER_KEY", "SIGNALING_URL")}
    if key is not None:
        env["SIGNALING_SERVER_KEY"] = key
    return subprocess.run([sys.executable, "-m", "signaling.admin", "--url", url, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)


def test_show_send_remove_and_close_a_room(start_server):
    server = start_server(env={"SERVER_API_KEYS": KEY})
    api = Api.over_http(server.url)
    alice = api.request("POST", "/rooms/r1/peers", {"peer_id": "alice", "meta": {"name": "Alice"}}).body
    bob = api.peer("r1", "bob")

    shown = admin(server.url, "show", "r1")
    assert shown.returncode == 0, shown.stderr
    members = json.loads(shown.stdout)["members"]
    assert [(m["peer_id"], m["meta"]) for m in members] == [("alice", {"name": "Alice"}), ("bob", None)]

    assert json.loads(admin(server.url, "send", "r1", "notice", '{"text": "hi"}', "--to", "bob").stdout) == {"seq": 1}
    everyone = json.loads(admin(server.url, "send", "r1", "notice").stdout)
    assert everyone == {"delivered_to": ["alice", "bob"], "mailbox_full": []}
    assert [(m["from"], m["type"], m["data"]) for m in bob.receive()] == [
        ("@server", "notice", {"text": "hi"}), ("@server", "notice", None)]

    removed = admin(server.url, "remove", "r1", "bob", "--reason", "spam", "--ban", "60")
    assert removed.returncode == 0 and json.loads(removed.stdout) == {"removed": True}
    assert bob.poll().code == "removed" and api.join("r1", "bob").code == "banned"

    closed = admin(server.url, "close", "r1")
    assert json.loads(closed.stdout) == {"removed": ["alice"]}
    assert api.request("GET", "/rooms/r1/peers/alice/messages", token=alice["token"]).code == "removed"


def test_a_missing_or_wrong_key_changes_nothing(start_server):
    server = start_server(env={"SERVER_API_KEYS": KEY})
    api = Api.over_http(server.url)
    alice = api.peer("r1", "alice")
    missing = admin(server.url, "close", "r1", key=None)
    assert missing.returncode == 2 and "SIGNALING_SERVER_KEY" in missing.stderr
    wrong = admin(server.url, "close", "r1", key="x" * 40)
    assert wrong.returncode == 1 and json.loads(wrong.stderr)["error"]["code"] == "unauthorized"
    assert alice.members().body["peers"] == ["alice"]
    bad = admin(server.url, "send", "r1", "notice", "{not json")
    assert bad.returncode == 2 and "JSON" in bad.stderr
