""".ci/system-packages: what `make test` installs when the machine lacks it, or the one message when it cannot.

Run with a PATH of shims only, so the machine's own packages (and root) do not
matter: a fake `id` says who runs it, a fake `apt-get` records its calls.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ..support.servers import ROOT

SCRIPT = ROOT / ".ci" / "system-packages"
COMMANDS = ["chromium", "ip", "nginx", "openssl", "node", "npm", "curl", "jq", "redis-server"]


def shim(directory: Path, name: str, body: str = "exit 0") -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def run(tmp_path: Path, present: list[str], uid: int = 0, apt: bool = True) -> tuple[subprocess.CompletedProcess, str]:
    """Run the script with only `present` (and id, apt-get) on PATH; (result, apt-get's recorded calls)."""
    shims = tmp_path / "bin"
    shims.mkdir()
    calls = tmp_path / "apt-get.calls"
    for name in present:
        shim(shims, name)
    shim(shims, "id", f'[ "$1" = -u ] && echo {uid}')
    if apt:
        shim(shims, "apt-get", f'echo "$DEBIAN_FRONTEND $*" >> {calls}')
    # nothing but the shims: not even /usr/sbin's nginx; the no-service policy written here, not in /usr/sbin
    env = {"PATH": str(shims), "SBIN_PATH": "", "POLICY_RC_D": str(tmp_path / "policy-rc.d")}
    result = subprocess.run(["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    return result, calls.read_text() if calls.exists() else ""


def test_nothing_missing_installs_nothing_and_says_nothing(tmp_path):
    result, calls = run(tmp_path, COMMANDS)
    assert (result.returncode, result.stdout, result.stderr, calls) == (0, "", "", "")


def test_as_root_it_installs_what_is_missing_after_an_update(tmp_path):
    result, calls = run(tmp_path, [c for c in COMMANDS if c not in ("chromium", "ip")])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "make test: installing chromium iproute2 (apt-get, once)\n"
    update, install = calls.splitlines()
    assert update.startswith("noninteractive ") and update.endswith(" update")
    assert install.startswith("noninteractive ") and install.endswith(" install -y chromium iproute2")


def test_not_root_it_stops_naming_exactly_what_to_install(tmp_path):
    result, calls = run(tmp_path, [c for c in COMMANDS if c != "chromium"], uid=1000)
    assert result.returncode != 0
    assert calls == ""
    assert "  apt-get install -y chromium\n" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("uid", [0, 1000])
def test_without_apt_it_stops_naming_every_missing_package(tmp_path, uid):
    result, _ = run(tmp_path, ["ip", "curl"], uid=uid, apt=False)
    assert result.returncode != 0
    assert "apt-get install -y chromium nginx openssl nodejs npm jq" in result.stderr


def test_make_test_and_ci_run_it_before_any_test():
    dry = subprocess.run(["make", "-n", "--no-print-directory", "test"], cwd=ROOT, capture_output=True, text=True,
                         timeout=30, check=True).stdout.splitlines()
    assert dry.index(".ci/system-packages") < next(i for i, line in enumerate(dry) if "pytest" in line)
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("make test")


def test_installing_redis_starts_no_system_redis(tmp_path):
    """Debian's redis-server installs with services refused (policy-rc.d, removed afterwards): tests pick free ports."""
    shims = tmp_path / "bin"
    shims.mkdir()
    calls = tmp_path / "apt-get.calls"
    for name in [c for c in COMMANDS if c != "redis-server"]:
        shim(shims, name)
    shim(shims, "id", '[ "$1" = -u ] && echo 0')
    policy = tmp_path / "policy-rc.d"
    record = f'echo "$*" >> {calls}; case "$*" in *" install "*) {policy}; echo "policy $?" >> {calls};; esac'
    shim(shims, "apt-get", record)
    env = {"PATH": str(shims), "SBIN_PATH": "", "POLICY_RC_D": str(policy)}
    result = subprocess.run(["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines()[-1] == "policy 101"  # during the install, services may not start
    assert not policy.exists()  # and afterwards the machine is as it was
