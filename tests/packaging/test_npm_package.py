"""signaling.js as the npm package `signaling-client` (static/package.json): packed, installed, typed, run.

What a developer with a bundler or TypeScript does: `npm install` the package
(here the tarball `npm pack` makes), import it by name, compile against its
declarations with `tsc --strict`. The test makes a scratch project in a
temporary folder, installs the tarball and a pinned TypeScript from the npm
registry, compiles consumer.ts (every declaration used, and misuses refused),
and runs installed.test.mjs under Node's test runner against a live server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import pytest

from signaling.errors import by_code

from ..support.servers import ROOT

pytestmark = pytest.mark.live

HERE = Path(__file__).parent
PACKAGE = ROOT / "static"
#: the TypeScript that checks the declarations, pinned
TYPESCRIPT = "typescript@5.9.3"


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"{' '.join(map(str, command))}\n{done.stdout[-4000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def project():
    """(the tarball, a scratch project that installed it and TypeScript); deleted after the module."""
    assert shutil.which("npm"), "the npm package tests need npm (Debian: nodejs and npm)"
    with tempfile.TemporaryDirectory(prefix="signaling-npm-") as scratch:
        scratch = Path(scratch)
        (tarball,) = json.loads(run("npm", "pack", "--json", "--pack-destination", scratch, PACKAGE, cwd=scratch))
        tarball = scratch / tarball["filename"]
        project = scratch / "consumer"
        project.mkdir()
        (project / "package.json").write_text(json.dumps({"name": "consumer", "private": True, "type": "module"}))
        run("npm", "install", "--no-audit", "--no-fund", "--loglevel=error", tarball, TYPESCRIPT, cwd=project)
        for name in ("consumer.ts", "installed.test.mjs"):
            shutil.copy(HERE / name, project)
        yield tarball, project


def declared_exports() -> set[str]:
    """Every name signaling.d.ts exports: values and types."""
    text = (PACKAGE / "signaling.d.ts").read_text()
    return set(re.findall(r"^export (?:declare )?(?:type|interface|class|function) (\w+)", text, re.M))


def test_the_tarball_carries_the_served_module_and_its_types(project, live_server):
    tarball, project = project
    with tarfile.open(tarball) as archive:
        assert sorted(archive.getnames()) == ["package/package.json", "package/signaling.d.ts", "package/signaling.js"]
    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert manifest["type"] == "module"
    assert manifest["exports"] == {".": {"types": "./signaling.d.ts", "default": "./signaling.js"}}
    installed = project / "node_modules" / manifest["name"] / "signaling.js"
    with urllib.request.urlopen(f"{live_server.url}/static/signaling.js") as served:
        assert served.read() == installed.read_bytes(), "the package and the service hand out one file"


def test_tsc_strict_compiles_a_consumer_of_every_declaration(project):
    _, project = project
    consumer = (project / "consumer.ts").read_text()
    imported = set(re.findall(r"\b(?:type )?(\w+),", consumer.split("} from", 1)[0]))
    assert declared_exports() <= imported, f"consumer.ts leaves out {declared_exports() - imported}"
    run(project / "node_modules" / ".bin" / "tsc", "--strict", "--noEmit", "--target", "es2022", "--module", "nodenext",
        "--lib", "es2022,dom", "consumer.ts", cwd=project)


def test_the_declared_server_error_codes_are_the_servers():
    text = (PACKAGE / "signaling.d.ts").read_text()
    union = text.split("export type ServerErrorCode =", 1)[1].split(";", 1)[0]
    assert set(re.findall(r'"(\w+)"', union)) == set(by_code())


def test_the_installed_package_drives_a_live_server(project, live_server):
    _, project = project
    run("node", "--test", "--test-timeout=30000", "installed.test.mjs", cwd=project,
        env={"SIGNALING_URL": live_server.url}, timeout=120)
