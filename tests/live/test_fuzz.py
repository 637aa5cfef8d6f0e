"""Fuzzing the live server from its own OpenAPI document: no 5xx, and nothing the document does not say.

Schemathesis generates requests from the document of a real gunicorn+gevent
server: each operation on its own (mostly strangers and bad input), then
stateful scenarios that follow the document's links (join, then poll, send,
broadcast, list, refresh ICE servers, resume and leave with the token the
join gave). Every response must be in the document: status, error code,
headers, body. Runs are bounded and derandomized, so CI sees the same run.
A second server needs join tickets: generated joins and the scenarios run
again there, each join given a ticket minted for its room (one that
schemathesis wrote itself stays, and must be refused cleanly).

Last, request bodies no schema-driven generator writes (JSON numbers beyond a
float, deep nesting, lone surrogates, ...) go to every operation that reads a
body, on the memory and the Redis backend.
"""

from __future__ import annotations

import collections
import itertools

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import strategies as st
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import ensure_resource_availability

from signaling import tickets
from signaling.api import OPENAPI
from signaling.protocol import ID_PATTERN as ID

from ..support.helpers import Api
from ..support.openapi import conforms
from ..support.servers import LiveServer

pytestmark = pytest.mark.live

# A short POLL_WAIT keeps held polls of a generated `wait` short; small limits make
# `429 mailbox_full` and `409 room_full` reachable in a few steps. The per-IP abuse limits are
# off: every request comes from one address, and they would soon refuse all joins
# (tests/docs/test_openapi.py checks their answers).
#: the server API's key (1.2): the server API is on, and its operations are fuzzed with the key
SERVER_KEY = "the-fuzzing-server-api-key-of-32-or-more"
SERVER_ENV = {
    "POLL_WAIT": "0.2", "MAILBOX_LIMIT": "4", "ROOM_CAPACITY": "3",
    "JOINS_PER_IP_PER_MINUTE": "0", "PEERS_PER_IP": "0", "ROOMS_PER_IP": "0", "SERVER_API_KEYS": SERVER_KEY,
}

#: the secret of the server with join tickets on, with which the tests mint the tickets an application would
JOIN_SECRET = "the-fuzzing-join-secret-of-32-bytes-or-more"

FUZZ_SETTINGS = hypothesis.settings(max_examples=100, suppress_health_check=list(HealthCheck))
STATEFUL_SETTINGS = hypothesis.settings(FUZZ_SETTINGS, stateful_step_count=15)
# The scenarios again with tickets on check what tickets change (a join), not the mailboxes all over again.
TICKET_STATEFUL_SETTINGS = hypothesis.settings(STATEFUL_SETTINGS, max_examples=40)


# What a schema cannot say: schema-valid input may still be refused for the state it meets: `after` beyond the seqs
# given out (400 bad_cursor), an Idempotency-Key used with another body (422); the check
# `refused_only_for_state` below makes sure nothing else is.
ACCEPTED = ["2xx", "401", "404", "409", "429"]
#: schemathesis' own list of what refuses schema-violating input
REFUSED = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx"]
CONFIG = schemathesis.Config.from_dict({
    "request-timeout": 10,
    "operations": [
        # 414: schema-violating input (a query of 5 KB) refused before the operation sees it, as it should be
        {"include-operation-id": "poll", "checks": {
            "positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]},
            "negative_data_rejection": {"expected-statuses": [*REFUSED, "414"]}}},
        # 400 bad_meta: a meta over 2,048 bytes as compact JSON, or not an object (ignored with tickets on, so the
        # document takes any); `refused_only_for_state` lets no other 400 of schema-valid input through
        {"include-operation-id": "join", "checks": {"positive_data_acceptance": {
            "expected-statuses": [*ACCEPTED, "400"]}}},
        # 413: a batch larger than this server's MAILBOX_LIMIT (a setting the document cannot know)
        {"include-operation-id": ["send", "broadcast", "serverSend", "serverBroadcast"],
         "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "413", "422"]}}},
    ],
})


def refused_only_for_state(ctx, response, case):
    """Schema-valid input refused with a 400 or 422 is refused for the mailbox's state, nothing else."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code not in (400, 422):
        return None
    code = response.json()["error"]["code"]
    if code == "bad_query" and "after" in (case.query or {}) and "Last-Event-ID" in (case.headers or {}):
        return None  # `after` and Last-Event-ID disagree: a rule between two fields the document cannot state
    if code == "bad_meta" and "meta" in (case.body if isinstance(case.body, dict) else {}):
        return None  # a meta over 2,048 bytes as compact JSON: a size in bytes the document cannot state
    assert code in ("bad_cursor", "idempotency_key_reused"), f"valid input refused: {response.status_code} {code}"
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One gunicorn server on the memory backend for the whole module."""
    server = LiveServer(tmp_path_factory.mktemp("fuzz"), SERVER_ENV).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ticket_server(tmp_path_factory):
    """The same, with join tickets on: every fresh join needs one."""
    server = LiveServer(tmp_path_factory.mktemp("fuzz-tickets"), {**SERVER_ENV, "JOIN_SECRET": JOIN_SECRET}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(server):
    """The document as the server serves it; the requests go to that server."""
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=CONFIG)


@pytest.fixture(scope="module")
def ticket_api_schema(ticket_server):
    return schemathesis.openapi.from_url(f"{ticket_server.url}/openapi.json", config=CONFIG)


def with_ticket(case) -> None:
    """Give a generated join the ticket the application would have minted for its room, unless it has one.

    A ticket schemathesis wrote itself stays: the server must refuse it cleanly (401 bad_ticket).
    """
    room = (case.path_parameters or {}).get("room")
    if case.operation.definition.raw["operationId"] != "join" or not (isinstance(room, str) and ID.fullmatch(room)):
        return
    if isinstance(case.body, dict) and "ticket" not in case.body:
        case.body = {**case.body, "ticket": tickets.mint(JOIN_SECRET, room, ttl=600)}
    elif case.body is NOT_SET:
        case.body, case.media_type = {"ticket": tickets.mint(JOIN_SECRET, room, ttl=600)}, "application/json"


schema = schemathesis.openapi.from_path(OPENAPI, config=CONFIG)


def server_key(case) -> dict:
    """The call's own credentials: for a server API call the server's key, as the application's backend sends it."""
    if {"serverKey": []} in case.operation.definition.raw.get("security", []):
        return {"headers": {"Authorization": f"Bearer {SERVER_KEY}"}}
    return {}


@schema.parametrize()
@FUZZ_SETTINGS
def test_each_operation(case, server):
    """Generated requests, valid and not, one operation at a time; the server API's with the server's key."""
    case.call_and_validate(base_url=server.url, additional_checks=[refused_only_for_state], **server_key(case))


beacon_schema = schemathesis.openapi.from_path(OPENAPI).include(operation_id="leaveBeacon")


@beacon_schema.parametrize()
@FUZZ_SETTINGS
def test_the_beacon_leave_with_every_check(case, server):
    """The beacon leave takes any body, as sendBeacon sends any: every built-in check, nothing configured away."""
    case.call_and_validate(base_url=server.url)


JOIN = schema["/rooms/{room}/peers"]["POST"]


@hypothesis.given(case=st.one_of(JOIN.as_strategy(mode) for mode in schemathesis.GenerationMode))
@FUZZ_SETTINGS
def test_join_with_tickets_on(case, ticket_server):
    """Generated joins, valid and not, to a server that needs tickets; most carry a good one."""
    with_ticket(case)
    case.call_and_validate(base_url=ticket_server.url, additional_checks=[refused_only_for_state])


def test_stateful_scenarios(api_schema):
    """Join, then follow the links with the join's token; every response as documented."""
    run_scenarios(api_schema)


def test_stateful_scenarios_with_tickets_on(ticket_api_schema):
    """The same scenarios on a server that needs tickets: each join carries one minted for its room."""
    run_scenarios(ticket_api_schema, with_ticket, TICKET_STATEFUL_SETTINGS)


def run_scenarios(api_schema, prepare_join=lambda case: None, settings=STATEFUL_SETTINGS) -> None:
    seen: collections.Counter = collections.Counter()

    scenarios = itertools.count()

    class Scenarios(api_schema.as_state_machine()):
        def setup(self):
            self.left = False
            self.prefix = f"s{next(scenarios)}-"

        def before_call(self, case):
            # Every scenario in rooms of its own: what an earlier one left on the server must not
            # change what this one does, or Hypothesis sees the same choices behave differently.
            room = (case.path_parameters or {}).get("room")
            if isinstance(room, str) and ID.fullmatch(room) and not room.startswith(self.prefix):
                case.path_parameters["room"] = (self.prefix + room)[:64]
            prepare_join(case)

        def get_call_kwargs(self, case):
            # The token comes from the join through the document's links; passed on as the
            # caller's own credentials, so `ignored_auth` checks that it is enforced.
            token = (case.headers or {}).get("Authorization")
            return {"headers": {"Authorization": token}} if token else {}

        def after_call(self, response, case):
            super().after_call(response, case)
            seen[case.operation.definition.raw["operationId"], response.status_code] += 1
            if case.operation.definition.raw["operationId"] in ("leave", "leaveBeacon") and response.status_code == 204:
                self.left = True

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            # After a leave, every call of the former member is 404 not_joined, the member list of
            # the room included: the check that a created resource stays until its DELETE knows
            # neither the leave by beacon (a POST) nor that the list is only for members.
            excluded = [ensure_resource_availability] if self.left else []
            case.validate_response(response, additional_checks=[refused_only_for_state], excluded_checks=excluded,
                                   transport_kwargs=kwargs or None, recorder=self.recorder)

    Scenarios.run(settings=settings)
    # The links carried the join's room, id and token: members got through, not only strangers.
    reached = {key for key, count in seen.items() if count}
    for outcome in [("join", 201), ("join", 200), ("send", 202), ("broadcast", 202), ("poll", 200),
                    ("listMembers", 200), ("iceServers", 200), ("leave", 204), ("leaveBeacon", 204)]:
        assert outcome in reached, (outcome, sorted(seen.items()))


# -- bodies no schema-driven generator writes: JSON that parses, but to values the server must still refuse cleanly

ODD_VALUES = {
    "beyond-float": "1e400",
    "beyond-float-negative": "-1e999",
    "nan": "NaN",
    "infinity": "-Infinity",
    "lone-surrogate": '"\\ud800"',
    "reversed-surrogates": '"\\udfff\\ud800"',
    "huge-integer": "9" * 5000,
    "deep-array": "[" * 3000 + "]" * 3000,
    "deep-unclosed": "[" * 3000,
    "deep-object": '{"a":' * 2000 + "1" + "}" * 2000,
}
TEMPLATES = ['{"type": "x", "data": @}', '{"type": @}', '{"token": @}', '{"peer_id": @}', "@", "[@]"]
ODD_BODIES = [(name, template.replace("@", value)) for name, value in ODD_VALUES.items() for template in TEMPLATES]
ODD_BODIES += [("invalid-utf8", b'{"type": "x", "data": "\xff\xfe"}'), ("nul", '{"type": "x\u0000"}'),
               ("utf8-bom", '\ufeff{"type": "x"}')]


def odd_body_requests(api: Api, room: str):
    """(what, body name, send) for every odd body and every operation that reads a body."""
    alice, bob = api.peer(room, "alice"), api.peer(room, "bob")

    def to_bob(body):
        bob.receive()  # keeps room in bob's mailbox
        return alice.request("POST", f"/rooms/{room}/peers/bob/messages", data=body)

    def to_all(body):
        bob.receive()
        return alice.request("POST", f"/rooms/{room}/messages", data=body)

    for i, (name, body) in enumerate(ODD_BODIES):
        yield "join", name, lambda body=body, i=i: api.request("POST", f"/rooms/{room}-{i}/peers", data=body)
        yield "send", name, lambda body=body: to_bob(body)
        yield "broadcast", name, lambda body=body: to_all(body)
        yield "leaveBeacon for a member", name, lambda body=body: api.request(
            "POST", f"/rooms/{room}/peers/bob/leave", data=body)
        yield "leaveBeacon for a stranger", name, lambda body=body: api.request(
            "POST", f"/rooms/{room}/peers/stranger/leave", data=body)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_odd_bodies_are_answered_as_documented(request, start_server, backend):
    """Never a 5xx, always a documented answer. What fails is listed at once: operation, body, status, count."""
    env = dict(SERVER_ENV)
    if backend == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    api = Api.over_http(start_server(env=env).url, timeout=10)
    failures: collections.Counter = collections.Counter()
    for what, name, send in odd_body_requests(api, "odd"):
        reply = send()
        try:
            conforms(reply, what.split()[0])
            assert reply.status < 500
        except AssertionError:
            failures[f"{what}, {name}: {reply.status} {reply.code or reply.raw[:60]!r}"] += 1
    assert not failures, "\n".join(f"{failure} ({count} bodies)" for failure, count in sorted(failures.items()))
