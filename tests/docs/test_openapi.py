"""signaling/openapi.json stays true: valid OpenAPI 3.1, served, complete, and what the app really answers."""

from __future__ import annotations

from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from signaling import errors, http, protocol
from signaling.api import OPENAPI
from signaling.routes import ROUTES

from ..support.helpers import Api, Peer, Reply
from ..support.openapi import DOC, conforms, deref, documented_errors, error_codes, operation, operations, shape


def error_classes() -> list[type[errors.SignalingError]]:
    """Every error the app can answer with: classes that name their own code (not mere groupings)."""
    return list(errors.by_code().values())


# -- the document itself


def test_the_document_is_valid_openapi_3_1():
    assert DOC["openapi"].startswith("3.1.")
    validate(DOC, cls=OpenAPIV31SpecValidator)  # raises with the first problem it finds


def test_every_operation_is_identified_and_documents_its_errors():
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids))
    for path, method, op in operations():
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                schema = deref(response)["content"]["application/json"]["schema"]
                assert schema["allOf"] == [{"$ref": "#/components/schemas/Error"}], (method, path, status)
                assert error_codes(response), (method, path, status)


def test_the_document_is_served(api):
    reply = api.request("GET", "/openapi.json")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.raw == OPENAPI.read_bytes()


# -- the document and the app agree


def test_every_route_is_documented_and_vice_versa():
    static = ("/static/{}", "get")  # Flask's own route for static/
    routes = {(shape(route.path), route.method.lower()) for route in ROUTES} | {static}
    documented = {(shape(path), method) for path, method, _ in operations()}
    assert routes - documented == set(), "routes the document lacks"
    assert documented - routes == set(), "operations the app does not serve"


def test_every_error_the_app_can_raise_is_documented_with_its_status():
    documented = documented_errors()
    reusable = {(status, code) for status, code in component_errors()}
    for cls in error_classes():
        # not_found and method_not_allowed also answer requests that match no operation
        assert (cls.status, cls.code) in documented | reusable, f"{cls.__name__}: {cls.status} {cls.code}"
    assert (404, errors.NotFound.code) in reusable
    assert (405, errors.MethodNotAllowed.code) in reusable


def component_errors():
    """(status, code) of the reusable error responses, the status taken from where operations use them."""
    # used by no operation: for requests that match none, and the HTTP server's own answers, for any request
    status_of = {
        "NotFound": 404, "MethodNotAllowed": 405, "BadRequest": 400, "Forbidden": 403, "RequestTimeout": 408,
        "UriTooLong": 414, "ExpectationFailed": 417, "HeaderTooLarge": 431, "UnsupportedTransferCoding": 501,
        "ServerBusy": 503,  # the HTTP server sheds connections past the open-file limit (worker.SheddingServer)
    }
    for _, _, op in operations():
        for status, response in op["responses"].items():
            if "$ref" in response:
                status_of[response["$ref"].rsplit("/", 1)[1]] = int(status)
    for name, response in DOC["components"]["responses"].items():
        for code in error_codes(response):
            yield status_of[name], code


def test_every_documented_error_code_exists():
    known = {(cls.status, cls.code) for cls in error_classes()}
    for status, code in documented_errors():
        if code == "http_error":  # werkzeug's other HTTP errors, e.g. 416 for a bad Range on a static file
            assert status == 416
            continue
        assert (status, code) in known, (status, code)


def test_bounds_are_the_servers():
    schemas = DOC["components"]["schemas"]
    parameters = DOC["components"]["parameters"]
    assert schemas["Id"]["pattern"] == f"^{protocol.ID_PATTERN.pattern}$"
    assert schemas["Type"]["pattern"] == f"^{protocol.TYPE_PATTERN.pattern}$"
    assert set(schemas["Outgoing"]["properties"]["type"]["not"]["enum"]) == protocol.RESERVED_TYPES
    assert parameters["Limit"]["schema"]["maximum"] == protocol.MAX_LIMIT
    assert parameters["IdempotencyKey"]["schema"]["maxLength"] == protocol.MAX_IDEMPOTENCY_KEY
    assert parameters["After"]["schema"]["minimum"] == 0 and parameters["Wait"]["schema"]["minimum"] == 0
    assert parameters["After"]["schema"]["maximum"] == 10 ** http.MAX_DIGITS - 1  # the most digits read
    assert parameters["LastEventId"]["schema"]["pattern"] == f"^[0-9]{{0,{http.MAX_DIGITS}}}$"


def test_the_token_is_a_bearer_token_on_every_peer_call():
    bearer = DOC["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    needs_token = {"listMembers", "poll", "send", "broadcast", "iceServers"}
    token_or_not = {"join", "leave", "leaveBeacon"}  # a resume carries it; leaving when not a member needs none
    server = {"serverRoom", "serverSend", "serverBroadcast", "removePeer", "closeRoom"}  # a server key, never a token
    for _, _, op in operations():
        expected = ([{"bearer": []}] if op["operationId"] in needs_token
                    else [{}, {"bearer": []}] if op["operationId"] in token_or_not
                    else [{"serverKey": []}] if op["operationId"] in server else [])
        assert op["security"] == expected, op["operationId"]


# -- what the app answers is what the document says


def check(reply, operation_id: str, status: int, code: str | None = None) -> None:
    """The reply has the expected status (and error code), and is as the document says."""
    assert reply.status == status, (operation_id, reply.status, reply.raw)
    conforms(reply, operation_id)
    if code is not None:
        assert reply.code == code


def test_a_session_answers_as_documented(make_app):
    client = make_app(mailbox_limit=2, room_capacity=2, stream_heartbeat=0.1, stun_urls=("stun:stun.example.org",),
                      turn_urls=("turn:turn.example.org",), turn_secret="s3cret").test_client()
    api = Api.over_flask(client)
    reply = api.join("r1", "alice")
    check(reply, "join", 201)
    alice = Peer(api, "r1", "alice", reply.body["token"])
    check(api.join("r1", "alice"), "join", 409, "peer_id_taken")
    check(api.join("r1", "alice", token=alice.token), "join", 200)
    bob = api.peer("r1", "bob")
    check(api.join("r1", "carol"), "join", 409, "room_full")
    check(api.request("POST", "/rooms/r!/peers", {}), "join", 400, "bad_id")
    check(api.request("POST", "/rooms/r1/peers", data="{"), "join", 400, "bad_json")

    to_bob = "/rooms/r1/peers/bob/messages"
    check(alice.send("bob", "offer", {"sdp": "v=0"}, key="k1"), "send", 202)
    check(alice.send("bob", "other", key="k1"), "send", 422, "idempotency_key_reused")
    check(alice.send("bob"), "send", 202)
    check(alice.send("bob"), "send", 429, "mailbox_full")
    check(alice.send("carol"), "send", 404, "peer_not_found")
    check(alice.send("bob", "peer-left"), "send", 400, "reserved_type")
    check(alice.send("bob", "a b"), "send", 400, "bad_field")
    check(alice.send("bob", key="k" * 65), "send", 400, "bad_idempotency_key")
    check(alice.request("POST", to_bob, data="[1]"), "send", 400, "bad_json")
    check(alice.request("POST", to_bob, {"type": "x"}, token=""), "send", 401, "unauthorized")
    reply = alice.broadcast()
    check(reply, "broadcast", 202)
    assert reply.body == {"delivered_to": [], "mailbox_full": ["bob"]}
    check(alice.request("POST", "/rooms/r1/messages", data="[]"), "broadcast", 400, "bad_json")
    check(alice.members(), "listMembers", 200)
    check(alice.request("GET", "/rooms/r2/peers"), "listMembers", 404, "not_joined")
    check(alice.request("GET", "/rooms/r1/peers", token="nope"), "listMembers", 401, "unauthorized")
    check(alice.request("GET", "/rooms/r1/peers/alice/ice-servers"), "iceServers", 200)
    check(alice.request("GET", "/rooms/r1/peers/bob/ice-servers"), "iceServers", 401, "unauthorized")

    reply = bob.poll()
    check(reply, "poll", 200)
    assert [m["type"] for m in reply.body["messages"]] == ["offer", "note"]
    stream = bob.stream(last_event_id=0)
    check(stream, "poll", 200)  # a stream (1.2), on the same operation
    assert [e["type"] for e in stream.until_quiet(timeout=30)] == ["offer", "note"]
    stream.close()
    check(bob.stream(last_event_id=9), "poll", 400, "bad_cursor")
    check(bob.poll(after=9), "poll", 400, "bad_cursor")
    check(bob.poll(limit=101), "poll", 400, "bad_query")
    check(bob.request("GET", to_bob, token=alice.token), "poll", 401, "unauthorized")
    check(bob.request("GET", "/rooms/r1/peers/dave/messages"), "poll", 404, "not_joined")

    check(api.request("DELETE", "/rooms/r1/peers/bob"), "leave", 401, "unauthorized")
    check(api.request("POST", "/rooms/r1/peers/bob/leave", {"token": bob.token}), "leaveBeacon", 204)
    check(alice.leave(), "leave", 204)
    check(alice.leave(), "leave", 204)
    check(alice.poll(), "poll", 404, "not_joined")

    check(api.request("GET", "/healthz"), "health", 200)
    with client.get("/") as page:  # a file response: closed, or it warns
        assert page.status_code == 200 and page.mimetype == "text/html"
    check(api.request("GET", "/static/nothing-here.js"), "staticFile", 404, "not_found")


def test_abuse_limits_answer_as_documented(make_app):
    api = Api.over_flask(make_app(joins_per_ip_per_minute=5, peers_per_ip=2, rooms_per_ip=1,
                                  sends_per_peer_per_second=1).test_client())
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    check(api.join("r1", "carol"), "join", 429, "too_many_peers")
    alice.leave()
    check(api.join("r2", "zed"), "join", 429, "too_many_rooms")
    alice = api.peer("r1", "alice")
    check(api.join("r1", "carol"), "join", 429, "join_rate_limited")
    check(alice.send("bob"), "send", 202)
    check(alice.send("bob"), "send", 429, "send_rate_limited")
    check(bob.broadcast(), "broadcast", 202)
    check(bob.broadcast(), "broadcast", 429, "send_rate_limited")


def test_every_response_carries_a_request_id(api):
    reply = api.request("GET", "/rooms/r1/peers", headers={"X-Request-Id": "trace-1"})
    check(reply, "listMembers", 401, "unauthorized")
    assert reply.headers["x-request-id"] == reply.body["error"]["request_id"] == "trace-1"
    check(api.request("GET", "/healthz", headers={"X-Request-Id": "no spaces"}), "health", 200)


def test_static_files_answer_as_documented(app):
    """The demo's files take conditional and range requests: 304, 206 and 416 are documented too."""
    client = app.test_client()

    def get(path, **headers) -> Reply:
        with client.get(path, headers=headers) as r:  # file responses: closed, or they warn
            return Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.get_data())

    for operation_id, path in [("demo", "/"), ("staticFile", "/static/signaling.js")]:
        etag = get(path).headers["etag"]
        assert get(path).status == 200
        assert get(path, **{"If-None-Match": etag}).status == 304
        assert get(path, Range="bytes=0-3").status == 206
        check(get(path, Range="bytes=99999999-"), operation_id, 416, "http_error")
        for status in (200, 206, 304):
            assert str(status) in operation(operation_id)["responses"]


def test_server_events_match_the_envelope_schema(api):
    alice, bob = api.peer("r1", "alice"), api.peer("r1", "bob")
    bob.leave()
    reply = alice.poll()
    check(reply, "poll", 200)
    assert [(m["type"], m["data"]) for m in reply.body["messages"]] == [
        ("peer-joined", None), ("peer-left", {"reason": "left"})]
