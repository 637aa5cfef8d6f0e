"""The Python client as a distribution: built into a wheel, installed into a fresh virtualenv, run from there.

What a Python developer does with the repository: one `pip install` of it
(here of its wheel, which is what pip builds from a path or a git URL), in a
virtualenv that has nothing of the server. The wheel is built from a copy of
the working tree, so the build leaves nothing in the checkout; pip fetches the
build backend and httpx through its ordinary configuration (and its cache).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from ..support.servers import ROOT

pytestmark = pytest.mark.live

#: what a copy of the working tree leaves out: version control, virtualenvs, caches, build output
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache",
                                    "build", "*.egg-info", "*.tgz")


def run(*command: str | Path, cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, command))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed() -> tuple[Path, Path]:
    """(the wheel, the python of a fresh virtualenv that has it installed); both deleted after the module."""
    with tempfile.TemporaryDirectory(prefix="signaling-client-") as scratch:
        scratch = Path(scratch)
        source = scratch / "source"
        shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
        run(sys.executable, "-m", "venv", scratch / "venv", cwd=scratch)
        pip = scratch / "venv" / "bin" / "pip"
        run(pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", scratch / "dist", source, cwd=scratch)
        (wheel,) = (scratch / "dist").glob("*.whl")
        run(pip, "install", "--quiet", wheel, cwd=scratch)
        yield wheel, scratch / "venv" / "bin" / "python"


def test_the_wheel_holds_the_client_alone(installed):
    wheel, _ = installed
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert wheel.name == f"signaling_client-{project['version']}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        modules = {name for name in archive.namelist() if not name.startswith("signaling_client-")}
        metadata = archive.read(f"signaling_client-{project['version']}.dist-info/METADATA").decode()
    client = {path.relative_to(ROOT).as_posix() for path in (ROOT / "signaling" / "client").glob("*.py")}
    assert modules == client, "the wheel carries signaling/client/*.py and nothing of the server"
    requires = re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)
    assert [re.split(r"[<>=!~;\[ ]", requirement)[0] for requirement in requires] == ["httpx"]


def test_the_installed_client_imports_without_the_servers_libraries(installed, tmp_path):
    _, python = installed
    probe = ("import importlib.util, signaling.client; print(signaling.client.__file__); "
             "print([name for name in ('flask', 'gevent', 'redis', 'gunicorn') if importlib.util.find_spec(name)])")
    where, server_libraries = run(python, "-c", probe, cwd=tmp_path).splitlines()
    assert Path(where).is_relative_to(python.parent.parent), "imported from the virtualenv, not the checkout"
    assert server_libraries == "[]"


def test_the_documented_example_runs_from_the_virtualenv(installed, live_server, tmp_path):
    """docs/clients.md's Python example, which starts with the install, prints what the document says."""
    _, python = installed
    section = (ROOT / "docs" / "clients.md").read_text().split("## Python peers\n", 1)[1].split("\n## ", 1)[0]
    install = re.match(r"[^`]*```sh\n(pip install [^\n]*)\n```", section, re.S)
    assert install and "httpx" not in install.group(1), "the section starts with the one install, of the client"
    program = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    printed = section.split("It prints:\n", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    program = program.replace("http://localhost:8000", live_server.url)
    assert run(python, "-c", program, cwd=tmp_path, timeout=60) == printed


def test_the_terminal_client_runs_from_the_virtualenv(installed, tmp_path):
    _, python = installed
    assert "usage: python -m signaling.client" in run(python, "-m", "signaling.client", "--help", cwd=tmp_path)
