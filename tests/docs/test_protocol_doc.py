"""docs/protocol.md and signaling/openapi.json stay in step (the documents' links: tests/test_docs_links.py)."""

from __future__ import annotations

import re

from ..support.openapi import documented_errors, operations, shape
from ..support.servers import ROOT

REFERENCE = ROOT / "docs" / "protocol.md"


def reference() -> str:
    return REFERENCE.read_text()


def error_table() -> set[tuple[int, str]]:
    """(status, code) of every row of the reference's error table: | 404 | `not_joined` | … |."""
    return {(int(status), code) for status, code in re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", reference(), re.M)}


def test_every_operation_of_the_document_is_in_the_reference():
    text = shape(reference())
    missing = [f"{method.upper()} {path}" for path, method, _ in operations()
               if f"`{method.upper()} {shape(path)}`" not in text]
    assert not missing, f"docs/protocol.md does not describe {missing}"


def test_every_status_of_the_document_is_in_the_reference():
    text = reference()
    statuses = {status for _, _, op in operations() for status in op["responses"]}
    missing = sorted(status for status in statuses if not re.search(rf"(`|\| ){status}\b", text))
    assert not missing, f"docs/protocol.md never names status {missing}"


def test_every_error_code_of_the_document_is_in_the_reference_with_its_status():
    missing = documented_errors() - error_table()
    assert not missing, f"docs/protocol.md's error table lacks {sorted(missing)}"


def test_the_reference_names_each_error_code_once():
    rows = re.findall(r"^\| \d{3} \| `([a-z_]+)` \|", reference(), re.M)
    assert len(rows) == len(set(rows))
