"""The aiortc example runs after the one install its section names: `make example`, which installs aiortc."""

from __future__ import annotations

import re
import subprocess

from ..support.servers import ROOT

SECTION = "## A call with the browser demo: `examples/aiortc_peer.py`\n"


def test_make_example_installs_the_pinned_aiortc_and_runs_the_example():
    """`make -n` prints what the target would run, without running it (so nothing is installed here)."""
    (pin,) = re.findall(r"^aiortc==[\w.]+$", (ROOT / "requirements-dev.txt").read_text(), re.M)
    dry_run = subprocess.run(["make", "-n", "-B", "example", "ROOM=r1", "PORT=9000"], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
    assert dry_run.returncode == 0, dry_run.stderr
    commands = dry_run.stdout.splitlines()
    install = commands.index(f'.venv/bin/pip install --quiet "{pin}"')
    assert commands.index(".venv/bin/python -m examples.aiortc_peer r1 --url http://localhost:9000") > install


def test_the_examples_section_starts_with_it_and_the_readme_names_it():
    section = (ROOT / "docs" / "clients.md").read_text().split(SECTION, 1)[1]
    assert section.startswith("\n```sh\nmake example ROOM=myroom\n```\n")
    assert "`make example`" in (ROOT / "README.md").read_text()
    help_text = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
    assert "make example" in help_text
