"""The OpenAPI document as the tests read it: its operations, their documented errors, and `conforms`."""

from __future__ import annotations

import json
import re

import jsonschema
import referencing

from signaling.api import OPENAPI

DOC = json.loads(OPENAPI.read_text())
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
DOC_URI = "urn:signaling:openapi"  # where the document sits for jsonschema, so its own `#/...` refs resolve
REGISTRY = referencing.Registry().with_resource(
    DOC_URI, referencing.Resource.from_contents(DOC, default_specification=referencing.jsonschema.DRAFT202012))


def operations():
    """(path, method, operation) of every operation in the document."""
    for path, item in DOC["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def operation(operation_id: str) -> dict:
    return next(op for _, _, op in operations() if op["operationId"] == operation_id)


def deref(node: dict) -> dict:
    """Follow local `$ref`s to the node they name."""
    while "$ref" in node:
        assert node["$ref"].startswith("#/"), node
        target = DOC
        for part in node["$ref"][2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def error_codes(response: dict) -> list[str]:
    """The `error.code` enum of an error response."""
    schema = deref(response)["content"]["application/json"]["schema"]
    return schema["properties"]["error"]["properties"]["code"]["enum"]


def documented_errors() -> set[tuple[int, str]]:
    """(status, code) of every error response of every operation."""
    found = set()
    for _, _, op in operations():
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                found.update((int(status), code) for code in error_codes(response))
    return found


def shape(path: str) -> str:
    """A path with every parameter name blanked: Flask and the document may name them differently."""
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def response_validator(operation_id: str, status: int) -> jsonschema.Draft202012Validator:
    """A validator for the documented JSON body of one response of one operation."""
    path, method = next((path, method) for path, method, op in operations() if op["operationId"] == operation_id)
    response = DOC["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        pointer = response["$ref"][1:]
    else:
        escaped = path.replace("~", "~0").replace("/", "~1")
        pointer = f"/paths/{escaped}/{method}/responses/{status}"
    assert "application/json" in deref(response)["content"], (operation_id, status)
    schema = {"$ref": f"{DOC_URI}#{pointer}/content/application~1json/schema"}
    return jsonschema.Draft202012Validator(schema, registry=REGISTRY)


def conforms(reply, operation_id: str) -> None:
    """The reply's status is one the operation documents, with the documented headers and body."""
    responses = operation(operation_id)["responses"]
    assert str(reply.status) in responses, f"{operation_id} answered {reply.status}: {reply.raw[:200]!r}"
    response = deref(responses[str(reply.status)])
    for name, header in response.get("headers", {}).items():
        header = deref(header)
        if header.get("required"):
            assert name.lower() in reply.headers, (operation_id, reply.status, name)
            if header["schema"].get("type") == "integer":
                assert reply.headers[name.lower()].isdigit()
            if "pattern" in header["schema"]:
                assert re.search(header["schema"]["pattern"], reply.headers[name.lower()])
    if "content" not in response:
        assert reply.raw == b""
        return
    if reply.headers.get("content-type") == "text/event-stream":  # a stream (1.2): its events, read as they come
        assert "text/event-stream" in response["content"], (operation_id, reply.status)
        return
    assert reply.headers["content-type"].startswith("application/json")
    response_validator(operation_id, reply.status).validate(reply.body)
