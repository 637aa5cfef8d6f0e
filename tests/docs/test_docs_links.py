"""The README and docs/ lead only to what is in the repository, and docs/architecture.md maps every module.

Links are checked as GitHub renders them: a relative target must be a file or
folder of the repository, and a `#anchor` a heading of the file it names,
slugged as GitHub slugs headings. The module map is checked against the
package as it is on disk, so it cannot fall behind when modules move.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

import pytest

from ..support.servers import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "signaling"
#: the README is the five-minute read; the rest belongs in docs/
README_LINES = 200

FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REFERENCE = re.compile(r"^[ \t]*\[[^\]]+\]:[ \t]*(\S+)", re.M)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)
#: a path of the repository as the documents write it in backticks: `signaling/hub.py`, `static/`, `.ci/run`
REPO_PATH = re.compile(r"`((?:signaling|static|tests|docs|bench|examples|\.ci)/[\w./-]*)`")
MODULE = re.compile(r"signaling/[\w/]*\.py")


def name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def without_code(text: str) -> str:
    """The text as prose: fenced blocks and inline code spans left out (a link there is not a link)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(path: Path) -> list[str]:
    """Targets of the Markdown links (inline, image and reference) of a file, code left out."""
    text = without_code(path.read_text())
    return LINK.findall(text) + REFERENCE.findall(text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link: its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file's headings; a repeated heading gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for _, heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if SCHEME.match(target):  # https:, mailto:: not ours to check
            continue
        file_part, _, anchor = target.partition("#")
        file = (path.parent / urllib.parse.unquote(file_part)).resolve() if file_part else path
        if not file.is_relative_to(ROOT):
            problems.append(f"{target}: outside the repository")
        elif not file.exists():
            problems.append(f"{target}: no such file")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            problems.append(f"{target}: no heading #{anchor} in {name(file)}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=name)
def test_every_relative_link_leads_to_a_file_and_heading_of_the_repository(document):
    broken = broken_links(document)
    assert not broken, f"{name(document)}: {broken}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=name)
def test_no_document_names_a_file_outside_the_repository(document):
    """Not as a link, nor in passing: `../shared/...`, or a `PROTOCOL.md` the repository does not have."""
    text = document.read_text()
    outside = re.findall(r"\.\./[\w.-]+/[\w./-]*", text)
    outside = [p for p in outside if not os.path.normpath(document.parent / p).startswith(str(ROOT) + os.sep)]
    markdown = {str(path) for path in ROOT.rglob("*.md") if not {".venv", "node_modules"} & set(path.parts)}
    unknown = [found for found in re.findall(r"[\w./-]*\b[\w-]+\.md\b", text)
               if not any(os.path.normpath(base / found) in markdown for base in (document.parent, ROOT))]
    assert not outside + unknown, f"{name(document)} names {outside + unknown}, not in the repository"


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if d.name != "benchmarks.md"], ids=name)
def test_every_repository_path_a_document_names_exists(document):
    """`signaling/hub.py`, `tests/browser/`: a reader looks for them. (benchmarks.md records past commits' runs.)"""
    missing = [path for path in REPO_PATH.findall(document.read_text()) if not (ROOT / path).exists()]
    assert not missing, f"{name(document)} names {missing}, which the repository does not have"


def test_the_architecture_maps_every_module_of_the_package():
    modules = {name(path) for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}
    text = ARCHITECTURE.read_text()
    mapped = set(re.findall(r"^\| `(signaling/[^`]+\.py)` \|", text, re.M))
    unmapped, gone = sorted(modules - mapped), sorted(set(MODULE.findall(text)) - modules)
    assert not unmapped, f"docs/architecture.md's module map lacks {unmapped}"
    assert not gone, f"docs/architecture.md names {gone}, which are not in the package"


def test_the_readme_links_to_the_reference():
    assert "docs/protocol.md" in links(ROOT / "README.md")


def test_the_readme_stays_a_short_read():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_LINES, f"README.md has {lines} lines: move the detail to docs/"


def test_the_page_example_is_the_file_the_browser_tests_run():
    """docs/clients.md says its page is tests/browser/example.html, which tests/browser/test_library.py runs."""
    (page,) = re.findall(r"```html\n(.*?)```", (ROOT / "docs" / "clients.md").read_text(), re.S)
    assert page == (ROOT / "tests" / "browser" / "example.html").read_text()
